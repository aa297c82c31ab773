"""Every poll and save outcome, through the real task logic, the simulator and a real Redis."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from fluxq.tasks.enqueue import enqueue
from fluxq.tasks.poll import poll_job
from fluxq.tasks.save import final_path, save_job
from fluxq.tasks.sweep import sweep
from fluxq.workers.bfl.client import BFLClient
from fluxq.workers.state import keys
from fluxq.workers.state.jobs import State
from tests.support.pipeline import Pipeline


def test_pending_polls_adapt_to_the_observed_latency_and_stay_few(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    # Given a 3 s model (30 ms here) and a poll step of 10-50 ms
    pipeline = make_pipeline()
    pipeline.sim.configure(latency={"flux-dev": {"kind": "fixed", "seconds": 3.0}})
    ids = [enqueue(pipeline.rt, "flux-dev", {"prompt": f"p{i}", "seed": i}) for i in range(6)]
    pipeline.drain()
    # Then all are done, the learned median moved from the 20 ms prior toward ~30 ms, from the
    # observed intervals (not the poll that saw Ready), and polls per task stay low
    assert all(pipeline.job(i).state is State.DONE for i in ids)
    assert pipeline.rt.redis.llen(keys.latency("flux-dev")) == len(ids)
    median = pipeline.rt.latency.model("flux-dev", "default").median_s
    assert 0.02 <= median <= 0.06
    stats = pipeline.stats()
    assert stats["max_polls_per_task"] <= 8
    assert stats["polls_wrong_host"] == 0


@pytest.mark.parametrize(
    ("prompt", "words"),
    [
        ("a cat [content-moderated]", ("Content Moderated", "NSFW")),
        ("a cat [request-moderated]", ("Request Moderated", "Derivative Works Filter")),
        ("a cat [error]", ("Error", "generation failed")),
    ],
)
def test_terminal_failures_release_the_slot_and_fail_with_a_readable_reason(
    pipeline: Pipeline, prompt: str, words: tuple[str, str]
) -> None:
    job_id = enqueue(pipeline.rt, "flux-dev", {"prompt": prompt}, batch="bad")
    pipeline.drain()
    job = pipeline.job(job_id)
    assert job.state is State.FAILED
    assert job.reason is not None
    assert all(w in job.reason for w in words)
    assert pipeline.rt.limiter.held() == 0
    assert pipeline.rt.store.batch_counts("bad")["failed"] == 1
    assert pipeline.stats()["downloads"] == 0


def test_a_transient_task_not_found_right_after_submit_is_tolerated(
    pipeline: Pipeline,
) -> None:
    pipeline.sim.configure(not_found_after_submit_s=2.0)  # 20 ms here
    job_id = enqueue(pipeline.rt, "flux-dev", {"prompt": "patience"})
    pipeline.drain()
    assert pipeline.job(job_id).state is State.DONE


def test_a_task_that_stays_not_found_fails_after_the_tolerated_polls(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    pipeline = make_pipeline(not_found_max_polls=3)
    pipeline.sim.configure(not_found_after_submit_s=10_000.0)
    job_id = enqueue(pipeline.rt, "flux-dev", {"prompt": "ghost"})
    pipeline.drain()
    job = pipeline.job(job_id)
    assert job.state is State.FAILED
    assert job.not_found_count == 3
    assert job.reason is not None
    assert "Task not found" in job.reason
    assert pipeline.rt.limiter.held() == 0


def test_a_job_pending_past_the_deadline_fails_as_timed_out_and_frees_its_slot(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    pipeline = make_pipeline(poll_deadline_s=0.3)
    pipeline.sim.configure(latency={"flux-dev": {"kind": "fixed", "seconds": 10_000.0}})
    job_id = enqueue(pipeline.rt, "flux-dev", {"prompt": "slow"})
    pipeline.drain()
    job = pipeline.job(job_id)
    assert job.state is State.FAILED
    assert job.reason
    assert job.reason.startswith("timed out")
    assert pipeline.rt.limiter.held() == 0


def test_an_unknown_status_is_terminal_never_an_endless_poll(pipeline: Pipeline) -> None:
    # Given BFL answering a status fluxq has never seen ("Failed", as some clients expect)
    job_id = enqueue(pipeline.rt, "flux-dev", {"prompt": "odd"})
    assert pipeline.step()  # the submit, against the simulator
    pipeline.dispatch.heap.clear()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"id": "x", "status": "Failed"})

    pipeline.rt.bfl.close()
    pipeline.rt.bfl = BFLClient(pipeline.rt.settings, transport=httpx.MockTransport(handler))
    # When it is polled, Then polling ends with a failure naming the status
    assert poll_job(pipeline.rt, job_id) is None
    job = pipeline.job(job_id)
    assert job.state is State.FAILED
    assert "'Failed'" in (job.reason or "")
    assert pipeline.rt.limiter.held() == 0


def test_a_polling_url_on_a_host_not_allowed_fails_the_job_without_requesting_it(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    # Given settings that allow only the API host (not the simulator's polling host)
    pipeline = make_pipeline(allowed_urls=["https://*.bfl.ai"])
    job_id = enqueue(pipeline.rt, "flux-dev", {"prompt": "elsewhere"})
    pipeline.drain()
    job = pipeline.job(job_id)
    assert job.state is State.FAILED
    assert "not allowed" in (job.reason or "")
    assert pipeline.stats()["polls"] == 0


def test_an_expired_sample_url_is_refetched_once_through_get_result(
    pipeline: Pipeline,
) -> None:
    # Given a result whose signed URL expires before the save runs, and a fresh one on re-poll
    pipeline.sim.configure(resign_sample_on_poll=True)
    job_id = enqueue(pipeline.rt, "flux-dev", {"prompt": "late save"})
    while "save" not in pipeline.dispatch.kinds(job_id):
        assert pipeline.step()
    pipeline.sim.advance_clock(601)
    # When the save runs
    pipeline.drain()
    # Then the first download was refused as expired and the re-fetched URL worked
    job = pipeline.job(job_id)
    assert job.state is State.DONE
    stats = pipeline.stats()
    assert stats["expired_downloads"] == 1  # the first URL, refused
    assert stats["downloads"] == 1  # the re-fetched URL, served
    assert Path(job.path or "").exists()


def test_an_expired_url_with_no_fresh_one_fails_the_job_and_leaves_no_file(
    pipeline: Pipeline,
) -> None:
    job_id = enqueue(pipeline.rt, "flux-dev", {"prompt": "too late"}, batch="late")
    while "save" not in pipeline.dispatch.kinds(job_id):
        assert pipeline.step()
    # The save runs 601 s after Ready, by BFL's clock and fluxq's: the URL's 10 minutes are over
    pipeline.sim.advance_clock(601)
    real_clock = pipeline.rt.clock
    pipeline.rt.clock = lambda: real_clock() + 601
    try:
        pipeline.drain()
    finally:
        pipeline.rt.clock = real_clock
    job = pipeline.job(job_id)
    assert job.state is State.FAILED
    assert "download failed" in (job.reason or "")
    assert job.download_attempts == pipeline.rt.settings.download_max_attempts
    out = pipeline.rt.settings.output_dir / "late"
    assert not out.exists() or list(out.iterdir()) == []


def test_a_delivery_host_refusing_a_valid_url_is_waited_out_not_a_lost_image(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    # Given the delivery host answers 403 to a URL BFL signed seconds ago (a CDN's bad minute)
    pipeline = make_pipeline(download_max_attempts=1, retry_backoff_base_s=0.2)
    pipeline.sim.configure(download_403_rate=1.0)
    job_id = enqueue(pipeline.rt, "flux-dev", {"prompt": "cdn down"}, batch="cdn")
    while "save" not in pipeline.dispatch.kinds(job_id):
        assert pipeline.step()
    for _ in range(4):
        assert pipeline.step()
    # Then the paid image is not given up: the job waits, its save watched past each retry
    job = pipeline.job(job_id)
    assert job.state is State.READY
    assert job.download_attempts == 4
    [(_, watched_until)] = pipeline.rt.redis.zrange(
        keys.saves(pipeline.rt.label), 0, -1, withscores=True
    )
    assert watched_until > pipeline.rt.clock() + pipeline.rt.settings.lease_ttl_s
    # And once the host serves again, the image is saved
    pipeline.sim.configure(download_403_rate=0.0)
    pipeline.drain()
    assert pipeline.job(job_id).state is State.DONE


def first_save_dropped(pipeline: Pipeline, prompt: str, batch: str) -> str:
    """A job whose first save attempt lost its download: still ready, with one attempt made."""
    pipeline.sim.configure(download_drop_rate=1.0)
    job_id = enqueue(pipeline.rt, "flux-dev", {"prompt": prompt}, batch=batch)
    while "save" not in pipeline.dispatch.kinds(job_id):
        assert pipeline.step()
    assert pipeline.step()  # the first save attempt: dropped
    assert pipeline.job(job_id).state is State.READY
    return job_id


def test_a_download_cut_off_midway_is_retried_and_no_partial_file_remains(
    pipeline: Pipeline,
) -> None:
    job_id = first_save_dropped(pipeline, "cut", "cut")
    out = pipeline.rt.settings.output_dir / "cut"
    assert [p for p in out.iterdir() if not p.name.startswith(".")] == []
    pipeline.sim.configure(download_drop_rate=0.0)
    pipeline.drain()
    job = pipeline.job(job_id)
    assert job.state is State.DONE
    assert sorted(p.suffix for p in out.iterdir()) == [".jpeg", ".json", ".jsonl"]


def test_a_recent_part_file_of_a_killed_attempt_is_removed_once_the_save_succeeds(
    pipeline: Pipeline,
) -> None:
    # Given a job whose first save attempt failed, and the sidecar's temporary file a killed
    # attempt left a moment ago (too young for the stale-part check before a download)
    job_id = first_save_dropped(pipeline, "killed", "killed")
    image = final_path(pipeline.rt, pipeline.job(job_id))
    image.parent.mkdir(parents=True, exist_ok=True)
    left = image.with_name(f".{image.with_suffix('.json').name}.deadbeef.part")
    left.write_text("{")
    # When the save is retried and succeeds
    pipeline.sim.configure(download_drop_rate=0.0)
    pipeline.drain()
    # Then the job is done and no hidden temporary file remains beside its image
    assert pipeline.job(job_id).state is State.DONE
    assert [p.name for p in image.parent.iterdir() if p.name.startswith(".")] == []


def test_a_first_save_removes_the_part_file_of_a_save_resent_while_it_ran(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a first save whose download is slow, and a second save of the same job resent
    # meanwhile (the sweep's save watch) that counts its attempt, starts its file and is killed
    job_id = enqueue(pipeline.rt, "flux-dev", {"prompt": "resent"}, batch="resent")
    download = BFLClient.download
    left: list[Path] = []

    def slow_download(client: BFLClient, url: str, path: Path, **kwargs: object) -> object:
        got = download(client, url, path, **kwargs)  # type: ignore[arg-type]
        # so slow that the save watch set at Ready passed (the only way a save is resent)
        ready_at = pipeline.job(job_id).times["ready"]
        later = ready_at + pipeline.rt.settings.lease_ttl_s + 1
        monkeypatch.setattr(pipeline.rt, "clock", lambda: later)
        pipeline.rt.store.incr(job_id, "download_attempts")
        image = final_path(pipeline.rt, pipeline.job(job_id))
        left.append(image.with_name(f".{image.name}.0badc0de.part"))
        left[-1].write_bytes(b"half an image")
        return got

    monkeypatch.setattr(BFLClient, "download", slow_download)
    # When the first save ends
    pipeline.drain()
    # Then the job is done and the resent save's file, which no save will visit again, is gone
    assert pipeline.job(job_id).state is State.DONE
    assert left
    assert not left[0].exists()
    out = left[0].parent
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_a_redelivered_save_does_not_write_a_second_manifest_line(pipeline: Pipeline) -> None:
    job_id = enqueue(pipeline.rt, "flux-dev", {"prompt": "twice"}, batch="twice")
    pipeline.drain()
    assert save_job(pipeline.rt, job_id) is None  # as if Celery delivered it again
    manifest = pipeline.rt.settings.output_dir / "twice" / "manifest.jsonl"
    assert len(manifest.read_text().splitlines()) == 1


class Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []
    fail_first = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        type(self).received.append((dict(self.headers), body))
        if type(self).fail_first > 0:
            type(self).fail_first -= 1
            self.send_response(503)
        else:
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    Receiver.received = []
    Receiver.fail_first = 1
    server = HTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_callbacks_fire_signature_webhook_with_hmac_retried_and_events_on_every_change(
    make_pipeline: Callable[..., Pipeline], receiver: str
) -> None:
    pipeline = make_pipeline(webhook_secret="hook-secret", webhook_allow_private=True)
    events = pipeline.rt.redis.pubsub()
    events.subscribe(keys.EVENTS_CHANNEL)
    callback = {"task": "myapp.on_image", "args": [], "kwargs": {}, "options": {}}
    job_id = enqueue(
        pipeline.rt, "flux-dev", {"prompt": "notify me"}, callback=callback, webhook_url=receiver
    )
    pipeline.drain()
    # The Celery signature got the outcome
    assert [c["job_id"] for c in pipeline.dispatch.callbacks] == [job_id]
    assert pipeline.dispatch.callbacks[0]["state"] == "done"
    # The webhook failed once (503), was retried, and is signed with HMAC-SHA256 of the body
    assert len(Receiver.received) == 2
    headers, body = Receiver.received[-1]
    expected = "sha256=" + hmac.new(b"hook-secret", body, hashlib.sha256).hexdigest()
    assert headers["X-Fluxq-Signature"] == expected
    payload = json.loads(body)
    assert payload["job_id"] == job_id
    assert payload["state"] == "done"
    assert payload["path"]
    assert "hook-secret" not in body.decode()
    # Every state change was published, in order
    states = []
    while (message := events.get_message(timeout=0.5)) is not None:
        if message["type"] == "message":
            event = json.loads(message["data"])
            if event["job"] == job_id:
                states.append(event["state"])
    events.close()
    assert states == ["queued", "admitted", "submitted", "ready", "done"]


def test_a_save_lost_with_its_worker_is_resent_by_the_sweep(pipeline: Pipeline) -> None:
    # Given a job that became ready, and its save message lost with a dying worker
    job_id = enqueue(pipeline.rt, "flux-dev", {"prompt": "orphaned save"})
    while "save" not in pipeline.dispatch.kinds(job_id):
        assert pipeline.step()
    pipeline.dispatch.heap.clear()
    assert pipeline.job(job_id).state is State.READY
    # When the sweep runs before the watch lapses, nothing is resent
    sweep(pipeline.rt)
    assert pipeline.dispatch.kinds(job_id).count("save") == 1
    # When it runs after the watch lapsed
    real_clock = pipeline.rt.clock
    pipeline.rt.clock = lambda: real_clock() + pipeline.rt.settings.lease_ttl_s + 1
    sweep(pipeline.rt)
    pipeline.rt.clock = real_clock
    pipeline.drain()
    # Then the save was sent again and the job is done, with no watch left behind
    assert pipeline.dispatch.kinds(job_id).count("save") == 2
    assert pipeline.job(job_id).state is State.DONE
    assert pipeline.rt.redis.zcard(keys.saves(pipeline.rt.label)) == 0


def test_a_save_killed_after_writing_but_before_done_loses_no_manifest_line(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a ready job whose first save dies right before marking the job done
    job_id = enqueue(pipeline.rt, "flux-dev", {"prompt": "killed mid-save"}, batch="kill")
    while "save" not in pipeline.dispatch.kinds(job_id):
        assert pipeline.step()
    pipeline.dispatch.heap.clear()
    real_transition = pipeline.rt.store.transition

    def dies_before_done(job: str, to: State, **kw: object) -> bool:
        if to is State.DONE:
            raise RuntimeError("worker killed")
        return real_transition(job, to, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline.rt.store, "transition", dies_before_done)
    with pytest.raises(RuntimeError):
        save_job(pipeline.rt, job_id)
    monkeypatch.setattr(pipeline.rt.store, "transition", real_transition)
    manifest = pipeline.rt.settings.output_dir / "kill" / "manifest.jsonl"
    assert pipeline.job(job_id).state is State.READY
    assert len(manifest.read_text().splitlines()) == 1
    # When the save is delivered again
    assert save_job(pipeline.rt, job_id) is None
    # Then the job is done and the manifest lists it exactly once
    assert pipeline.job(job_id).state is State.DONE
    lines = manifest.read_text().splitlines()
    assert [json.loads(line)["job_id"] for line in lines] == [job_id]
