"""Finding 1 end to end: two jobs of a batch never write one file, so every sidecar describes
the image beside it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from fluxq.config.errors import InvalidRequest
from fluxq.tasks.enqueue import enqueue
from fluxq.workers.state.jobs import State
from tests.support.pipeline import Pipeline


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_names_of_one_batch_give_one_file_each_and_sidecars_match_their_images(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    pipeline = make_pipeline()
    # Given names of which two normalise to one file stem ("same")
    accepted: list[str] = []
    for n, name in enumerate(["same", "same.", "other_"]):
        request = {"prompt": f"image {n}", "seed": n}
        if name == "same.":
            with pytest.raises(InvalidRequest, match="j0") as caught:
                enqueue(pipeline.rt, "flux-dev", request, job_id=f"j{n}", batch="b", name=name)
            assert caught.value.fields == ("name",)
            continue
        accepted.append(
            enqueue(pipeline.rt, "flux-dev", request, job_id=f"j{n}", batch="b", name=name)
        )
    assert accepted == ["j0", "j2"]
    # When the pipeline runs them
    pipeline.drain()
    # Then each accepted job is done in a file of its own, named by its normalised stem
    jobs = [pipeline.job(job_id) for job_id in accepted]
    assert all(job.state is State.DONE for job in jobs)
    paths = [Path(job.path or "") for job in jobs]
    assert [p.name for p in paths] == ["same.jpeg", "other.jpeg"]
    batch_dir = paths[0].parent
    assert sorted(p.name for p in batch_dir.glob("*.jpeg")) == ["other.jpeg", "same.jpeg"]
    # And every sidecar's sha256 is its image's and its job's
    for job, image in zip(jobs, paths, strict=True):
        sidecar = json.loads(image.with_suffix(".json").read_text())
        assert sidecar["job_id"] == job.job_id
        assert sidecar["file"] == image.name
        assert sidecar["sha256"] == sha256_of(image) == job.sha256
    assert sha256_of(paths[0]) != sha256_of(paths[1])


def test_the_same_name_in_two_batches_is_two_files(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    pipeline = make_pipeline()
    ids = [
        enqueue(pipeline.rt, "flux-dev", {"prompt": f"p{b}", "seed": b}, batch=f"b{b}", name="x")
        for b in range(2)
    ]
    pipeline.drain()
    paths = {pipeline.job(job_id).path for job_id in ids}
    assert len(paths) == 2
    with pytest.raises(InvalidRequest):
        enqueue(pipeline.rt, "flux-dev", {"prompt": "again"}, batch="b0", name="x.")
