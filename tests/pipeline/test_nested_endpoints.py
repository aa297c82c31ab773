"""A FLUX Tool at its nested path (``flux-tools/erase-v1``), end to end: POSTed there, polled,
saved where every job's file goes, with no directory named after the endpoint."""

from __future__ import annotations

import json
from pathlib import Path

from prometheus_client import generate_latest

from fluxq.tasks.batches import enqueue_entries
from fluxq.tasks.batchfile import Entry
from fluxq.tasks.enqueue import enqueue
from fluxq.workers.metrics import registry_for
from fluxq.workers.runtime import describe
from fluxq.workers.state import keys
from fluxq.workers.state.jobs import State
from tests.support.pipeline import Pipeline

ERASE = "flux-tools/erase-v1"


def every_path_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_a_tool_job_is_posted_to_its_nested_path_and_saved_as_its_batch_and_name(
    pipeline: Pipeline,
) -> None:
    body = {"image": "aGVsbG8=", "mask": "aGVsbG8=", "prompt": "no lamp post"}
    job_id = enqueue(pipeline.rt, ERASE, body, batch="tools", name="erased")

    pipeline.drain()

    job = pipeline.job(job_id)
    assert job.state is State.DONE, job.reason
    out = pipeline.rt.settings.output_dir
    assert job.path == str(out / "tools" / "erased.jpeg")
    assert every_path_under(out) == [
        "tools",
        "tools/erased.jpeg",
        "tools/erased.json",
        "tools/manifest.jsonl",
    ]
    sidecar = json.loads((out / "tools" / "erased.json").read_text(encoding="utf-8"))
    assert (sidecar["endpoint"], sidecar["request"]) == (ERASE, body)
    manifest = json.loads((out / "tools" / "manifest.jsonl").read_text(encoding="utf-8"))
    assert manifest["endpoint"] == ERASE
    # BFL's side saw one POST on the nested path; fluxq learned its latency under that name
    assert pipeline.stats()["submits_by_endpoint"] == {ERASE: 1}
    assert pipeline.rt.redis.llen(keys.latency(ERASE)) == 1
    text = generate_latest(registry_for(pipeline.rt.settings, pipeline.rt.redis)).decode()
    assert f'fluxq_submit_to_ready_seconds_count{{endpoint="{ERASE}"}} 1.0' in text
    assert describe(job)[0] == f'job={job_id} endpoint={ERASE} "no lamp post"'  # Flower's text


def test_batch_lines_of_several_tools_share_the_default_lane_and_land_in_one_folder(
    pipeline: Pipeline,
) -> None:
    tools = ["flux-tools/outpainting-v1", ERASE, "flux-tools/deblur-v1", "flux-tools/vto-v1"]
    entries = [
        Entry(i, f"l{i}", f"img-{i}", tool, 0.0, json.dumps({"image": "aGVsbG8="}))
        for i, tool in enumerate(tools)
    ]

    result = enqueue_entries(pipeline.rt, "night", entries)
    pipeline.drain()

    assert result.added == 4
    out = pipeline.rt.settings.output_dir
    assert sorted(p.name for p in (out / "night").glob("*.jpeg")) == [
        f"img-{i}.jpeg" for i in range(4)
    ]
    assert [p.name for p in out.iterdir()] == ["night"]  # no flux-tools/ directory anywhere
    assert pipeline.stats()["submits_by_endpoint"] == dict.fromkeys(tools, 1)
