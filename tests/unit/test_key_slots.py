"""Why nothing moves: a key's slots told apart (tasks at BFL, POSTs being sent, holds for doubtful
POSTs) and the one-line reason a wait is blocked, in every place that shows them: ``fluxq status``,
``fluxq batch status`` (both paths), ``GET /v1/batches/{name}``, the metrics and ``WaitWatch``.
Real Redis throughout; holds are made with ``SlotLimiter.hold_doubtful``."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from rich.console import Console
from starlette.exceptions import StarletteDeprecationWarning
from typer.testing import CliRunner

from fluxq.api import create_app
from fluxq.cli import app
from fluxq.cli import batch as batch_cli
from fluxq.cli import waits as waits_module
from fluxq.cli.batch_view import (
    KeySlots,
    blocked_reason,
    clock,
    effective_cap_and_step,
    slots_line,
)
from fluxq.cli.fast_status import (
    DEFAULT_ACTIVE_CAP,
    DEFAULT_AIMD_INTERVAL_S,
    KeySettings,
    key_settings_from,
)
from fluxq.cli.waits import WaitWatch, read_key_slots
from fluxq.config.settings import Settings, load_settings
from fluxq.workers.metrics import SLOT_HOLDERS, registry_for
from fluxq.workers.state import keys
from fluxq.workers.state.batches import BatchStatus
from fluxq.workers.state.limiter import Caps, SlotLimiter, aimd_effective_cap
from fluxq.workers.state.store import JobStore
from tests.support.env import KEY, clean_env, scrub_env

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

LABEL = keys.key_label(SecretStr(KEY))
CAP = 4
runner = CliRunner()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    scrub_env(monkeypatch, tmp_path)


@pytest.fixture
def env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    return {
        "FLUXQ_REDIS_URL": redis_url,
        "BFL_API_KEY": KEY,
        "FLUXQ_OUTPUT_DIR": str(tmp_path / "out"),
        "FLUXQ_ACTIVE_CAP": str(CAP),
        "COLUMNS": "250",
    }


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Settings:
    return load_settings(
        _env_file=None,
        redis_url=redis_url,
        bfl_api_key=KEY,
        active_cap=CAP,
        output_dir=tmp_path / "out",
    )


@pytest.fixture
def limiter(redis_client: redis.Redis[str]) -> SlotLimiter:
    return SlotLimiter(redis_client, label=LABEL, caps=Caps(key_cap=CAP, group_caps={}))


def at_bfl(client: redis.Redis[str], limiter: SlotLimiter, job_id: str, batch: str) -> None:
    """A job of ``batch`` whose task runs at BFL: its record says submitted, it holds a lease."""
    client.hset(keys.job(job_id), mapping={"state": "submitted", "batch": batch})
    limiter.hold(job_id, keys.DEFAULT_GROUP, now_s=time.time())


def being_sent(client: redis.Redis[str], limiter: SlotLimiter, job_id: str, batch: str) -> None:
    client.hset(keys.job(job_id), mapping={"state": "admitted", "batch": batch})
    limiter.hold(job_id, keys.DEFAULT_GROUP, now_s=time.time())


def hold_doubtful(limiter: SlotLimiter, count: int, *, first_end_s: float) -> list[float]:
    """``count`` slots held for doubtful POSTs, ending a minute apart from ``first_end_s``."""
    ends = [first_end_s + 60.0 * i for i in range(count)]
    for i, end in enumerate(ends):
        limiter.hold_doubtful(f"gone.u{i}", keys.DEFAULT_GROUP, until_s=end)
    return ends


def queued_batch(client: redis.Redis[str], name: str, lines: int) -> None:
    """A batch whose lines all wait in its lane (the counters ``fluxq batch status`` reads)."""
    client.hset(keys.batch(name), mapping={"total": lines, "queued": lines, "priority": 2})
    client.zadd(keys.BATCHES, {name: time.time()})


def slots(**fields: Any) -> KeySlots:
    base: dict[str, Any] = {
        "key_cap": 24, "effective_cap": 24, "held": 24, "doubtful": 0,
        "doubtful_next_end": None, "doubtful_until": None, "pause_kind": None,
        "pause_detail": "", "pause_until": None, "next_cap_step": None, "refused_at": None,
        "refused_detail": "", "holders": (),
    }  # fmt: skip
    return KeySlots(**(base | fields))


# --- the rules and words, without Redis -------------------------------------------------------


def test_the_fast_path_loads_the_cap_rules_without_redis_py() -> None:
    # The fast path's words come from the limiter's own rules, in a module without redis-py
    import subprocess
    import sys

    code = "import sys, fluxq.cli.batch_view; print('redis' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("reduced_to", [1, 5, 12, 23])
@pytest.mark.parametrize("elapsed_s", [0.0, 4.9, 5.0, 27.5, 400.0])
def test_the_effective_cap_is_the_limiters_and_says_when_it_grows(
    reduced_to: int, elapsed_s: float
) -> None:
    now = 1_000.0
    state: dict[str, str | None] = {
        "reduced_to": str(reduced_to),
        "reduced_at": repr(now - elapsed_s),
    }
    effective, step = effective_cap_and_step(24, state, now, 5.0)
    assert effective == aimd_effective_cap(24, reduced_to, now - elapsed_s, now, 5.0)
    if effective == 24:
        assert step is None
    else:
        assert step is not None
        assert now < step <= now + 5.0
        assert aimd_effective_cap(24, reduced_to, now - elapsed_s, step, 5.0) == effective + 1


def test_a_full_key_with_doubtful_holds_resumes_when_the_first_hold_ends() -> None:
    first, last = time.time() + 300, time.time() + 900
    full = slots(doubtful=16, doubtful_next_end=first, doubtful_until=last)
    reason = blocked_reason(full, now_s=time.time())
    assert reason == (
        f"all 24 slots taken: 8 at BFL, 16 held for doubtful POSTs until {clock(last)}; "
        f"admission resumes by {clock(first)}, sooner if a task at BFL finishes"
    )
    assert slots_line(full) == (
        f"key slots: 8 at BFL, 16 held for doubtful POSTs until {clock(last)}, 0 free (cap 24)"
    )
    assert blocked_reason(dataclasses.replace(full, held=23), now_s=time.time()) is None


def test_after_a_429_the_cut_cap_and_not_a_hold_decides_when_admission_resumes() -> None:
    now = time.time()
    step, first = now + 3, now + 300
    # Cut to 4, 16 holds on top: 20 allowed, all taken. A hold ending frees nothing (the cut cap
    # allows one fewer then); the cap's next step does.
    cut = slots(
        effective_cap=4, held=20, doubtful=16, doubtful_next_end=first,
        doubtful_until=first, next_cap_step=step,
    )  # fmt: skip
    reason = blocked_reason(cut, now_s=now)
    assert reason is not None
    assert reason.startswith("all 20 slots allowed now taken (a 429 cut the cap of 24): ")
    assert reason.endswith(f"admission resumes by {clock(step)}, sooner if a task at BFL finishes")
    # Holds that fill the key's cap with the cut cap: both must happen, the later decides
    even = dataclasses.replace(cut, effective_cap=8, held=24)
    assert f"admission resumes by {clock(first)}" in (blocked_reason(even, now_s=now) or "")


def test_only_tasks_at_bfl_resume_when_one_finishes() -> None:
    assert blocked_reason(slots(), now_s=time.time()) == (
        "all 24 slots taken: 24 at BFL; admission resumes when a task at BFL finishes"
    )


def test_a_pause_is_the_reason_with_its_next_try() -> None:
    until = time.time() + 7
    limited = slots(held=3, pause_kind="retry_after", pause_detail="", pause_until=until)
    assert blocked_reason(limited, now_s=time.time()) == (
        f"admission is paused: rate limited (Retry-After); it goes on at {clock(until)}"
    )
    credits = slots(held=0, pause_kind="out_of_credits")
    assert "out of credits (402)" in (blocked_reason(credits, now_s=time.time()) or "")


# --- the fast path's settings -----------------------------------------------------------------


def test_the_fast_paths_defaults_are_the_settings() -> None:
    fields = Settings.model_fields
    assert fields["active_cap"].default == DEFAULT_ACTIVE_CAP
    assert fields["aimd_increase_interval_s"].default == DEFAULT_AIMD_INTERVAL_S


def test_the_fast_path_reads_the_key_settings_only_when_they_are_certain() -> None:
    label = keys.key_label(SecretStr("k"))
    assert key_settings_from({}) == KeySettings("nokey", 24, 5.0)
    assert key_settings_from({"BFL_API_KEY": "k"}) == KeySettings(label, 24, 5.0)
    assert key_settings_from({"FLUXQ_BFL_API_KEY": "k", "BFL_API_KEY": ""}) == KeySettings(
        label, 24, 5.0
    )
    got = key_settings_from({"FLUXQ_ACTIVE_CAP": "8", "FLUXQ_AIMD_INCREASE_INTERVAL_S": "2.5"})
    assert got == KeySettings("nokey", 8, 2.5)
    for environ in (
        {"BFL_API_KEY": "a", "FLUXQ_BFL_API_KEY": "b"},  # both: the settings choose
        {"bfl_api_key": "k"},  # another spelling
        {"BFL_API_KEY": "has space"},  # the settings refuse it
        {"FLUXQ_ACTIVE_CAP": "0"},
        {"FLUXQ_ACTIVE_CAP": "2.0"},
        {"FLUXQ_ACTIVE_CAP": "8", "fluxq_active_cap": "9"},
        {"FLUXQ_AIMD_INCREASE_INTERVAL_S": "1e3"},
        {"FLUXQ_AIMD_INCREASE_INTERVAL_S": "0"},
    ):
        assert key_settings_from(environ) is None, environ


# --- fluxq status -----------------------------------------------------------------------------


def test_status_tells_tasks_at_bfl_from_slots_held_for_doubtful_posts(
    env: dict[str, str], redis_client: redis.Redis[str], limiter: SlotLimiter
) -> None:
    ends = hold_doubtful(limiter, 3, first_end_s=time.time() + 120)
    at_bfl(redis_client, limiter, "day.l0", "day")
    queued_batch(redis_client, "default", 2)
    result = runner.invoke(app, ["status"], env=env)
    assert result.exit_code == 0, result.output
    assert (
        f"at BFL=1  held for doubtful POSTs=3 (until {clock(ends[-1])})  effective cap={CAP}  "
        "waiting=0  paused=no"
    ) in result.stdout
    assert "in flight" not in result.stdout
    assert (
        f"why nothing is admitted: all {CAP} slots taken: 1 at BFL, 3 held for doubtful POSTs "
        f"until {clock(ends[-1])}; held by batches: day 1; admission resumes by {clock(ends[0])}"
    ) in result.stdout
    # A slot free: no reason, and the numbers still apart
    limiter.release("gone.u0", keys.DEFAULT_GROUP)
    freed = runner.invoke(app, ["status"], env=env)
    assert "at BFL=1  held for doubtful POSTs=2 " in freed.stdout
    assert "why nothing is admitted" not in freed.stdout


# --- fluxq batch status, both paths -----------------------------------------------------------


def test_a_batch_blocked_by_other_batches_says_so_in_text_and_json(
    env: dict[str, str], redis_client: redis.Redis[str], limiter: SlotLimiter
) -> None:
    ends = hold_doubtful(limiter, 2, first_end_s=time.time() + 120)
    at_bfl(redis_client, limiter, "day.l0", "day")
    being_sent(redis_client, limiter, "day.l1", "day")
    queued_batch(redis_client, "night", 3)
    text = runner.invoke(app, ["batch", "status", "night"], env=env)
    assert text.exit_code == 0, text.output
    until = clock(ends[-1])
    assert f"  key slots: 1 at BFL, 1 being sent, 2 held for doubtful POSTs until {until}, " in (
        text.stdout
    )
    reason = (
        f"all {CAP} slots taken: 1 at BFL, 1 being sent, 2 held for doubtful POSTs until "
        f"{until}; held by other batches' jobs: day 2; admission resumes by {clock(ends[0])}, "
        "sooner if a task at BFL finishes"
    )
    assert f"  waiting: {reason}\n" in text.stdout
    data = json.loads(runner.invoke(app, ["batch", "status", "night", "--json"], env=env).stdout)
    assert data["wait_reason"] == reason
    assert data["slots"] == {
        "key_cap": CAP, "effective_cap": CAP, "allowed": CAP, "held": 4, "at_bfl": 1,
        "sending": 1, "doubtful": 2, "doubtful_next_end": ends[0], "doubtful_until": ends[1],
        "stale": 0, "by_batch": {"day": 2}, "pause": None, "pause_until": None,
    }  # fmt: skip
    assert data["counts"]["queued"] == 3  # the fields it had are all still there


def test_a_batch_whose_own_jobs_hold_slots_is_not_blocked(
    env: dict[str, str], redis_client: redis.Redis[str], limiter: SlotLimiter
) -> None:
    for i in range(CAP):
        at_bfl(redis_client, limiter, f"night.l{i}", "night")
    queued_batch(redis_client, "night", CAP + 2)
    redis_client.hset(keys.batch("night"), mapping={"queued": 2, "submitted": CAP})
    data = json.loads(runner.invoke(app, ["batch", "status", "night", "--json"], env=env).stdout)
    assert data["wait_reason"] is None
    assert (data["slots"]["at_bfl"], data["slots"]["doubtful"]) == (CAP, 0)


def run_status(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = clean_env()
    return subprocess.run(
        [sys.executable, "-P", "-X", "importtime", "-m", "fluxq", "batch", "status", *args],
        cwd=cwd, env=base | env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def answered_fast(run: subprocess.CompletedProcess[str]) -> bool:
    return "| typer" not in run.stderr


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_the_fast_path_says_the_same_with_holders_read_in_a_second_round_trip(
    env: dict[str, str],
    redis_client: redis.Redis[str],
    limiter: SlotLimiter,
    tmp_path: Path,
    as_json: bool,
) -> None:
    hold_doubtful(limiter, 3, first_end_s=time.time() + 120)
    at_bfl(redis_client, limiter, "day.l0", "day")
    queued_batch(redis_client, "night", 3)
    args = ["night", *(["--json"] if as_json else [])]
    fast = run_status(tmp_path, env, *args)
    normal = run_status(tmp_path, env | {"FLUXQ_NO_FAST_PATH": "1"}, *args)
    assert answered_fast(fast)
    assert not answered_fast(normal)
    assert (fast.returncode, fast.stdout) == (normal.returncode, normal.stdout) == (0, fast.stdout)
    assert "held by other batches' jobs: day 1" in fast.stdout
    # Clock times and a reason that looks like an emoji code print as they are on both paths
    redis_client.hset(keys.reasons("night"), ":thumbs_up: refused", 1)
    redis_client.hincrby(keys.batch("night"), "failed", 1)
    fast = run_status(tmp_path, env, *args)
    normal = run_status(tmp_path, env | {"FLUXQ_NO_FAST_PATH": "1"}, *args)
    assert answered_fast(fast)
    assert fast.stdout == normal.stdout
    assert ":thumbs_up: refused" in fast.stdout
    # A setting it cannot be sure of: the normal command line answers, with the same words
    odd = {k: v for k, v in env.items() if k != "FLUXQ_ACTIVE_CAP"} | {"fluxq_active_cap": "4"}
    fallback = run_status(tmp_path, odd, *args)
    assert not answered_fast(fallback)
    assert fallback.stdout == normal.stdout


# --- GET /v1/batches/{name} -------------------------------------------------------------------


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    client = TestClient(create_app(settings), raise_server_exceptions=False)
    with client:
        yield client


def test_the_api_shows_the_keys_slots_and_why_the_batch_waits(
    api: TestClient, env: dict[str, str], redis_client: redis.Redis[str], limiter: SlotLimiter
) -> None:
    ends = hold_doubtful(limiter, CAP, first_end_s=time.time() + 60)
    body = "".join(json.dumps({"id": f"l{i}", "prompt": f"p{i}"}) + "\n" for i in range(3))
    answer = api.post(
        "/v1/batches?name=night&endpoint=flux-dev",
        content=body,
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert answer.status_code == 201
    shown = api.get("/v1/batches/night").json()
    assert shown["counts"]["queued"] == 3  # every slot held: nothing was admitted
    assert shown["slots"]["doubtful"] == CAP
    assert shown["slots"]["doubtful_until"] == ends[-1]
    assert shown["slots"]["at_bfl"] == 0
    assert shown["wait_reason"] == (
        f"all {CAP} slots taken: 0 at BFL, {CAP} held for doubtful POSTs until "
        f"{clock(ends[-1])}; admission resumes by {clock(ends[0])}"
    )
    cli = json.loads(runner.invoke(app, ["batch", "status", "night", "--json"], env=env).stdout)
    assert (cli["slots"], cli["wait_reason"]) == (shown["slots"], shown["wait_reason"])


# --- metrics ----------------------------------------------------------------------------------


def test_metrics_tell_the_holders_apart_and_when_the_holds_end(
    settings: Settings, redis_client: redis.Redis[str], limiter: SlotLimiter
) -> None:
    ends = hold_doubtful(limiter, 2, first_end_s=time.time() + 120)
    at_bfl(redis_client, limiter, "day.l0", "day")
    being_sent(redis_client, limiter, "day.l1", "day")
    limiter.hold("expired-job", keys.DEFAULT_GROUP, now_s=time.time())  # no record: ended
    text = generate_latest(registry_for(settings, redis_client)).decode()
    found = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return found[(name, tuple(sorted((labels | {"key": LABEL}).items())))]

    holders = {h: value("fluxq_slots", holder=h) for h in SLOT_HOLDERS}
    assert holders == {"at_bfl": 1, "sending": 1, "doubtful_post": 2, "ended": 1}
    assert sum(holders.values()) == value("fluxq_leases_held") == 5
    ends_name = "fluxq_slots_doubtful_end_timestamp_seconds"
    assert value(ends_name, which="next") == pytest.approx(ends[0])
    assert value(ends_name, which="last") == pytest.approx(ends[1])
    assert "tasks admitted or at BFL" not in text  # the old, wrong description
    # No hold: no end time at all, and 0 held for doubtful POSTs
    for i in range(2):
        limiter.release(f"gone.u{i}", keys.DEFAULT_GROUP)
    again = generate_latest(registry_for(settings, redis_client)).decode()
    assert ends_name + "{" not in again
    assert f'fluxq_slots{{holder="doubtful_post",key="{LABEL}"}} 0.0' in again


# --- WaitWatch --------------------------------------------------------------------------------


class Said(list[str]):
    """What a WaitWatch said, in order."""


@pytest.fixture
def watch_of(
    settings: Settings, redis_client: redis.Redis[str]
) -> Iterator[Callable[..., tuple[WaitWatch, Said]]]:
    made: list[WaitWatch] = []

    def make(**options: Any) -> tuple[WaitWatch, Said]:
        said = Said()
        watch = WaitWatch(settings, redis_client, say=said.append, ping=lambda: 1, **options)
        made.append(watch)
        return watch, said

    yield make
    for watch in made:
        watch.close()


def test_a_watch_says_at_once_what_holds_the_slots_of_a_blocked_batch(
    watch_of: Callable[..., tuple[WaitWatch, Said]],
    redis_client: redis.Redis[str],
    limiter: SlotLimiter,
) -> None:
    ends = hold_doubtful(limiter, 3, first_end_s=time.time() + 90)
    at_bfl(redis_client, limiter, "day.l0", "day")
    queued_batch(redis_client, "night", 5)
    watch, said = watch_of(batch="night")
    found = watch.check()
    expected = (
        f"batch night waits: all {CAP} slots taken: 1 at BFL, 3 held for doubtful POSTs until "
        f"{clock(ends[-1])}; held by other batches' jobs: day 1; admission resumes by "
        f"{clock(ends[0])}, sooner if a task at BFL finishes"
    )
    assert found == [expected]
    assert said == [expected]
    assert watch.slots is not None
    assert watch.slots.doubtful == 3
    watch.check()
    assert said == [expected]  # said once
    # A slot frees and a line is admitted: nothing is blocked any more
    limiter.release("gone.u0", keys.DEFAULT_GROUP)
    redis_client.hset(keys.batch("night"), mapping={"queued": 4, "admitted": 1})
    assert watch.check() == []


def test_a_watch_explains_slots_held_by_posts_bfl_refused(
    watch_of: Callable[..., tuple[WaitWatch, Said]],
    redis_client: redis.Redis[str],
    limiter: SlotLimiter,
) -> None:
    refused_at = time.time() - 2
    for i in range(CAP):
        being_sent(redis_client, limiter, f"day.l{i}", "day")
    redis_client.hset(
        keys.cap_state(LABEL), mapping={"refused_at": refused_at, "refused_detail": "HTTP 503"}
    )
    queued_batch(redis_client, "night", 2)
    watch, _said = watch_of(batch="night")
    (found,) = watch.check()
    assert found.startswith(f"batch night waits: all {CAP} slots taken: 0 at BFL, {CAP} being sent")
    assert f"BFL refused a submit at {clock(refused_at)} (HTTP 503)" in found


def test_a_watch_whose_own_jobs_hold_the_slots_waits_until_nothing_moved(
    watch_of: Callable[..., tuple[WaitWatch, Said]],
    redis_client: redis.Redis[str],
    limiter: SlotLimiter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(waits_module, "STUCK_AFTER_S", 0.3)
    for i in range(CAP):
        at_bfl(redis_client, limiter, f"night.l{i}", "night")
    queued_batch(redis_client, "night", CAP + 3)
    redis_client.hset(keys.batch("night"), mapping={"queued": 3, "submitted": CAP})
    watch, said = watch_of(batch="night")
    assert watch.check() == []  # its own tasks run: that is progress, not a block
    time.sleep(0.4)
    (found,) = watch.check()
    assert found.startswith(f"batch night waits: all {CAP} slots taken: {CAP} at BFL")
    assert said == [found]
    # One of its tasks is ready: it moved, so the finding goes until nothing moves again
    redis_client.hset(keys.batch("night"), mapping={"submitted": CAP - 1, "ready": 1})
    assert watch.check() == []


def test_a_changing_reason_is_said_again_only_now_and_then(
    watch_of: Callable[..., tuple[WaitWatch, Said]],
    redis_client: redis.Redis[str],
    limiter: SlotLimiter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hold_doubtful(limiter, CAP, first_end_s=time.time() + 90)
    queued_batch(redis_client, "night", 2)
    watch, said = watch_of(batch="night")
    watch.check()
    # A hold ends and another takes its place, with a later end: the text changes at once
    limiter.release("gone.u0", keys.DEFAULT_GROUP)
    limiter.hold_doubtful("gone.v0", keys.DEFAULT_GROUP, until_s=time.time() + 900)
    changed = watch.check()
    assert len(said) == 1
    assert changed[0] != said[0]
    monkeypatch.setattr(waits_module, "RESAY_EVERY_S", 0.0)
    watch.check()
    assert said == [said[0], changed[0]]


def test_read_key_slots_counts_a_job_that_ended_apart(
    settings: Settings, redis_client: redis.Redis[str], limiter: SlotLimiter
) -> None:
    at_bfl(redis_client, limiter, "day.l0", "day")
    redis_client.hset(keys.job("day.l1"), mapping={"state": "done", "batch": "day"})
    limiter.hold("day.l1", keys.DEFAULT_GROUP, now_s=time.time())
    read = read_key_slots(redis_client, settings, now_s=time.time())
    assert (read.held, read.at_bfl, read.stale, read.by_batch) == (2, 1, 1, (("day", 1),))
    assert "1 ended, freed by the next sweep" in slots_line(read)


# --- fluxq batch status --watch and fluxq run's view ------------------------------------------


def test_a_quiet_watch_prints_a_change_within_10_s_of_the_last_line(
    redis_client: redis.Redis[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    queued_batch(redis_client, "night", 2)
    clock_s = [0.0]
    printed: list[tuple[float, str]] = []

    def sleep(seconds: float) -> None:
        clock_s[0] += seconds
        if clock_s[0] == 2.0:  # a line ends 2 s in
            redis_client.hset(keys.batch("night"), mapping={"queued": 1, "done": 1})
        if clock_s[0] == 30.0:  # the other ends much later
            redis_client.hset(keys.batch("night"), mapping={"queued": 0, "done": 2})

    fake_time = SimpleNamespace(sleep=sleep, monotonic=lambda: clock_s[0], time=time.time)
    monkeypatch.setattr(batch_cli, "time", fake_time)
    monkeypatch.setattr(batch_cli, "_say", lambda text: printed.append((clock_s[0], text)))
    watched = batch_cli._watch(JobStore(redis_client), "night", 1.0, as_json=False)
    assert watched.status.finished
    assert [(at, text.split(": ", 1)[1].split(",")[0]) for at, text in printed] == [
        (0.0, "0 done"),
        (10.0, "1 done"),  # was 30 s: a log showed one line in 14 s
        (30.0, "2 done"),
    ]


def test_the_live_view_shows_the_keys_slots_and_the_waits_findings() -> None:
    status = BatchStatus(
        batch="night", counts={"queued": 3}, total=3, priority=2, created_at=None,
        started_at=None, budget=None, committed=0.0, spent=0.0, paused=None, reasons={},
        images_per_minute=None, eta_s=None,
    )  # fmt: skip
    held = slots(key_cap=4, effective_cap=4, held=4, doubtful=4, doubtful_until=time.time() + 60)
    console = Console(record=True, width=250, file=io.StringIO())
    console.print(batch_cli._render(status, ["batch night waits: because"], held))
    text = console.export_text()
    assert "key slots: 0 at BFL, 4 held for doubtful POSTs until " in text
    assert "batch night waits: because" in text
