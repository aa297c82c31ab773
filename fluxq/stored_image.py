"""``GET /v1/jobs/{id}/image`` for a job saved to an object store: the object, streamed.

The route is declared with ``FileResponse`` (its OpenAPI document says so), so this is one: a
FileResponse whose bytes come from fsspec in chunks instead of from a local path. Ranges are not
served (no ``Accept-Ranges``); a client gets the whole image, as the sha256 ETag describes it.
"""

from __future__ import annotations

import mimetypes
from typing import IO

import anyio
from fastapi.responses import FileResponse
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from fluxq.config.settings import Settings
from fluxq.workers.state.jobs import Job
from fluxq.workers.storage import READ_CHUNK, ObjectStore, StoreFailed, store_of_path


class StoredImageResponse(FileResponse):
    """The object at ``url`` in ``store``, streamed; ``size`` bytes (its Content-Length)."""

    def __init__(
        self,
        store: ObjectStore,
        url: str,
        *,
        size: int,
        media_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(url, media_type=media_type, headers=headers)
        del self.headers["accept-ranges"]
        self.headers["content-length"] = str(size)
        self.store = store
        self.url = url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        if scope.get("method", "GET").upper() == "HEAD":
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        source: IO[bytes] = await anyio.to_thread.run_sync(self.store.open_read, self.url)
        try:
            while chunk := await anyio.to_thread.run_sync(source.read, READ_CHUNK):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(source.close)


def stored_image_response(settings: Settings, job: Job) -> StoredImageResponse:
    """A done job's object with its content type and sha256 ETag; 404 when the object is gone,
    502 when the store cannot be read (its reason redacted of every credential)."""
    url = job.path or ""
    try:
        store = store_of_path(settings, url)
        size = store.size(url)
    except StoreFailed as exc:
        raise HTTPException(502, f"job {job.job_id}'s image could not be read: {exc}") from None
    if size is None:
        raise HTTPException(404, f"job {job.job_id}'s image is no longer in the store")
    media_type = mimetypes.guess_type(url.rpartition("/")[2])[0] or "application/octet-stream"
    headers = {"ETag": f'"{job.sha256}"'} if job.sha256 else None
    return StoredImageResponse(store, url, size=size, media_type=media_type, headers=headers)
