"""``fluxq batch …`` and ``fluxq cancel`` against a real Redis, no worker: what a user types and
sees, and what lands in Redis (admitted jobs only get a Celery message nobody consumes)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import Result
from typer.testing import CliRunner

from fluxq.cli import app
from fluxq.cli import batch as batch_cli
from fluxq.config.settings import load_settings
from fluxq.simulator import SimConfig, SimulatorServer
from fluxq.tasks import lifecycle
from fluxq.testing import InlineDispatcher
from fluxq.workers.poll_schedule import LogNormal
from fluxq.workers.runtime import Runtime, build_runtime
from fluxq.workers.state import keys
from fluxq.workers.state.jobs import State
from fluxq.workers.state.latency_book import PRIOR_SIGMA
from tests.support.env import KEY, scrub_env
from tests.support.simulator import simulator_fixture
from tests.unit.test_cli_failures import one_line_failure as one_line_process_failure
from tests.unit.test_cli_failures import run_fluxq

runner = CliRunner()
CREDITS = 4.0  # flux-pro-1.1, per image


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    scrub_env(monkeypatch, tmp_path)


@pytest.fixture
def env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    return {
        "FLUXQ_REDIS_URL": redis_url,
        "BFL_API_KEY": KEY,
        "FLUXQ_OUTPUT_DIR": str(tmp_path / "out"),
        "FLUXQ_ACTIVE_CAP": "2",
        "COLUMNS": "200",
    }


@pytest.fixture
def rt(redis_url: str, tmp_path: Path) -> Iterator[Runtime]:
    """A Runtime on the same Redis and key as the commands, to look at and act on jobs."""
    settings = load_settings(bfl_api_key=KEY, output_dir=tmp_path / "out", redis_url=redis_url)
    runtime = build_runtime(settings, redis_url=redis_url, dispatch=InlineDispatcher())
    yield runtime
    runtime.close()


def fluxq(env: dict[str, str], *args: str) -> Result:
    return runner.invoke(app, list(args), env=env)


def shown(result: Result) -> str:
    return f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"


def one_line_failure(result: Result) -> str:
    assert result.exit_code == 2, shown(result)
    assert result.exception is None or isinstance(result.exception, SystemExit), shown(result)
    line = result.stderr.rstrip("\n")
    assert line.startswith("fluxq: "), shown(result)
    assert "\n" not in line, shown(result)
    return line


def request(i: int) -> dict[str, Any]:
    return {"id": f"l{i}", "prompt": f"a heron at dawn, take {i}", "width": 512, "height": 512}


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    text = "".join((item if isinstance(item, str) else json.dumps(item)) + "\n" for item in lines)
    path.write_text(text, encoding="utf-8")
    return path


def good_file(tmp_path: Path, count: int = 5) -> Path:
    return write_jsonl(tmp_path / "night.jsonl", [request(i) for i in range(count)])


def submit(env: dict[str, str], path: Path, name: str = "night", *extra: str) -> Result:
    return fluxq(env, "batch", "submit", str(path), "--endpoint", "flux-pro-1.1", "--name", name,
                 *extra)  # fmt: skip


def status_json(env: dict[str, str], name: str = "night") -> dict[str, Any]:
    result = fluxq(env, "batch", "status", name, "--json")
    assert result.exit_code == 0, shown(result)
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def traces(client: redis.Redis[str], name: str) -> list[str]:
    """Every key of Redis that names the batch."""
    return [key for key in client.keys("*") if name in key]


def test_submit_puts_every_line_in_redis_and_a_rerun_adds_none(
    env: dict[str, str], tmp_path: Path, rt: Runtime
) -> None:
    path = good_file(tmp_path)
    result = submit(env, path)
    assert result.exit_code == 0, shown(result)
    assert "added 5, already there 0" in result.stdout
    assert "conflicts 0" in result.stdout
    assert "20 credits = $0.20" in result.stdout
    assert "fluxq batch status night --watch" in result.stdout
    assert "fluxq batch report night" in result.stdout
    data = status_json(env)
    assert data["total"] == 5
    assert data["counts"]["queued"] + data["counts"]["admitted"] == 5
    assert data["counts"]["admitted"] == 2  # FLUXQ_ACTIVE_CAP
    assert data["waiting"] == 5
    assert data["finished"] is False
    assert data["priority"] == 2
    lane = keys.lane(rt.label, keys.DEFAULT_GROUP, "night")
    assert rt.redis.llen(lane) == 3
    # The same command again adds nothing
    again = submit(env, path)
    assert again.exit_code == 0, shown(again)
    assert "added 0, already there 5 (a re-run adds only what is missing)" in again.stdout
    assert status_json(env)["total"] == 5
    assert rt.redis.llen(lane) == 3


def test_text_status_shows_counts_credits_and_the_budget(
    env: dict[str, str], tmp_path: Path
) -> None:
    assert submit(env, good_file(tmp_path), "night", "--budget", "100").exit_code == 0
    result = fluxq(env, "batch", "status", "night")
    assert result.exit_code == 0, shown(result)
    assert "batch night: 5 lines, priority 2" in result.stdout
    assert "queued 3  admitted 2  submitted 0" in result.stdout
    assert "credits: spent 0, committed 8, budget 100" in result.stdout


def test_a_file_with_bad_lines_is_refused_whole_naming_each(
    env: dict[str, str], tmp_path: Path, rt: Runtime
) -> None:
    lines: list[Any] = [request(0), "{not json", request(2), {**request(3), "width": "wide"}]
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    result = submit(env, path)
    assert result.exit_code == 2, shown(result)
    err = result.stderr
    assert "line 2: json: not JSON" in err
    assert "line 4: width:" in err or "line 4: body.width:" in err, err
    rejected = tmp_path / "out" / "night" / "rejected.jsonl"
    assert (
        f"fluxq: nothing enqueued: 2 of 4 lines are invalid (--skip-invalid enqueues the rest "
        f"and writes them to {rejected})" in err
    )
    assert "Traceback" not in result.output
    assert traces(rt.redis, "night") == []
    assert not rejected.exists()


def test_more_bad_lines_than_shown_are_counted(env: dict[str, str], tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", ["[]"] * 30)
    result = submit(env, path)
    assert result.exit_code == 2, shown(result)
    assert "line 20: line: must be a JSON object, not an array" in result.stderr
    assert "line 21:" not in result.stderr
    assert "… and 10 more bad lines" in result.stderr
    assert "nothing enqueued: 30 of 30 lines are invalid" in result.stderr


def test_skip_invalid_enqueues_the_rest_and_writes_the_bad_lines(
    env: dict[str, str], tmp_path: Path
) -> None:
    lines: list[Any] = [request(0), "{not json", request(2), {**request(3), "width": "wide"}]
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    out = tmp_path / "elsewhere"
    result = submit(env, path, "night", "--skip-invalid", "--out", str(out))
    assert result.exit_code == 0, shown(result)
    assert "added 2" in result.stdout
    rejected = out / "rejected.jsonl"
    assert f"skipped 2 invalid lines: written to {rejected}" in result.stderr
    records = [json.loads(line) for line in rejected.read_text().splitlines()]
    assert [record["line"] for record in records] == [2, 4]
    assert status_json(env)["total"] == 2


def test_a_line_that_is_not_utf8_is_named_and_skip_invalid_writes_it(
    env: dict[str, str], tmp_path: Path, rt: Runtime
) -> None:
    # A JSON \ud800 escape is valid JSON but a lone surrogate, which cannot be sent to BFL
    bad = '{"id": "l1", "prompt": "a heron \\ud800", "width": 512, "height": 512}'
    path = write_jsonl(tmp_path / "bad.jsonl", [request(0), bad, request(2)])
    refused = submit(env, path)
    assert refused.exit_code == 2, shown(refused)
    assert "line 2: prompt: holds a lone surrogate" in refused.stderr
    assert traces(rt.redis, "night") == []
    out = tmp_path / "elsewhere"
    result = submit(env, path, "night", "--skip-invalid", "--out", str(out))
    assert result.exit_code == 0, shown(result)
    assert "added 2" in result.stdout
    records = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert [(r["line"], [e["field"] for e in r["errors"]]) for r in records] == [(2, ["prompt"])]
    assert records[0]["text"] == bad
    assert status_json(env)["total"] == 2


def test_dry_run_prints_the_cost_and_enqueues_nothing(
    env: dict[str, str], tmp_path: Path, rt: Runtime
) -> None:
    result = submit(env, good_file(tmp_path, 7), "night", "--dry-run")
    assert result.exit_code == 0, shown(result)
    assert "jobs: 7 (flux-pro-1.1 7)" in result.stdout
    assert "cost: 28 credits = $0.28 (exact for the documented prices)" in result.stdout
    mean = LogNormal.from_median(5.0, PRIOR_SIGMA).mean_s  # FLUXQ_POLL_PRIOR_MEDIAN_S
    assert f"time: at least about {7 * mean / 2:.0f} s (mean generation time assumed" in (
        result.stdout
    )
    assert "assumes all 2 slots stay busy" in result.stdout
    assert "dry run: nothing enqueued (7 lines checked)" in result.stdout
    assert traces(rt.redis, "night") == []
    assert rt.redis.keys("fluxq:lane*") == []
    assert rt.redis.keys("fluxq:job:*") == []
    assert one_line_failure(fluxq(env, "batch", "status", "night"))
    # Once generation times are observed, the estimate uses them
    for _ in range(8):
        rt.latency.observe("flux-pro-1.1", "default", 0.9, 1.1)
    learned = submit(env, good_file(tmp_path, 7), "night", "--dry-run")
    assert "(mean generation time learned so far;" in learned.stdout


def test_dry_run_says_per_megapixel_prices_are_an_estimate(
    env: dict[str, str], tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "f2.jsonl", [{"prompt": "x", "width": 1024, "height": 1024}])
    result = fluxq(env, "batch", "submit", str(path), "--endpoint", "flux-2-pro", "--name", "f2",
                   "--dry-run")  # fmt: skip
    assert result.exit_code == 0, shown(result)
    assert "an estimate: per-megapixel prices" in result.stdout


def test_dry_run_marks_unpriced_jobs_and_prices_declared_ones(
    env: dict[str, str], tmp_path: Path
) -> None:
    declared = tmp_path / "endpoints.toml"
    declared.write_text(
        '[[endpoint]]\npath = "acme/upscale"\ncap = "default"\nmedia = "image"\n'
        "price = { per_image = 3 }\n",
        encoding="utf-8",
    )
    lines = [
        {"id": "a", "endpoint": "flux-tools/erase-v1", "image": "aGVsbG8=", "prompt": "no car"},
        {"id": "b", "endpoint": "flux-tools/erase-v1", "image": "aGVsbG8=", "prompt": "no sign"},
        {"id": "c", "endpoint": "acme/upscale", "image": "aGVsbG8=", "scale": 4},
        {"id": "d", "endpoint": "flux-pro-1.1", "prompt": "a heron"},
    ]
    path = write_jsonl(tmp_path / "mixed.jsonl", lines)
    result = fluxq(
        {**env, "FLUXQ_ENDPOINTS_FILE": str(declared)},
        "batch", "submit", str(path), "--name", "mixed", "--dry-run",
    )  # fmt: skip
    assert result.exit_code == 0, shown(result)
    assert "jobs: 4 (acme/upscale 1, flux-pro-1.1 1, flux-tools/erase-v1 2)" in result.stdout
    assert "cost: 7 credits = $0.07 (an estimate: unpriced jobs count 0)" in result.stdout
    assert "unpriced: 2 jobs (flux-tools/erase-v1) have no known price" in result.stdout
    # Without the file, the declared endpoint is unknown: the line is named, nothing goes in
    refused = fluxq(env, "batch", "submit", str(path), "--name", "mixed", "--dry-run")
    assert refused.exit_code == 2, shown(refused)
    assert "unknown endpoint 'acme/upscale'" in refused.stdout + refused.stderr


def test_a_csv_file_with_a_param_for_every_row(env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("id,prompt,seed\nr1,a fox,1\nr2,a crow,2\nr3,an owl,3\n", encoding="utf-8")
    result = submit(env, path, "rows", "--param", "width=768", "--param", "height=512")
    assert result.exit_code == 0, shown(result)
    assert "added 3" in result.stdout
    assert status_json(env, "rows")["total"] == 3


def test_list_shows_every_batch(env: dict[str, str], tmp_path: Path) -> None:
    assert submit(env, good_file(tmp_path), "night").exit_code == 0
    assert submit(env, good_file(tmp_path, 2), "day").exit_code == 0
    result = fluxq(env, "batch", "list")
    assert result.exit_code == 0, shown(result)
    assert "night" in result.stdout
    assert "day" in result.stdout
    listed = json.loads(fluxq(env, "batch", "list", "--json").stdout)
    assert [(b["batch"], b["total"], b["waiting"]) for b in listed] == [
        ("night", 5, 5),
        ("day", 2, 2),
    ]


def test_cancel_then_cancel_again_cancels_nothing(env: dict[str, str], tmp_path: Path) -> None:
    assert submit(env, good_file(tmp_path), "night").exit_code == 0
    first = fluxq(env, "batch", "cancel", "night")
    assert first.exit_code == 0, shown(first)
    assert (
        "cancelled 3 waiting lines and 0 queued jobs; jobs already sent finish and are saved"
        in first.stdout
    )
    second = fluxq(env, "batch", "cancel", "night")
    assert second.exit_code == 0, shown(second)
    assert "cancelled 0 waiting lines and 0 queued jobs" in second.stdout
    data = status_json(env)
    assert data["counts"]["cancelled"] == 3
    assert data["paused"] == "cancelled"
    assert "cancelled (jobs already sent" in fluxq(env, "batch", "status", "night").stdout
    # A cancelled batch takes no more lines
    assert "was cancelled" in one_line_failure(submit(env, good_file(tmp_path), "night"))


def test_report_has_a_row_per_line_as_jsonl_and_csv(env: dict[str, str], tmp_path: Path) -> None:
    assert submit(env, good_file(tmp_path, 6), "night").exit_code == 0
    result = fluxq(env, "batch", "report", "night")
    assert result.exit_code == 0, shown(result)
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 6
    assert sorted(row["line_id"] for row in rows) == [f"l{i}" for i in range(6)]
    assert sorted(row["state"] for row in rows) == ["admitted"] * 2 + ["queued"] * 4
    out = tmp_path / "report.csv"
    written = fluxq(env, "batch", "report", "night", "--csv", "--out", str(out))
    assert written.exit_code == 0, shown(written)
    assert f"wrote 6 rows to {out}" in written.stderr
    table = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(table) == 6
    assert list(table[0]) == ["line_id", "job_id", "state", "file", "seed", "cost", "reason"]
    to_stdout = fluxq(env, "batch", "report", "night", "--csv")
    assert len(list(csv.DictReader(io.StringIO(to_stdout.stdout)))) == 6


def test_a_budget_pause_is_shown_and_resume_adds_credits(
    env: dict[str, str], tmp_path: Path
) -> None:
    env = env | {"FLUXQ_ACTIVE_CAP": "24"}
    budget = 2 * CREDITS
    result = submit(env, good_file(tmp_path, 6), "night", "--budget", f"{budget}")
    assert result.exit_code == 0, shown(result)
    assert "paused: budget — `fluxq batch resume night --budget MORE`" in result.stdout
    data = status_json(env)
    assert (data["paused"], data["counts"]["admitted"], data["committed"]) == ("budget", 2, budget)
    text = fluxq(env, "batch", "status", "night").stdout
    assert "paused: budget — `fluxq batch resume night --budget MORE`" in text
    # More budget for two more jobs: paused again after them
    more = fluxq(env, "batch", "resume", "night", "--budget", f"{budget}")
    assert more.exit_code == 0, shown(more)
    assert "still paused" in more.stderr
    assert status_json(env)["counts"]["admitted"] == 4
    # Enough for the rest
    rest = fluxq(env, "batch", "resume", "night", "--budget", "100")
    assert rest.exit_code == 0, shown(rest)
    assert "0 done, 0 failed, 0 cancelled, 6 waiting of 6; spent 0 of budget 116" in rest.stdout
    data = status_json(env)
    assert (data["paused"], data["counts"]["admitted"], data["budget"]) == (None, 6, 116.0)


def test_retry_runs_failed_jobs_again_and_warns_about_uncertain_ones(
    env: dict[str, str], tmp_path: Path, rt: Runtime
) -> None:
    assert submit(env, good_file(tmp_path), "night").exit_code == 0
    job = rt.store.get("night.l0")
    assert job is not None
    assert lifecycle.end(rt, job, State.FAILED, reason="moderated: the prompt was refused")
    text = fluxq(env, "batch", "status", "night").stdout
    assert "failures by reason:" in text
    assert "1  moderated" in text
    result = fluxq(env, "batch", "retry", "night")
    assert result.exit_code == 0, shown(result)
    assert "retrying 1 failed jobs of batch night" in result.stdout
    assert status_json(env)["counts"]["failed"] == 0
    uncertain = fluxq(env, "batch", "retry", "night", "--uncertain", "--no-failed")
    assert uncertain.exit_code == 0, shown(uncertain)
    assert "retrying 0 uncertain jobs" in uncertain.stdout
    assert "paid twice" in uncertain.stderr
    assert len(uncertain.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "command",
    [
        ["status", "nope"],
        ["status", "nope", "--watch"],
        ["cancel", "nope"],
        ["retry", "nope"],
        ["report", "nope"],
        ["resume", "nope"],
    ],
)
def test_an_unknown_batch_is_one_line_and_exit_2(env: dict[str, str], command: list[str]) -> None:
    line = one_line_failure(fluxq(env, "batch", *command))
    assert "no batch named nope" in line


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--name", "bad name"], "--name"),
        (["--name", "x" * 65], "at most 64"),
        (["--name", "ok", "--priority", "10"], "--priority"),
        (["--name", "ok", "--budget", "0"], "--budget"),
        (["--name", "ok", "--param", "nokey"], "key=value"),
        (["--name", "ok", "--param", "colour=red"], "colour"),
        (["--name", "ok", "--format", "xml"], "xml"),
    ],
)
def test_bad_submit_options_are_one_line_and_exit_2(
    env: dict[str, str], tmp_path: Path, extra: list[str], named: str
) -> None:
    path = good_file(tmp_path)
    result = fluxq(env, "batch", "submit", str(path), "--endpoint", "flux-pro-1.1", *extra)
    assert named in one_line_failure(result)


def test_a_missing_file_is_one_line(env: dict[str, str], tmp_path: Path) -> None:
    result = submit(env, tmp_path / "missing.jsonl")
    assert "cannot read" in one_line_failure(result)


def test_fluxq_cancel_a_queued_job_an_unknown_one_and_one_sent(
    env: dict[str, str], tmp_path: Path, rt: Runtime
) -> None:
    env = env | {"FLUXQ_ACTIVE_CAP": "1"}
    assert submit(env, good_file(tmp_path, 3), "night").exit_code == 0  # takes the one slot
    queued = fluxq(env, "enqueue", "--endpoint", "flux-dev", "--prompt", "x", "--job-id", "solo")
    assert queued.exit_code == 0, shown(queued)
    job = rt.store.get("solo")
    assert job is not None
    assert job.state is State.QUEUED
    result = fluxq(env, "cancel", "solo")
    assert result.exit_code == 0, shown(result)
    assert "job solo: cancelled" in result.stdout
    after = rt.store.get("solo")
    assert after is not None
    assert after.state is State.CANCELLED
    # Unknown, and a batch line still waiting in its lane (no job yet)
    assert "no job nope" in one_line_failure(fluxq(env, "cancel", "nope"))
    line = one_line_failure(fluxq(env, "cancel", "night.l2"))
    assert "fluxq batch cancel night" in line
    # An admitted job keeps its slot (its POST may be under way), and one sent is not cancelled
    admitted = fluxq(env, "cancel", "night.l0")
    assert admitted.exit_code == 1, shown(admitted)
    assert "job night.l0: admitted, being sent to BFL" in admitted.stdout
    held = rt.redis.zrange(keys.slots(rt.label), 0, -1)
    assert held == ["night.l0"]
    assert rt.store.transition("night.l0", State.SUBMITTED, now_s=rt.clock())
    refused = fluxq(env, "cancel", "night.l0")
    assert refused.exit_code == 1, shown(refused)
    # (rich wraps at the terminal's width, 80 columns without one: compare the words)
    assert "already sent to BFL (which has no cancel): it will finish and be saved" in " ".join(
        refused.stdout.split()
    )


def test_watch_exits_0_when_finished_without_failures_and_1_with_some(
    env: dict[str, str], tmp_path: Path, rt: Runtime
) -> None:
    assert submit(env, good_file(tmp_path, 3), "night").exit_code == 0
    assert fluxq(env, "batch", "cancel", "night").exit_code == 0  # the lane line
    for job_id in ("night.l0", "night.l1"):  # the admitted two run to the end
        for state in (State.SUBMITTED, State.READY, State.DONE):
            assert rt.store.transition(job_id, state, now_s=rt.clock())
        rt.limiter.release(job_id, keys.DEFAULT_GROUP)
    watched = fluxq(env, "batch", "status", "night", "--watch", "--interval", "0.05")
    assert watched.exit_code == 0, shown(watched)
    assert "2 done, 0 failed, 1 cancelled, 0 waiting of 3" in watched.stdout
    assert "done 2  failed 0  cancelled 1" in watched.stdout
    # A batch with a failure
    assert submit(env, good_file(tmp_path, 1), "day").exit_code == 0
    job = rt.store.get("day.l0")
    assert job is not None
    assert lifecycle.end(rt, job, State.FAILED, reason="moderated: refused")
    failed = fluxq(env, "batch", "status", "day", "--watch", "--json")
    assert failed.exit_code == 1, shown(failed)
    assert json.loads(failed.stdout.splitlines()[-1])["counts"]["failed"] == 1


def test_ctrl_c_stops_watching_without_a_traceback(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert submit(env, good_file(tmp_path, 3), "night").exit_code == 0

    def interrupted(_seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(batch_cli.time, "sleep", interrupted)
    result = fluxq(env, "batch", "status", "night", "--watch")
    assert result.exit_code == 0, shown(result)
    assert "Traceback" not in result.output


def test_the_expected_time_is_bounded_by_the_key_cap_and_each_nested_cap() -> None:
    settings = load_settings(active_cap=24, endpoint_caps="flux-kontext-max=6")
    mean = LogNormal.from_median(settings.poll_prior_median_s, PRIOR_SIGMA).mean_s
    # 12 kontext-max jobs share its 6 slots: two rounds, though the key has 24
    assert batch_cli._expected_s(settings, None, {"flux-kontext-max": 12}) == pytest.approx(
        2 * mean
    )
    # 48 flux-dev jobs and 12 kontext-max ones share the key's 24 slots
    both = {"flux-dev": 48, "flux-kontext-max": 12}
    assert batch_cli._expected_s(settings, None, both) == pytest.approx(60 * mean / 24)


@pytest.mark.parametrize(
    ("credits", "dollars"),
    [(0, "$0.00"), (4, "$0.04"), (7.5, "$0.075"), (1234.56, "$12.3456"), (250000, "$2,500.00")],
)
def test_dollars_show_every_fraction_of_a_cent(credits: float, dollars: str) -> None:
    assert batch_cli._dollars(credits) == dollars


def test_a_line_whose_file_name_another_line_holds_is_a_conflict_and_exit_1(
    env: dict[str, str], tmp_path: Path
) -> None:
    first = write_jsonl(tmp_path / "a.jsonl", [{**request(0), "name": "heron"}])
    assert submit(env, first, "night").exit_code == 0
    # A later file's line takes the same file name under another id
    second = write_jsonl(
        tmp_path / "b.jsonl", [{**request(1), "name": "Heron"}, {**request(2), "name": "owl"}]
    )
    result = submit(env, second, "night")
    assert result.exit_code == 1, shown(result)
    assert "added 1, already there 0 (a re-run adds only what is missing), conflicts 1" in (
        result.stdout
    )
    assert "id l1: name: the file name 'Heron' is held by another line or job of batch night" in (
        result.stderr
    )
    assert status_json(env)["total"] == 2


@pytest.mark.parametrize(
    "args",
    [
        ["batch", "status", "night"],
        ["batch", "submit", "missing.jsonl", "--name", "night", "--endpoint", "flux-dev"],
        ["cancel", "night.l0"],
    ],
)
def test_as_a_real_process_redis_unreachable_is_one_line(tmp_path: Path, args: list[str]) -> None:
    result = run_fluxq(tmp_path, *args, FLUXQ_REDIS_URL="redis://127.0.0.1:1/0")
    line = one_line_process_failure(result)
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in line


quote_sim = simulator_fixture(SimConfig(time_scale=0.01, rng_seed=7), name="quote_sim")


def quote_file(tmp_path: Path) -> Path:
    """Three 1 MP FLUX.2 lines, one of 1.98 MP, and one flux-pro-1.1 line (BFL quotes FLUX.2)."""
    lines = [{"prompt": f"a heron, take {i}", "width": 1024, "height": 1024} for i in range(3)]
    lines.append({"prompt": "a large heron", "width": 1440, "height": 1440})
    lines.append({"endpoint": "flux-pro-1.1", "prompt": "a heron at dawn"})
    return write_jsonl(tmp_path / "quote.jsonl", lines)


def quote(env: dict[str, str], path: Path, *extra: str) -> Result:
    return fluxq(env, "batch", "submit", str(path), "--endpoint", "flux-2-pro", "--name", "q",
                 *extra)  # fmt: skip


def test_quote_asks_bfl_to_price_the_flux2_lines_and_prints_it_beside_the_table(
    env: dict[str, str], tmp_path: Path, quote_sim: SimulatorServer, redis_client: redis.Redis
) -> None:
    # Given BFL's prices at twice fluxq's table
    quote_sim.configure(price_factor=2.0)
    env = {**env, **quote_sim.env()}
    # When a dry run asks for a quote
    result = quote(env, quote_file(tmp_path), "--dry-run", "--quote")
    # Then BFL's price for the four FLUX.2 lines (2 x (3 x 3 + 4.5)) is printed beside the
    # table's, the other line keeps the table's, and nothing is enqueued
    assert result.exit_code == 0, shown(result)
    assert (
        "quote: BFL prices the 4 FLUX.2 lines at 27 credits = $0.27 (the table: 13.5); "
        "1 line of other models keep the table's price"
    ) in result.stdout, shown(result)
    assert "dry run: nothing enqueued (5 lines checked)" in result.stdout
    assert redis_client.exists(keys.batch("q")) == 0


def test_quote_where_bfl_has_no_pricing_endpoint_keeps_the_table_and_says_so(
    env: dict[str, str], tmp_path: Path, quote_sim: SimulatorServer
) -> None:
    quote_sim.configure(pricing_available=False)
    result = quote({**env, **quote_sim.env()}, quote_file(tmp_path), "--dry-run", "--quote")
    assert result.exit_code == 0, shown(result)
    assert "quote: BFL's /v1/pricing is not available here (404): the table's price" in (
        result.stdout
    )


def test_quote_needs_a_dry_run_and_a_key_and_a_refused_key_is_one_line(
    env: dict[str, str], tmp_path: Path, quote_sim: SimulatorServer
) -> None:
    path = quote_file(tmp_path)
    env = {**env, **quote_sim.env()}
    assert "add --dry-run" in one_line_failure(quote(env, path, "--quote"))
    keyless = {**env, "BFL_API_KEY": ""}
    assert "set BFL_API_KEY" in one_line_failure(quote(keyless, path, "--dry-run", "--quote"))
    # And a key BFL refuses fails in one line that never quotes the key
    quote_sim.configure(allowed_keys=["another-key"])
    refused = one_line_failure(quote(env, path, "--dry-run", "--quote"))
    assert refused.startswith("fluxq: quote: BFL answered 403 to POST /v1/pricing"), refused
    assert KEY not in refused
