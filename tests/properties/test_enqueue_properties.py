"""Properties of the ways in: any input either enqueues a job whose file lands inside the output
directory, or raises one InvalidRequest naming at least one field; never anything else.

The ways in that exist: ``tasks.enqueue.enqueue(rt, endpoint, request, **options)`` (what
``fluxq.enqueue`` and the CLI call) and the ``fluxq.enqueue`` task, whose body is
``enqueue_message(rt, kwargs, message_id=...)``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fluxq.config.catalog import CATALOG
from fluxq.config.errors import InvalidRequest
from fluxq.tasks.enqueue import enqueue, enqueue_message, refuse_message
from fluxq.tasks.save import final_path
from fluxq.workers.files import safe_name
from fluxq.workers.runtime import Runtime

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` three times in four, so accepted jobs are common enough to check their files."""
    return st.integers(0, 3).flatmap(lambda n: bad if n == 3 else good)


scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
json_like = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
ids = mostly(
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,8}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,3}[._\n]", fullmatch=True)
    | st.sampled_from(["a" * 128, "a" * 129, "x" * 127 + ".", "-lead", "../up", "a/b", ""])
    | json_like,
)
endpoints = mostly(st.sampled_from(sorted(CATALOG)), st.sampled_from(["flux-nope", ""]) | json_like)
request_fields = st.sampled_from(
    ["prompt", "seed", "width", "height", "aspect_ratio", "output_format", "webhook_secret",
     "prompt_upsampling", "safety_tolerance", "input_image", "steps", "guidance", "raw"]
)  # fmt: skip
requests = mostly(
    st.fixed_dictionaries(
        {"prompt": st.text(min_size=1, max_size=20)},
        optional={
            "seed": st.integers(0, 2**31),
            "output_format": st.sampled_from(["jpeg", "png", "webp", "gif"]),
            "width": st.sampled_from([256, 512, 1024, 1000]),
            "height": st.sampled_from([256, 512, 1024, 1000]),
            "aspect_ratio": st.sampled_from(["1:1", "16:9", "21:9", "9:1"]),
        },
    ),
    st.dictionaries(request_fields, json_like | st.integers(0, 2048), max_size=5) | json_like,
)
webhook_urls = mostly(
    st.sampled_from(
        [
            "https://hooks.example.com/fluxq",
            "http://127.0.0.1:9/hook",
            "http://[::1]:80/x",
            "https://xn--tda.example/",
        ]
    ),
    st.sampled_from(
        [
            "http://",
            "http:///etc/passwd",
            "http://user:pw@hooks.example.com/",
            "http://[zz]/x",
            "https://hooks.example.com:70000/",
            "https://xn--/",
            "https://" + "h" * 300 + ".example/",
            "http://hooks.example.com/" + "a" * 2100,
        ]
    )
    | st.text(max_size=30).map(lambda s: "https://" + s)
    | json_like,
)
callbacks = mostly(
    st.fixed_dictionaries(
        {"task": st.sampled_from(["myapp.on_image", "on-image", "a:b", "x.y.z"])},
        optional={
            "args": st.lists(json_like, max_size=2),
            "kwargs": st.dictionaries(st.text(max_size=5), json_like, max_size=2),
            "options": st.dictionaries(st.text(max_size=5), json_like, max_size=2),
        },
    ),
    st.fixed_dictionaries(
        {"task": st.sampled_from(["", "bad name", "x\n", "1abc"]) | json_like},
        optional={"args": json_like, "kwargs": json_like, "options": json_like},
    )
    | json_like,
)
options = st.fixed_dictionaries(
    {},
    optional={
        "job_id": ids,
        "batch": ids,
        "name": ids,
        "priority": mostly(st.integers(0, 9), st.integers(-2, 11) | json_like),
        "webhook_url": webhook_urls,
        "callback": callbacks,
    },
)
unknown_options = mostly(
    st.just({}), st.dictionaries(st.sampled_from(["priorty", "colour", "Name"]), json_like)
)


def flush(rt: Runtime) -> None:
    client: redis.Redis[str] = rt.redis
    client.flushdb()


def outcome(call: Callable[[], str]) -> str | InvalidRequest:
    """What ``call`` returned, or the InvalidRequest it raised (anything else propagates)."""
    try:
        return call()
    except InvalidRequest as exc:
        return exc


def check_outcome(rt: Runtime, call: Callable[[], str]) -> None:
    """Run ``call``: a job id whose record exists and saves inside output_dir, or InvalidRequest."""
    job_id = outcome(call)
    if isinstance(job_id, InvalidRequest):
        assert job_id.errors, job_id
        assert all(error.loc and error.field for error in job_id.errors), job_id.errors
        return
    job = rt.store.get(job_id)
    assert job is not None
    output_dir = rt.settings.output_dir.resolve()
    path = final_path(rt, job).resolve()
    assert path.is_relative_to(output_dir), path
    assert path.parent.parent == output_dir
    assert safe_name(job.name) == job.name
    assert path.stem == job.name


@SETTINGS
@given(endpoint=endpoints, request=requests, opts=options, unknown=unknown_options)
def test_the_python_api_enqueues_or_names_a_field(
    runtime: Runtime, endpoint: Any, request: Any, opts: dict[str, Any], unknown: dict[str, Any]
) -> None:
    flush(runtime)
    check_outcome(runtime, lambda: enqueue(runtime, endpoint, request, **opts, **unknown))


@SETTINGS
@given(
    message=st.fixed_dictionaries(
        {}, optional={"endpoint": endpoints, "request": requests, "job_id": ids}
    ),
    opts=options,
    extra=mostly(st.just({}), st.dictionaries(st.text(max_size=6), json_like, max_size=2)),
)
def test_the_enqueue_task_message_enqueues_or_names_a_field(
    runtime: Runtime, message: dict[str, Any], opts: dict[str, Any], extra: dict[str, Any]
) -> None:
    flush(runtime)
    kwargs = {**extra, **opts, **message}
    check_outcome(runtime, lambda: enqueue_message(runtime, kwargs, message_id=str(uuid.uuid4())))


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    names=st.lists(
        st.from_regex(r"[Aa][Aa._\-]{0,3}", fullmatch=True) | st.none(), min_size=1, max_size=8
    )
)
def test_accepted_jobs_of_a_batch_never_share_a_file(
    runtime: Runtime, names: list[str | None]
) -> None:
    flush(runtime)
    stems: dict[str, str] = {}  # lower-cased file stem -> the accepted job holding it
    for n, name in enumerate(names):
        job_id = "a" if n == 0 else f"j{n}"  # a job without a name is saved under its id
        stem = safe_name(name or job_id).lower()
        got = outcome(
            partial(
                enqueue, runtime, "flux-dev", {"prompt": "p"}, job_id=job_id, batch="b", name=name
            )
        )
        if isinstance(got, InvalidRequest):
            assert got.fields == ("name",)
            assert stems[stem] in str(got)
        else:
            assert stem not in stems
            stems[stem] = job_id
    jobs = [runtime.store.get(job_id) for job_id in stems.values()]
    paths = {str(final_path(runtime, job)).lower() for job in jobs if job is not None}
    assert len(paths) == len(stems)


# --- Text that cannot be sent: lone surrogates anywhere ----------------------------------------

surrogates = st.sampled_from(["\ud800", "\udbff", "\udc80", "\udfff"])
"""Lone surrogates: what JSON's "\\ud800" escapes and argv bytes that are not UTF-8 read as."""
texts = st.lists(st.text(max_size=3) | surrogates, max_size=4).map("".join)
"""Strings that hold a lone surrogate about half of the time (st.text never makes one)."""
sometimes_json = st.recursive(
    st.none() | st.integers() | texts,
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(texts, inner, max_size=2),
    max_leaves=4,
)
text_requests = st.fixed_dictionaries(
    {"prompt": texts},
    optional={
        "image_prompt": texts,
        "input_image": texts,
        "finetune_id": texts,
        "aspect_ratio": st.sampled_from(["1:1", "16:9"]) | texts,
        "output_format": st.sampled_from(["jpeg", "png"]) | texts,
    },
)
text_options = st.fixed_dictionaries(
    {},
    optional={
        "job_id": ids | texts,
        "batch": ids | texts,
        "name": ids | texts,
        "webhook_url": st.just("https://hooks.example.com/") | texts.map(lambda s: "https://" + s),
        "callback": st.fixed_dictionaries(
            {"task": st.just("myapp.on_image")},
            optional={
                "args": st.lists(sometimes_json, max_size=2),
                "kwargs": st.dictionaries(texts, sometimes_json, max_size=2),
                "options": st.dictionaries(texts, sometimes_json, max_size=2),
            },
        ),
    },
)


def sendable(rt: Runtime, job_id: str) -> None:
    """The job's request goes out as httpx sends JSON (UTF-8), and its callback as Celery does."""
    job = rt.store.get(job_id)
    assert job is not None
    json.dumps(job.request, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if job.callback_json is not None:
        json.dumps(json.loads(job.callback_json), ensure_ascii=False).encode("utf-8")


@SETTINGS
@given(
    endpoint=st.sampled_from(["flux-dev", "flux-2-pro", "flux-pro-1.1-ultra-finetuned"]) | texts,
    request=text_requests,
    opts=text_options,
    unknown=mostly(st.just({}), st.dictionaries(texts, sometimes_json, max_size=2)),
)
def test_text_that_cannot_be_sent_is_refused_at_enqueue_by_every_way_in(
    runtime: Runtime, endpoint: Any, request: Any, opts: dict[str, Any], unknown: dict[str, Any]
) -> None:
    flush(runtime)
    # The Python API: a job that can be sent, or an error that can itself be shown
    got = outcome(lambda: enqueue(runtime, endpoint, request, **opts, **unknown))
    if isinstance(got, InvalidRequest):
        assert got.errors
        str(got).encode("utf-8")
    else:
        sendable(runtime, got)
    # The fluxq.enqueue task: the same verdict, and a refusal is recorded as a failed job
    flush(runtime)
    message = {**unknown, **opts, "endpoint": endpoint, "request": request}
    task_id = uuid.uuid4().hex
    by_task = outcome(lambda: enqueue_message(runtime, message, message_id=task_id))
    assert isinstance(by_task, InvalidRequest) == isinstance(got, InvalidRequest)
    if isinstance(by_task, InvalidRequest):
        job_id = refuse_message(runtime, message, by_task, message_id=task_id)
        job = runtime.store.get(job_id)
        assert job is not None
        assert job.reason is not None
    else:
        sendable(runtime, by_task)
