"""The BFL key tests use, and environments that carry no FLUXQ_* setting or key of the user's."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pytest

from fluxq.config.settings import Settings, load_settings

KEY = "test-key-0123456789"
"""The BFL API key of every test that needs one and no particular one (the simulator takes any
non-empty key). Distinctive enough to search logs and output for it."""


def is_user_setting(name: str) -> bool:
    """True for a variable that configures fluxq (FLUXQ_*, BFL_API_KEY)."""
    return name.startswith("FLUXQ_") or name == "BFL_API_KEY"


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment less any FLUXQ_* or key, unbuffered and 200 columns wide, plus
    ``extra``: the environment of a ``fluxq`` process a test starts."""
    env = {k: v for k, v in os.environ.items() if not is_user_setting(k)}
    env.update({"PYTHONUNBUFFERED": "1", "COLUMNS": "200"})
    env.update(extra)
    return env


def scrub_env(monkeypatch: pytest.MonkeyPatch, cwd: Path) -> None:
    """Remove every FLUXQ_* variable and the key from this process's environment (undone at the
    test's end) and work in ``cwd``, where no .env file of the user's is found."""
    for name in list(os.environ):
        if is_user_setting(name):
            monkeypatch.delenv(name)
    monkeypatch.chdir(str(cwd))


def settings_for(env: Mapping[str, str]) -> Settings:
    """The Settings a process started with exactly ``env`` would load (processes tests spawn)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        return load_settings()
