"""prepare_job and enqueue refuse every bad option with an InvalidRequest naming the field.

Names are unique per batch on disk: a name that normalises (``safe_name``) to one another job
of the batch holds is refused at enqueue, naming that job.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import signature
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fluxq.config.errors import InvalidRequest
from fluxq.config.settings import Settings, load_settings
from fluxq.tasks import lifecycle
from fluxq.tasks.enqueue import enqueue, enqueue_message, prepare_job, refuse_message
from fluxq.workers.dispatch import celery_runtime
from fluxq.workers.files import safe_name
from fluxq.workers.runtime import Runtime
from fluxq.workers.state import keys
from fluxq.workers.state.jobs import State

REQUEST = {"prompt": "a heron at dawn"}


@pytest.fixture
def rt(runtime: Runtime) -> Runtime:
    """The shared offline Runtime (tests/conftest.py): a real Redis, no broker, no BFL."""
    return runtime


@pytest.fixture
def runtime_settings(redis_url: str, tmp_path: Path) -> Settings:
    """Settings of a producer or worker on the test Redis: Celery's broker is that Redis too."""
    return load_settings(
        _env_file=None, bfl_api_key="offline-test-key", redis_url=redis_url,
        output_dir=tmp_path / "out",
    )  # fmt: skip


def refused(rt: Runtime, *args: Any, **options: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        prepare_job(rt, *args, **options)
    return caught.value


# --- Finding 1: one file per name ------------------------------------------------------------


def test_names_that_map_to_one_file_are_refused_naming_the_job_that_holds_it(rt: Runtime) -> None:
    # Given four jobs of one batch whose names all become the file stem "same"
    accepted: list[str] = []
    errors: list[InvalidRequest] = []
    for n, name in enumerate(["same", "same", "same.", "same_"], start=1):
        try:
            accepted.append(enqueue(rt, "flux-dev", REQUEST, job_id=f"j{n}", batch="b", name=name))
        except InvalidRequest as exc:
            errors.append(exc)
    # Then exactly one is accepted; each other is refused naming the field and the holder
    assert accepted == ["j1"]
    assert len(errors) == 3
    for exc in errors:
        assert exc.fields == ("name",)
        assert "j1" in str(exc)
    assert rt.redis.exists(keys.job("j2"), keys.job("j3"), keys.job("j4")) == 0
    assert rt.store.batch_counts("b")["total"] == 1
    # And the accepted job carries the normalised file stem
    job = rt.store.get("j1")
    assert job is not None
    assert job.name == "same"


def test_re_enqueueing_the_holder_stays_a_no_op_and_other_batches_are_separate(
    rt: Runtime,
) -> None:
    assert enqueue(rt, "flux-dev", REQUEST, job_id="j1", batch="b", name="same.") == "j1"
    assert enqueue(rt, "flux-dev", REQUEST, job_id="j1", batch="b", name="same.") == "j1"
    assert enqueue(rt, "flux-dev", REQUEST, job_id="j2", batch="other", name="same") == "j2"
    assert rt.store.batch_counts("b")["total"] == 1
    assert rt.store.batch_counts("other")["total"] == 1


def test_a_job_without_a_name_holds_its_id_as_its_name(rt: Runtime) -> None:
    enqueue(rt, "flux-dev", REQUEST, job_id="fox-01", batch="b")
    with pytest.raises(InvalidRequest, match="fox-01") as caught:
        enqueue(rt, "flux-dev", REQUEST, job_id="j2", batch="b", name="fox-01")
    assert caught.value.fields == ("name",)


def test_names_differing_only_in_case_are_one_file_on_case_insensitive_disks(
    rt: Runtime,
) -> None:
    enqueue(rt, "flux-dev", REQUEST, job_id="j1", batch="b", name="Heron")
    with pytest.raises(InvalidRequest, match="j1") as caught:
        enqueue(rt, "flux-dev", REQUEST, job_id="j2", batch="b", name="heron")
    assert caught.value.fields == ("name",)


def test_the_store_refuses_a_taken_name_in_its_script(rt: Runtime) -> None:
    # Given two validated jobs of one batch with the same file stem (a race past any pre-check)
    first = prepare_job(rt, "flux-dev", REQUEST, job_id="j1", batch="b", name="same")
    second = prepare_job(rt, "flux-dev", REQUEST, job_id="j2", batch="b", name="same_")
    assert rt.store.enqueue(first, now_s=1.0)
    # Then the script refuses the second one, and nothing of it is written
    with pytest.raises(InvalidRequest, match="j1") as caught:
        rt.store.enqueue(second, now_s=1.0)
    assert caught.value.fields == ("name",)
    assert rt.store.get("j2") is None
    assert rt.redis.hgetall(keys.names("b")) == {"same": "j1"}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,130}[._\n]?", fullmatch=True))
def test_an_accepted_job_id_or_batch_is_its_own_file_name(text: str) -> None:
    # A job without a name is saved under its id, and a batch is a directory: both must be
    # exactly what safe_name makes of them, or two ids could share one file.
    fake = Runtime.__new__(Runtime)
    fake.label = "nokey"
    fake.settings = Settings()  # its catalog: no Redis, no key
    for field in ("job_id", "batch"):
        if safe_name(text) == text:
            continue  # accepted or not, it cannot collide with another id
        with pytest.raises(InvalidRequest) as caught:
            prepare_job(fake, "flux-dev", REQUEST, **{field: text})
        assert caught.value.fields == (field,)


# --- Finding 2: validation holes -------------------------------------------------------------


@pytest.mark.parametrize("field", ["job_id", "batch", "name"])
def test_a_trailing_newline_is_refused(rt: Runtime, field: str) -> None:
    exc = refused(rt, "flux-dev", REQUEST, **{field: "abc\n"})
    assert exc.fields == (field,)


@pytest.mark.parametrize(
    ("args", "options", "field"),
    [
        (("flux-dev", "a prompt"), {}, "request"),
        (("flux-dev", None), {}, "request"),
        (("flux-dev", ["prompt"]), {}, "request"),
        ((5, REQUEST), {}, "endpoint"),
        ((["flux-dev"], REQUEST), {}, "endpoint"),
        (("flux-dev", REQUEST), {"priority": "7"}, "priority"),
        (("flux-dev", REQUEST), {"priority": 7.5}, "priority"),
        (("flux-dev", REQUEST), {"priority": True}, "priority"),
        (("flux-dev", REQUEST), {"priority": "5"}, "priority"),
        (("flux-dev", REQUEST), {"priority": 10}, "priority"),
        (("flux-dev", REQUEST), {"job_id": 123}, "job_id"),
        (("flux-dev", REQUEST), {"job_id": ""}, "job_id"),
        (("flux-dev", REQUEST), {"batch": 42}, "batch"),
        (("flux-dev", REQUEST), {"batch": ["b"]}, "batch"),
        (("flux-dev", REQUEST), {"webhook_url": 5}, "webhook_url"),
        (("flux-dev", REQUEST), {"name": 7}, "name"),
        (("flux-dev", REQUEST), {"priorty": 3}, "priorty"),
    ],
)
def test_a_wrong_type_or_unknown_option_names_the_field(
    rt: Runtime, args: tuple[Any, ...], options: dict[str, Any], field: str
) -> None:
    exc = refused(rt, *args, **options)
    assert field in exc.fields
    # enqueue (the Python API) and the fluxq.enqueue task say the same
    with pytest.raises(InvalidRequest) as caught:
        enqueue(rt, *args, **options)
    assert field in caught.value.fields
    message = {"endpoint": args[0], "request": args[1], **options}
    with pytest.raises(InvalidRequest) as caught:
        enqueue_message(rt, message, message_id="msg-1")
    assert field in caught.value.fields
    assert rt.redis.exists(keys.job("msg-1")) == 0


def test_every_bad_field_is_named_at_once(rt: Runtime) -> None:
    exc = refused(rt, "flux-dev", REQUEST, job_id=1, batch=7, priority="x", colour="red")
    assert set(exc.fields) == {"job_id", "batch", "priority", "colour"}


@pytest.mark.parametrize(
    "url",
    [
        "http://",
        "http:///etc/passwd",
        "https://",
        "ftp://files.example.com/hook",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "//hooks.example.com/fluxq",
        "hooks.example.com/fluxq",
        "http://user:secret@hooks.example.com/fluxq",
        "http://user@hooks.example.com/fluxq",
        "http://hooks.example.com:99999/fluxq",
        "http://hooks.example.com:port/fluxq",
        "https://xn--/fluxq",
        "http://[zz]/fluxq",
        "http://hooks example.com/fluxq",
        "http://hooks.example.com/fluxq\n",
        "https://hooks.example.com/" + "a" * 2100,
        "",
    ],
)
def test_webhook_urls_must_be_absolute_http_urls_with_a_host_and_no_userinfo(
    rt: Runtime, url: str
) -> None:
    exc = refused(rt, "flux-dev", REQUEST, webhook_url=url)
    assert exc.fields == ("webhook_url",)
    assert url not in str(exc) or not url  # a URL may carry a token: not echoed back


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/fluxq?token=x",
        "http://hooks.example.com:8080/fluxq",
        "HTTPS://Hooks.Example.com/",
        "http://127.0.0.1:9/hook",  # refused or not when delivered, by the guard's setting
        "http://[2606:4700::1111]/hook",
    ],
)
def test_good_webhook_urls_are_accepted(rt: Runtime, url: str) -> None:
    job = prepare_job(rt, "flux-dev", REQUEST, webhook_url=url)
    assert job.webhook_url == url


@pytest.mark.parametrize(
    "callback",
    [
        {"task": 5},
        {"task": ""},
        {"task": None},
        {"args": []},
        {"task": "my app.on image"},
        {"task": "myapp.on_image\n"},
        {"task": "myapp.on_image", "args": "x"},
        {"task": "myapp.on_image", "args": {"a": 1}},
        {"task": "myapp.on_image", "kwargs": []},
        {"task": "myapp.on_image", "kwargs": None},
        {"task": "myapp.on_image", "options": 3},
        "myapp.on_image",
        ["myapp.on_image"],
        5,
    ],
)
def test_a_callback_must_be_a_celery_signature_shape(rt: Runtime, callback: object) -> None:
    exc = refused(rt, "flux-dev", REQUEST, callback=callback)
    assert exc.fields == ("callback",)


@pytest.mark.parametrize(
    "callback",
    [
        {"task": "myapp.on_image", "args": [], "kwargs": {}, "options": {}},
        {"task": "myapp.tasks.on_image"},
        signature("myapp.on_image", args=(1,), kwargs={"k": 2}, queue="q"),
    ],
)
def test_callbacks_of_signature_shape_are_accepted(rt: Runtime, callback: object) -> None:
    assert prepare_job(rt, "flux-dev", REQUEST, callback=callback).callback_json


def test_a_message_without_a_job_id_uses_its_task_id_so_a_redelivery_is_one_job(
    rt: Runtime, redis_client: redis.Redis[str]
) -> None:
    message = {"endpoint": "flux-dev", "request": REQUEST, "batch": "svc", "job_id": None}
    assert enqueue_message(rt, message, message_id="msg-1") == "msg-1"
    assert enqueue_message(rt, message, message_id="msg-1") == "msg-1"
    assert rt.store.batch_counts("svc")["total"] == 1
    with pytest.raises(InvalidRequest) as caught:
        enqueue_message(rt, {"endpoint": "flux-dev"}, message_id="msg-2")
    assert caught.value.fields == ("request",)


def test_a_null_option_means_not_given(rt: Runtime) -> None:
    # JSON from another service often sends null for what it leaves out (the schema allows it)
    job_id = enqueue(rt, "flux-dev", REQUEST, job_id=None, batch=None, name=None, priority=None)
    job = rt.store.get(job_id)
    assert job is not None
    assert (job.batch, job.priority, job.name) == ("default", 5, job_id)


# --- Strings that cannot be sent: a lone surrogate ---------------------------------------------
# JSON's "\ud800" escape is valid JSON and reads as a Python str holding a lone surrogate, which
# does not encode as UTF-8: httpx would fail to send it at submit, after the job was queued.

HERON = json.loads('{"prompt": "a heron \\ud800"}')
"""What a service's JSON ``{"prompt": "a heron \\ud800"}`` reads as: a lone surrogate."""


def no_job_anywhere(rt: Runtime) -> None:
    assert list(rt.redis.scan_iter("fluxq:job:*")) == []
    assert rt.store.batch_counts("default")["total"] == 0


@pytest.mark.parametrize(
    ("endpoint", "request_", "field"),
    [
        ("flux-dev", HERON, "prompt"),
        ("flux-dev", {"prompt": "a heron", "image_prompt": "\udfff"}, "image_prompt"),
        ("flux-2-pro", {"prompt": "a heron", "input_image_2": "x\udc80y"}, "input_image_2"),
        ("flux-kontext-max", {"prompt": "\ud83d"}, "prompt"),
        (
            "flux-pro-1.1-ultra-finetuned",
            {"prompt": "a heron", "finetune_id": "ft-\udcff"},
            "finetune_id",
        ),
    ],
)
def test_a_string_that_is_not_utf8_is_refused_at_enqueue_naming_its_field(
    rt: Runtime, endpoint: str, request_: dict[str, Any], field: str
) -> None:
    exc = refused(rt, endpoint, request_)
    assert exc.fields == (field,)
    assert "lone surrogate" in str(exc)
    str(exc).encode("utf-8")  # the error itself can be printed, logged and sent
    with pytest.raises(InvalidRequest) as caught:
        enqueue(rt, endpoint, request_, job_id="j1")
    assert caught.value.fields == (field,)
    no_job_anywhere(rt)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        ({"prompt": "a heron", "colour\ud800": "red"}, "colour\\ud800"),  # a key: named escaped
        ({"prompt": "a heron", "output_format": "png\udfff"}, "output_format"),
        ({"prompt": "a heron", "webhook_url": "https://hooks.example.com/\ud800"}, "webhook_url"),
    ],
)
def test_a_lone_surrogate_pydantic_cannot_read_is_named_the_same_way(
    rt: Runtime, request_: dict[str, Any], field: str
) -> None:
    exc = refused(rt, "flux-dev", request_)
    assert exc.fields == (field,)
    assert "lone surrogate" in str(exc)
    str(exc).encode("utf-8")


def test_a_surrogate_pair_from_json_is_one_character_and_is_accepted(rt: Runtime) -> None:
    request_ = json.loads('{"prompt": "a heron \\ud83e\\udd86 at dawn"}')
    job = prepare_job(rt, "flux-dev", request_)
    assert json.loads(job.request_json) == {"prompt": "a heron \U0001f986 at dawn"}


def test_it_is_named_with_every_other_bad_field(rt: Runtime) -> None:
    exc = refused(rt, "flux-dev", HERON, priority=11, batch="no spaces")
    assert set(exc.fields) == {"prompt", "priority", "batch"}


@pytest.mark.parametrize(
    ("callback", "field"),
    [
        ({"task": "myapp.on_image", "args": ["\ud800"]}, "callback.args.0"),
        ({"task": "myapp.on_image", "kwargs": {"note": "a \udfff"}}, "callback.kwargs.note"),
        ({"task": "myapp.on_image", "options": {"queue": "q\ud800"}}, "callback.options.queue"),
        ({"task": "myapp.on_image", "kwargs": {"k\ud800": 1}}, "callback.kwargs.k\\ud800"),
    ],
)
def test_a_callback_holding_a_lone_surrogate_is_refused_naming_where(
    rt: Runtime, callback: dict[str, Any], field: str
) -> None:
    exc = refused(rt, "flux-dev", REQUEST, callback=callback)
    assert exc.fields == (field,)
    str(exc).encode("utf-8")


def test_an_unknown_option_whose_name_is_not_utf8_is_named_escaped(rt: Runtime) -> None:
    exc = refused(rt, "flux-dev", REQUEST, **{"colour\ud800": "red"})
    assert exc.fields == ("colour\\ud800",)
    str(exc).encode("utf-8")


def test_the_enqueue_task_refuses_it_as_a_failed_job_naming_the_field(
    runtime_settings: Settings,
) -> None:
    # Given the fluxq.enqueue task as a worker runs it, and a message as a service sends it
    rt = celery_runtime(runtime_settings)
    task = rt.dispatch.app.tasks["fluxq.enqueue"]  # type: ignore[attr-defined]
    kwargs = {"endpoint": "flux-dev", "request": HERON, "batch": "svc"}
    try:
        # When it runs
        assert task.apply(kwargs=kwargs, task_id="msg-1").get() == "msg-1"
        # Then the message is a failed job under its task id, the reason naming the field
        job = rt.store.get("msg-1")
        assert job is not None
        assert job.state is State.FAILED
        assert job.reason is not None
        assert "prompt" in job.reason
        assert "lone surrogate" in job.reason
        assert rt.store.batch_counts("svc")["failed"] == 1
        assert rt.store.batch_counts("svc")["queued"] == 0
        # And nothing was sent to BFL: no submit message went to the broker
        assert rt.redis.llen("fluxq.submit") == 0
    finally:
        rt.close()


def test_a_refused_message_whose_endpoint_is_not_utf8_is_still_recorded(rt: Runtime) -> None:
    message = {"endpoint": "flux-dev\ud800", "request": REQUEST, "colour\udfff": 1}
    with pytest.raises(InvalidRequest) as caught:
        enqueue_message(rt, message, message_id="msg-2")
    assert refuse_message(rt, message, caught.value, message_id="msg-2") == "msg-2"
    job = rt.store.get("msg-2")
    assert job is not None
    assert job.state is State.FAILED
    assert job.reason is not None
    assert "endpoint" in job.reason
    assert "colour\\udfff" in job.reason


# --- A callback without options ----------------------------------------------------------------


def test_a_callback_without_options_is_sent_when_the_job_ends(
    runtime_settings: Settings, redis_client: redis.Redis[str]
) -> None:
    # Given a job enqueued with a signature's dict that gives only its task (no options, no
    # args, no kwargs), on a runtime that sends callbacks through Celery as workers do
    rt = celery_runtime(runtime_settings)
    try:
        job_id = enqueue(rt, "flux-dev", REQUEST, callback={"task": "some.service.done"})
        job = rt.store.get(job_id)
        assert job is not None
        redis_client.delete("fluxq.control")
        # When the job ends (the completion path: lifecycle.end -> notify_terminal)
        assert lifecycle.fail(rt, job, "moderated")
    finally:
        rt.close()
    # Then the callback task was sent with the job's outcome
    messages = [json.loads(raw) for raw in redis_client.lrange("fluxq.control", 0, -1)]
    sent = [m for m in messages if m["headers"]["task"] == "some.service.done"]
    assert len(sent) == 1, messages
    args, kwargs, _ = json.loads(base64.b64decode(sent[0]["body"]))
    assert args == []
    assert kwargs["fluxq_job"]["job_id"] == job_id
    assert kwargs["fluxq_job"]["state"] == "failed"


def test_a_stored_callback_lacking_options_is_completed_when_it_is_sent(
    runtime_settings: Settings, redis_client: redis.Redis[str]
) -> None:
    # A job enqueued before callbacks were stored whole still gets its callback
    rt = celery_runtime(runtime_settings)
    try:
        job_id = enqueue(rt, "flux-dev", REQUEST, callback={"task": "some.service.done"})
        rt.redis.hset(keys.job(job_id), "callback_json", '{"task": "some.service.done"}')
        job = rt.store.get(job_id)
        assert job is not None
        redis_client.delete("fluxq.control")
        assert lifecycle.fail(rt, job, "moderated")
    finally:
        rt.close()
    messages = [json.loads(raw) for raw in redis_client.lrange("fluxq.control", 0, -1)]
    assert [m["headers"]["task"] for m in messages].count("some.service.done") == 1


def test_a_callback_is_stored_with_args_kwargs_and_options(rt: Runtime) -> None:
    job = prepare_job(rt, "flux-dev", REQUEST, callback={"task": "some.service.done"})
    assert job.callback_json is not None
    assert json.loads(job.callback_json) == {
        "task": "some.service.done",
        "args": [],
        "kwargs": {},
        "options": {},
    }


# --- a prompt longer than the catalog's bound, on every way in --------------------------------


def test_a_20_mb_prompt_is_refused_at_enqueue_naming_prompt_and_its_bound(rt: Runtime) -> None:
    from fluxq.config.catalog import CATALOG  # the bound is catalog data, per endpoint

    bound = CATALOG["flux-dev"].prompt_max_chars
    assert bound is not None
    request = {"prompt": "x" * 20_000_000}
    exc = refused(rt, "flux-dev", request)
    assert exc.fields == ("prompt",)
    assert str(bound) in str(exc)
    with pytest.raises(InvalidRequest) as caught:
        enqueue_message(rt, {"endpoint": "flux-dev", "request": request}, message_id="msg-long")
    assert caught.value.fields == ("prompt",)
    assert rt.redis.exists(keys.job("msg-long")) == 0
    # A prompt at the bound is accepted
    prepare_job(rt, "flux-dev", {"prompt": "x" * bound})
