"""prepare_job and enqueue refuse every bad option with an InvalidRequest naming the field.

Names are unique per batch on disk: a name that normalises (``safe_name``) to one another job
of the batch holds is refused at enqueue, naming that job.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
from celery import signature
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.errors import InvalidRequest
from tasks.enqueue import enqueue, enqueue_message, prepare_job
from workers.files import safe_name
from workers.runtime import Runtime
from workers.state import keys

REQUEST = {"prompt": "a heron at dawn"}


@pytest.fixture
def rt(runtime: Runtime) -> Runtime:
    """The shared offline Runtime (tests/conftest.py): a real Redis, no broker, no BFL."""
    return runtime


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
