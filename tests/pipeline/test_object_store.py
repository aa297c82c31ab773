"""Images saved to an object store (FLUXQ_OUTPUT_URL=s3://bucket/prefix) through the real task
logic, the simulator and a real S3-compatible server: moto in server mode, its own process on a
free loopback port, stopped by its pid. The test reads the bucket with boto3 directly, never
through fluxq's own storage code.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3  # with moto[server], in the dev extra
import pytest
import redis
from starlette.exceptions import StarletteDeprecationWarning

from fluxq.api import create_app
from fluxq.tasks.enqueue import enqueue
from fluxq.tasks.save import save_job, staging_path
from fluxq.workers.state.jobs import State
from tests.support.pipeline import Pipeline
from tests.support.s3 import isolated_aws_env, running_moto

with warnings.catch_warnings():
    # Starlette 1.x warns that its TestClient on httpx (not httpx2) is deprecated; it works.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

ENV_SECRET = "env-secret-" + uuid.uuid4().hex
OPTION_KEY = "AKIAFLUXQ" + uuid.uuid4().hex[:11].upper()
OPTION_SECRET = "option-secret-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m moto.server`` on 127.0.0.1, stopped by its own pid at the end."""
    with running_moto(tmp_path_factory.mktemp("moto")) as url:
        yield url


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials in the library's usual environment, and nothing read from elsewhere
    (no profile files, no instance metadata: every request stays on 127.0.0.1)."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "fluxq-test-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ENV_SECRET)
    for name, value in isolated_aws_env(tmp_path).items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def s3(s3_server: str, aws_env: None) -> Any:
    """A boto3 client straight to the server: the test's own view of the bucket."""
    return boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")


def new_bucket(s3: Any) -> str:
    name = f"fluxq-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def options(endpoint: str, **extra: Any) -> str:
    """FLUXQ_OUTPUT_OPTIONS: the endpoint, and no retries inside botocore (fluxq retries)."""
    config = {"retries": {"max_attempts": 1}, "connect_timeout": 2, "read_timeout": 5}
    return json.dumps({"endpoint_url": endpoint, "config_kwargs": config, **extra})


def keys_in(s3: Any, bucket: str) -> set[str]:
    found = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {item["Key"] for item in found}


def body_of(s3: Any, bucket: str, key: str) -> bytes:
    data: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return data


def canonical_json(raw: bytes) -> bytes:
    return (json.dumps(json.loads(raw), indent=2, sort_keys=True, default=str) + "\n").encode()


VARYING = {"job_id", "batch", "times", "timings_s", "bfl_id"}
"""Sidecar fields that differ between two runs of the same request."""


def test_images_go_to_the_store_in_the_local_layout_with_a_checked_sha256(
    make_pipeline: Callable[..., Pipeline], s3: Any, s3_server: str
) -> None:
    # Given the same three requests, saved once to a local directory and once to S3
    bucket = new_bucket(s3)
    requests = [{"prompt": f"heron {i}", "seed": i} for i in range(3)]
    local = make_pipeline()
    local_ids = [
        enqueue(local.rt, "flux-dev", r, batch="night-local", name=f"heron-{i}")
        for i, r in enumerate(requests)
    ]
    local.drain()
    stored = make_pipeline(output_url=f"s3://{bucket}/renders/", output_options=options(s3_server))
    ids = [
        enqueue(stored.rt, "flux-dev", r, batch="night", name=f"heron-{i}")
        for i, r in enumerate(requests)
    ]
    stored.drain()
    # Then every job is done, its path the object's full URL
    assert all(local.job(i).state is State.DONE for i in local_ids)
    jobs = [stored.job(i) for i in ids]
    assert [j.state for j in jobs] == [State.DONE] * 3
    assert [j.path for j in jobs] == [
        f"s3://{bucket}/renders/night/heron-{i}.jpeg" for i in range(3)
    ]
    # The bucket holds the local layout: image and sidecar per name, one manifest line per job
    # (and nothing else: no temporary object)
    out = local.rt.settings.output_dir / "night-local"
    local_files = {p.name for p in out.iterdir()}
    assert local_files == {f"heron-{i}.{ext}" for i in range(3) for ext in ("jpeg", "json")} | {
        "manifest.jsonl"
    }
    expected = {f"renders/night/{name}" for name in local_files - {"manifest.jsonl"}}
    expected |= {f"renders/night/manifest/{job_id}.jsonl" for job_id in ids}
    assert keys_in(s3, bucket) == expected
    local_manifest = [
        json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()
    ]
    for i, job in enumerate(jobs):
        image = body_of(s3, bucket, f"renders/night/heron-{i}.jpeg")
        raw_sidecar = body_of(s3, bucket, f"renders/night/heron-{i}.json")
        sidecar = json.loads(raw_sidecar)
        local_sidecar = json.loads((out / f"heron-{i}.json").read_bytes())
        # The object's sha256 is the recorded one, in the job, the sidecar and the manifest
        assert hashlib.sha256(image).hexdigest() == job.sha256 == sidecar["sha256"]
        assert len(image) == sidecar["size_bytes"]
        assert image == (out / f"heron-{i}.jpeg").read_bytes()
        head = s3.head_object(Bucket=bucket, Key=f"renders/night/heron-{i}.jpeg")
        assert head["ContentType"] == "image/jpeg"
        # The sidecar is the local one: same fields, same values, written the same way
        assert raw_sidecar == canonical_json(raw_sidecar)
        assert sidecar.keys() == local_sidecar.keys()
        assert {k: v for k, v in sidecar.items() if k not in VARYING} == {
            k: v for k, v in local_sidecar.items() if k not in VARYING
        }
        assert (sidecar["job_id"], sidecar["batch"], sidecar["file"]) == (
            job.job_id,
            "night",
            f"heron-{i}.jpeg",
        )
        line = body_of(s3, bucket, f"renders/night/manifest/{job.job_id}.jsonl")
        assert line.endswith(b"\n")
        assert line.count(b"\n") == 1
        entry = json.loads(line)
        assert entry["sha256"] == job.sha256
        assert entry.keys() == local_manifest[0].keys()
    # A redelivered save writes nothing twice
    assert save_job(stored.rt, ids[0]) is None
    assert keys_in(s3, bucket) == expected
    # Nothing is left in the local staging directory
    staged = staging_path(stored.rt, jobs[0]).parent
    assert not staged.exists() or not [p for p in staged.iterdir() if "heron-" in p.name]


METHODS = {b"GET", b"HEAD", b"PUT", b"POST", b"DELETE"}


class CuttingProxy:
    """A TCP relay on 127.0.0.1 to the S3 server. While ``cut_after`` is set, a connection that
    has carried that many more request bytes is closed right there: an upload cut off midway,
    as a killed worker or a network drop would leave it."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.cut_after: int | None = None
        self.cuts: list[bytes] = []  # the request line of each request cut off
        self.sockets: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for src, dst, upload in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(src, dst, upload), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upload: bool) -> None:
        carried = 0
        request = b""
        try:
            while chunk := src.recv(65536):
                if upload and chunk.split(b" ", 1)[0] in METHODS:
                    request = chunk.split(b"\r\n", 1)[0]
                limit = self.cut_after if upload else None
                if limit is not None:
                    carried += len(chunk)
                    if carried > limit:
                        dst.sendall(chunk[: len(chunk) - (carried - limit)])
                        self.cuts.append(request)
                        break
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        self.server.close()
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def proxy(s3_server: str) -> Iterator[CuttingProxy]:
    relay = CuttingProxy(s3_server)
    yield relay
    relay.close()


def test_an_upload_cut_off_midway_leaves_no_object_and_the_retry_completes(
    make_pipeline: Callable[..., Pipeline], s3: Any, proxy: CuttingProxy
) -> None:
    # Given a job whose image (a PNG of some size) is about to be saved through a relay
    bucket = new_bucket(s3)
    pipeline = make_pipeline(output_url=f"s3://{bucket}/out", output_options=options(proxy.url))
    request = {"prompt": "cut upload", "seed": 7, "width": 1024, "height": 1024}
    job_id = enqueue(pipeline.rt, "flux-dev", {**request, "output_format": "png"}, batch="cut")
    while "save" not in pipeline.dispatch.kinds(job_id):
        assert pipeline.step()
    # When the relay cuts every connection 16 KiB into the save's requests
    proxy.cut_after = 16 * 1024
    assert pipeline.step()  # the first save: downloaded whole, its upload cut off
    # Then the upload was cut midway, the job is still ready (to be retried) and the bucket,
    # read past the relay, holds no object at all: not at the final key, not anywhere
    assert proxy.cuts
    assert all(line.startswith(f"PUT /{bucket}/out/cut/".encode()) for line in proxy.cuts)
    job = pipeline.job(job_id)
    assert job.state is State.READY
    assert job.download_attempts == 1
    assert keys_in(s3, bucket) == set()
    staged = staging_path(pipeline.rt, job)
    assert (
        not staged.parent.exists()
        or [p for p in staged.parent.iterdir() if staged.name in p.name] == []
    )
    # When the connection holds again, the retried save completes
    proxy.cut_after = None
    pipeline.drain()
    job = pipeline.job(job_id)
    assert job.state is State.DONE
    image = body_of(s3, bucket, "out/cut/" + Path(job.path or "").name)
    assert len(image) > 16 * 1024  # so the cut fell inside the image's body
    assert hashlib.sha256(image).hexdigest() == job.sha256
    assert keys_in(s3, bucket) == {
        f"out/cut/{Path(job.path or '').stem}.png",
        f"out/cut/{Path(job.path or '').stem}.json",
        f"out/cut/manifest/{job_id}.jsonl",
    }


def test_a_dropped_download_writes_nothing_to_the_store_and_the_retry_completes(
    make_pipeline: Callable[..., Pipeline], s3: Any, s3_server: str
) -> None:
    bucket = new_bucket(s3)
    pipeline = make_pipeline(output_url=f"s3://{bucket}/out", output_options=options(s3_server))
    pipeline.sim.configure(download_drop_rate=1.0)
    job_id = enqueue(pipeline.rt, "flux-dev", {"prompt": "drop"}, batch="drop", name="drop")
    while "save" not in pipeline.dispatch.kinds(job_id):
        assert pipeline.step()
    assert pipeline.step()  # the first save attempt: the download breaks off
    assert pipeline.job(job_id).state is State.READY
    assert keys_in(s3, bucket) == set()
    pipeline.sim.configure(download_drop_rate=0.0)
    pipeline.drain()
    job = pipeline.job(job_id)
    assert job.state is State.DONE
    assert keys_in(s3, bucket) == {
        "out/drop/drop.jpeg",
        "out/drop/drop.json",
        f"out/drop/manifest/{job_id}.jsonl",
    }
    assert hashlib.sha256(body_of(s3, bucket, "out/drop/drop.jpeg")).hexdigest() == job.sha256


def redis_text(client: redis.Redis) -> str:
    """Every key and value in Redis, as text: job records, batches, events' leftovers."""
    parts: list[str] = []
    for key in client.scan_iter():
        kind = client.type(key)
        parts.append(str(key))
        if kind == b"string":
            parts.append(str(client.get(key)))
        elif kind == b"hash":
            parts.append(str(client.hgetall(key)))
        elif kind == b"list":
            parts.append(str(client.lrange(key, 0, -1)))
        elif kind == b"set":
            parts.append(str(client.smembers(key)))
        elif kind == b"zset":
            parts.append(str(client.zrange(key, 0, -1)))
    return "\n".join(parts)


def test_credentials_reach_no_job_record_sidecar_manifest_reason_or_log(
    make_pipeline: Callable[..., Pipeline],
    s3: Any,
    s3_server: str,
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given credentials in FLUXQ_OUTPUT_OPTIONS (and another in the environment)
    caplog.set_level(logging.DEBUG, logger="fluxq")
    bucket = new_bucket(s3)
    secret_options = options(s3_server, key=OPTION_KEY, secret=OPTION_SECRET)
    good = make_pipeline(output_url=f"s3://{bucket}/out", output_options=secret_options)
    ok = enqueue(good.rt, "flux-dev", {"prompt": "secret-free"}, batch="creds")
    good.drain()
    # and a store that refuses every upload (its bucket does not exist)
    broken = make_pipeline(
        output_url=f"s3://{bucket}-missing/out",
        output_options=secret_options,
        download_max_attempts=1,
    )
    bad = enqueue(broken.rt, "flux-dev", {"prompt": "no bucket"}, batch="creds-missing")
    broken.drain()
    # Then the saved job is done and the failed one says why, naming the setting
    assert good.job(ok).state is State.DONE
    failed = broken.job(bad)
    assert failed.state is State.FAILED
    assert "FLUXQ_OUTPUT_URL" in (failed.reason or "")
    # And no credential is in Redis, the bucket, the log or what was dispatched
    seen = [
        redis_text(redis.Redis.from_url(redis_url)),
        "\n".join(body_of(s3, bucket, key).decode(errors="replace") for key in keys_in(s3, bucket)),
        caplog.text,
        repr(good.dispatch.sent) + repr(broken.dispatch.sent),
        repr(good.dispatch.callbacks) + repr(broken.dispatch.callbacks),
        json.dumps(good.rt.settings.masked()),
    ]
    for text in seen:
        for secret in (OPTION_KEY, OPTION_SECRET, ENV_SECRET):
            assert secret not in text
    assert good.rt.settings.masked()["output_options"] == "**********"


def test_the_api_streams_an_s3_stored_image_with_its_content_type_and_etag(
    make_pipeline: Callable[..., Pipeline], s3: Any, s3_server: str, redis_url: str
) -> None:
    # Given a job saved to S3
    bucket = new_bucket(s3)
    pipeline = make_pipeline(output_url=f"s3://{bucket}/api", output_options=options(s3_server))
    job_id = enqueue(pipeline.rt, "flux-dev", {"prompt": "stream me"}, batch="api", name="one")
    pipeline.drain()
    job = pipeline.job(job_id)
    assert job.state is State.DONE
    image = body_of(s3, bucket, "api/api/one.jpeg")
    # When a client asks `fluxq api` (in-process) for it
    settings = pipeline.rt.settings.with_overrides(redis_url=redis_url)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        got = client.get(f"/v1/jobs/{job_id}/image")
        # Then it streams the object's bytes with the local file's headers
        assert got.status_code == 200, got.text
        assert got.content == image
        assert got.headers["content-type"] == "image/jpeg"
        assert got.headers["etag"] == f'"{job.sha256}"'
        assert got.headers["content-length"] == str(len(image))
        # When the object is gone, it is a 404 that says so
        s3.delete_object(Bucket=bucket, Key="api/api/one.jpeg")
        gone = client.get(f"/v1/jobs/{job_id}/image")
        assert gone.status_code == 404
        assert "no longer in the store" in gone.text


def test_a_video_draft_batch_puts_every_sample_in_the_store_with_the_sidecar_listing_them(
    make_pipeline: Callable[..., Pipeline], s3: Any, s3_server: str
) -> None:
    # Given a FLUX 3 video draft batch of 3 saved to S3
    bucket = new_bucket(s3)
    stored = make_pipeline(output_url=f"s3://{bucket}/clips", output_options=options(s3_server))
    body = {"mode": "t2v", "prompt": "a storm", "draft": True, "batch": 3}
    job_id = enqueue(stored.rt, "flux-3-video", body, batch="drafts", name="storm")

    stored.drain()

    # Then the job is done, its path the first sample's object, and each sample is an object
    # whose bytes are an MP4 with the sha256 and size the sidecar lists
    job = stored.job(job_id)
    assert job.state is State.DONE, job.reason
    assert job.path == f"s3://{bucket}/clips/drafts/storm.mp4"
    names = ["storm.mp4", "storm-2.mp4", "storm-3.mp4"]
    assert keys_in(s3, bucket) == {
        *(f"clips/drafts/{name}" for name in [*names, "storm.json"]),
        f"clips/drafts/manifest/{job_id}.jsonl",
    }
    sidecar = json.loads(body_of(s3, bucket, "clips/drafts/storm.json"))
    assert [f["file"] for f in sidecar["files"]] == names
    for listed in sidecar["files"]:
        data = body_of(s3, bucket, f"clips/drafts/{listed['file']}")
        assert data[4:8] == b"ftyp"
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (
            listed["sha256"],
            listed["size_bytes"],
        )
    assert len(sidecar["draft_caches"]) == 3
    assert sidecar["draft_cache"] == sidecar["draft_caches"][0]
    # and no staging file is left behind
    staged = staging_path(stored.rt, job).parent
    assert not staged.exists() or not list(staged.iterdir())
