"""``fluxq flower``'s options: what it hands Flower, checked against the installed Flower.

The process itself (auth, search, refusals, persistence) is tested in
tests/integration/test_flower.py; these check what a running Flower cannot show, such as the
task bound, and run no server.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import typer
from flower.options import default_options

from fluxq.cli.flower import TASKS_COLUMNS, basic_auth, flower_argv
from fluxq.config.errors import ConfigError
from fluxq.config.settings import Settings, load_settings

PASSWORD = "a-flower-password-42"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(("FLUXQ_", "FLOWER_")) or name == "BFL_API_KEY":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no .env of the developer's


def settings(**overrides: object) -> Settings:
    return load_settings(redis_url="redis://127.0.0.1:6379/0", **overrides)


def test_flower_gets_args_and_kwargs_columns_a_task_bound_and_no_secret() -> None:
    # Given basic auth and a bound of 2,500 tasks
    given = settings(flower_user="ops", flower_password=PASSWORD, flower_max_tasks=2500)
    # When fluxq builds Flower's command line
    argv = flower_argv(given, address="127.0.0.1", port=5555, db=None)
    # Then it shows args and kwargs, keeps 2,500 tasks, in memory only, read-only
    assert f"--tasks_columns={TASKS_COLUMNS}" in argv
    assert TASKS_COLUMNS.split(",")[3:5] == ["args", "kwargs"]
    assert "--max_tasks=2500" in argv
    assert "--persistent=False" in argv
    assert "--read_only=True" in argv
    assert not any(arg.startswith("--db") for arg in argv)
    # And neither the password nor the user is on it
    assert not any(PASSWORD in arg or "ops" in arg for arg in argv)
    # And every option it passes exists in the installed Flower
    for arg in argv[1:]:
        name = arg.removeprefix("--").partition("=")[0]
        assert name in default_options, arg


def test_flower_persistent_keeps_state_in_the_given_file_and_saves_it_every_minute() -> None:
    argv = flower_argv(settings(), address="127.0.0.1", port=5555, db=Path("/var/lib/f/state"))
    assert "--persistent=True" in argv
    assert "--db=/var/lib/f/state" in argv
    assert "--state_save_interval=60000" in argv


def test_the_task_bound_defaults_to_ten_thousand_and_is_bounded() -> None:
    assert settings().flower_max_tasks == 10_000
    with pytest.raises(ConfigError, match="FLUXQ_FLOWER_MAX_TASKS"):
        settings(flower_max_tasks=10_000_000)


def test_basic_auth_is_both_or_neither() -> None:
    assert basic_auth(settings()) is None
    assert basic_auth(settings(flower_user="ops", flower_password=PASSWORD)) == f"ops:{PASSWORD}"
    for half in ({"flower_user": "ops"}, {"flower_password": PASSWORD}):
        with pytest.raises(typer.Exit) as raised:
            basic_auth(settings(**half))
        assert raised.value.exit_code == 2


@pytest.mark.parametrize("user", ["ops:night", "night ops", "ops\n", "opé"])
def test_a_user_name_basic_auth_cannot_carry_is_refused(user: str) -> None:
    with pytest.raises(typer.Exit) as raised:
        basic_auth(settings(flower_user=user, flower_password=PASSWORD))
    assert raised.value.exit_code == 2


def test_a_password_with_a_newline_is_refused_without_being_repeated() -> None:
    with pytest.raises(ConfigError, match="FLUXQ_FLOWER_PASSWORD") as raised:
        settings(flower_user="ops", flower_password=PASSWORD + "\n")
    assert PASSWORD not in str(raised.value)
