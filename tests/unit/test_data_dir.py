"""Where the embedded Redis keeps its data: FLUXQ_DATA_DIR, else the platform's convention."""

from __future__ import annotations

from pathlib import Path

from fluxq.config.settings import load_settings
from fluxq.workers.process.embedded_redis import data_dir_of, default_data_dir, redis_conf_text


def test_linux_uses_xdg_data_home_when_absolute_else_local_share() -> None:
    home = {"HOME": "/home/ann"}
    assert default_data_dir(home, "linux") == Path("/home/ann/.local/share/fluxq")
    xdg = home | {"XDG_DATA_HOME": "/data/ann"}
    assert default_data_dir(xdg, "linux") == Path("/data/ann/fluxq")
    # The XDG spec: a relative value is invalid and ignored
    assert default_data_dir(home | {"XDG_DATA_HOME": "rel"}, "linux") == Path(
        "/home/ann/.local/share/fluxq"
    )


def test_macos_uses_application_support() -> None:
    found = default_data_dir({"HOME": "/Users/ann"}, "darwin")
    assert found == Path("/Users/ann/Library/Application Support/fluxq")


def test_fluxq_data_dir_wins(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "mine")
    assert data_dir_of(settings) == tmp_path / "mine"


def test_the_server_config_quotes_paths_and_keeps_the_password_out_of_argv() -> None:
    text = redis_conf_text(Path('/data/a "b" dir'), 6399, "pw123")
    assert 'dir "/data/a \\"b\\" dir"' in text
    assert "bind 127.0.0.1\n" in text
    assert "protected-mode yes\n" in text
    assert "appendonly yes\n" in text
    assert "appendfsync everysec\n" in text
    assert 'requirepass "pw123"' in text
