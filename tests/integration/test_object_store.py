"""A fleet saving to S3 as deployed: real `fluxq worker` processes (with a separate save process)
and a real `fluxq api` process, configured only through FLUXQ_OUTPUT_URL/FLUXQ_OUTPUT_OPTIONS,
against a real S3-compatible server (moto, its own process on a loopback port)."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from pathlib import Path

import boto3  # with moto[server], in the dev extra
import httpx
import pytest
import redis

from fluxq.tasks.enqueue import enqueue
from fluxq.workers.state.jobs import State
from tests.support.api import AUTH, TOKEN, ApiServer
from tests.support.cluster import Cluster
from tests.support.s3 import isolated_aws_env, running_moto

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

OPTION_KEY = "AKIAFLUXQ" + uuid.uuid4().hex[:11].upper()
OPTION_SECRET = "option-secret-" + uuid.uuid4().hex


def test_a_fleet_saves_to_s3_and_the_api_streams_each_object(
    make_cluster: Callable[..., Cluster], redis_url: str, tmp_path: Path
) -> None:
    with running_moto(tmp_path) as endpoint:
        # Given a bucket, and workers and an API told only FLUXQ_OUTPUT_URL and its options
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=OPTION_KEY,
            aws_secret_access_key=OPTION_SECRET,
        )
        bucket = f"fleet-{uuid.uuid4().hex[:10]}"
        s3.create_bucket(Bucket=bucket)
        options = {"endpoint_url": endpoint, "key": OPTION_KEY, "secret": OPTION_SECRET}
        cluster = make_cluster(
            FLUXQ_OUTPUT_URL=f"s3://{bucket}/fleet",
            FLUXQ_OUTPUT_OPTIONS=json.dumps(options),
            **isolated_aws_env(tmp_path),
        )
        cluster.start_worker(threads=4, save_threads=2)
        server = ApiServer(cluster.env | {"FLUXQ_API_TOKEN": TOKEN}, tmp_path)
        try:
            server.wait_up()
            # When a batch runs
            ids = [
                enqueue(cluster.rt, "flux-dev", {"prompt": f"fleet {i}", "seed": i}, batch="b1")
                for i in range(4)
            ]
            counts = cluster.wait_terminal("b1", len(ids), timeout_s=60)
            assert counts.get(State.DONE.value) == len(ids), counts
            # Then each image is an object at the local layout's key, its sha256 the recorded one,
            # and the API streams exactly those bytes with the same headers as a local file
            with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
                for job_id in ids:
                    job = cluster.rt.store.get(job_id)
                    assert job is not None
                    assert job.path == f"s3://{bucket}/fleet/b1/{job_id}.jpeg"
                    key = f"fleet/b1/{job_id}.jpeg"
                    image = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
                    assert hashlib.sha256(image).hexdigest() == job.sha256
                    sidecar = json.loads(
                        s3.get_object(Bucket=bucket, Key=f"fleet/b1/{job_id}.json")["Body"].read()
                    )
                    assert (sidecar["sha256"], sidecar["size_bytes"]) == (job.sha256, len(image))
                    got = client.get(f"/v1/jobs/{job_id}/image")
                    assert got.status_code == 200, got.text
                    assert got.content == image
                    assert got.headers["content-type"] == "image/jpeg"
                    assert got.headers["etag"] == f'"{job.sha256}"'
                    status = client.get(f"/v1/jobs/{job_id}").json()
                    assert status["path"] == job.path
            listed = s3.list_objects_v2(Bucket=bucket, Prefix="fleet/b1/manifest/")["Contents"]
            assert sorted(item["Key"] for item in listed) == sorted(
                f"fleet/b1/manifest/{job_id}.jsonl" for job_id in ids
            )
        finally:
            server.stop()
        cluster.stop()
        # And no credential reached a log or Redis
        logs = [path.read_text(errors="replace") for path in [*cluster.logs, server.log]]
        stored = redis.Redis.from_url(redis_url)
        for key in stored.scan_iter():
            if stored.type(key) == b"hash":
                logs.append(str(stored.hgetall(key)))
        for text in logs:
            assert OPTION_KEY not in text
            assert OPTION_SECRET not in text
