"""One import name: fluxq installs ``fluxq`` and nothing else, so it lives beside its users' own
``config/`` package and ``tasks.py`` (a Django service, Celery's own tutorial layout) and beside
PyPI's ``config`` distribution (installed by the dev extra, so no test reaches the network).

Every process here is a real one, started as a user would start it: ``python -c`` from the
service's directory (its ``config`` and ``tasks`` first on ``sys.path``), ``python -m fluxq``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.cluster import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
USER_TOPS = ("config", "tasks", "workers", "simulator", "bench", "tests", "deploy")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fluxq's wheel, built from a copy of this checkout (links kept) as pip builds it."""
    out = tmp_path_factory.mktemp("wheel")
    source = out / "source"
    skip = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "*_cache", "__pycache__")
    shutil.copytree(ROOT, source, symlinks=True, ignore=skip)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index",
         "--no-build-isolation", "-w", str(out), str(source)],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    (found,) = out.glob("fluxq-*.whl")
    return found


def test_the_wheel_installs_fluxq_and_nothing_else_at_the_top(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (dist_info,) = {n.split("/")[0] for n in names if ".dist-info/" in n}
        top_level = archive.read(f"{dist_info}/top_level.txt").decode().split()
    tops = {name.split("/")[0] for name in names} - {dist_info}
    assert tops == {"fluxq"}, sorted(tops)
    assert top_level == ["fluxq"]
    # The repository's folders are inside, under their import names
    for inside in (
        "fluxq/py.typed",
        "fluxq/config/settings.py",
        "fluxq/config/endpoints.toml",
        "fluxq/tasks/submit.py",
        "fluxq/workers/state/lua/admit.lua",
        "fluxq/simulator/server.py",
    ):
        assert inside in names, inside
    assert not [n for n in names if n.startswith(("fluxq/tests/", "fluxq/deploy/"))]


def test_no_module_of_the_checkout_imports_a_user_space_name() -> None:
    # What the wheel holds, as Python sees it from a neutral directory: every fluxq module
    # imports, and not one of the user's top-level names gets loaded on the way.
    probe = (
        "import importlib, pkgutil, sys\n"
        "import fluxq\n"
        "for info in pkgutil.walk_packages(fluxq.__path__, 'fluxq.'):\n"
        "    if not info.name.endswith('__main__'):\n"
        "        importlib.import_module(info.name)\n"
        f"bad = sorted(n for n in sys.modules if n.split('.')[0] in {USER_TOPS!r})\n"
        "print(len([n for n in sys.modules if n.startswith('fluxq.')]), bad)\n"
    )
    done = subprocess.run(
        [sys.executable, "-P", "-c", probe], capture_output=True, text=True, timeout=120,
        cwd="/", check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    count, bad = done.stdout.split(" ", 1)
    assert int(count) > 80
    assert bad.strip() == "[]", bad


def user_service(root: Path) -> Path:
    """A service directory as cookiecutter-django and Celery's tutorial lay it out."""
    service = root / "service"
    (service / "config").mkdir(parents=True)
    (service / "config" / "__init__.py").write_text("")
    (service / "config" / "settings.py").write_text(
        'SECRET_KEY = "django-insecure-test"\nINSTALLED_APPS = ["service"]\n'
    )
    (service / "tasks.py").write_text(
        "from celery import shared_task\n\n\n@shared_task\ndef add(x, y):\n    return x + y\n"
    )
    return service


def test_a_service_with_its_own_config_and_tasks_gets_its_image(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    # Given a service whose config/ and tasks.py come first on sys.path, and a fluxq worker
    service = user_service(tmp_path)
    cluster = make_cluster()
    cluster.start_worker(threads=4, save_threads=2)
    script = (
        "import config.settings, tasks\n"
        "import fluxq\n"
        "job = fluxq.enqueue('flux-dev', {'prompt': 'a heron', 'seed': 7}, batch='django')\n"
        "done = job.wait(timeout_s=60)\n"
        "print(done.state.value, done.path)\n"
        "print(config.settings.SECRET_KEY, tasks.add.name)\n"
        "try:\n"
        "    fluxq.enqueue('flux-nope', {'prompt': 'x'})\n"
        "except fluxq.InvalidRequest as e:\n"
        "    print('refused:', type(e).__name__, isinstance(e, fluxq.FluxqError))\n"
    )
    # When the service enqueues a job and waits for it, its own modules loaded beside fluxq's
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=service, env=cluster.env, capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip
    # Then the image is there, and both the user's modules and fluxq's did their work
    assert done.returncode == 0, done.stderr[-3000:]
    first, second, third = done.stdout.splitlines()
    state, path = first.split(" ", 1)
    assert state == "done"
    assert Path(path).is_file()
    assert second == "django-insecure-test tasks.add"
    assert third == "refused: InvalidRequest True"
    # And `python -m fluxq status` run there (no -P: the service's directory on sys.path) answers
    status = subprocess.run(
        [sys.executable, "-m", "fluxq", "status", "--batch", "django"], cwd=service,
        env=cluster.env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr[-3000:]
    assert re.search(r"│ done\s+│ 1\s", status.stdout), status.stdout


def test_pypi_config_and_fluxq_installed_side_by_side_both_work(
    wheel: Path, tmp_path: Path, redis_url: str
) -> None:
    # Given a fresh virtualenv with fluxq's wheel installed, and PyPI's `config` distribution
    # (and fluxq's dependencies) from the dev environment, on the same sys.path
    from importlib.metadata import distribution

    pypi_config = distribution("config")
    assert (pypi_config.read_text("top_level.txt") or "").split() == ["config"]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    )  # fmt: skip
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(purelib)  # what pip does with a pure wheel, less the RECORD check
    (purelib / "dev_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXQ_")}
    env |= {"FLUXQ_REDIS_URL": redis_url, "BFL_API_KEY": "offline-test-key"}
    # When one process imports both and fluxq enqueues a job
    script = (
        "import config, fluxq\n"
        "from fluxq.config.settings import Settings\n"
        "print(config.__file__)\n"
        "print(fluxq.__file__)\n"
        "print(hasattr(config, 'Config'), hasattr(config, 'settings'))\n"
        "print(fluxq.enqueue('flux-dev', {'prompt': 'a heron'}, batch='pypi').id)\n"
    )
    done = subprocess.run(
        [python, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    # Then `config` is PyPI's, `fluxq` is the wheel's, and the job is in Redis
    assert done.returncode == 0, done.stderr[-3000:]
    config_file, fluxq_file, api, job_id = done.stdout.splitlines()
    assert Path(config_file).parent.parent == Path(str(pypi_config.locate_file(""))), config_file
    assert Path(fluxq_file).is_relative_to(purelib), fluxq_file
    assert api == "True False"
    status = subprocess.run(
        [python, "-m", "fluxq", "status", "--batch", "pypi"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr[-3000:]
    assert job_id
    assert re.search(r"│ total\s+│ 1\s", status.stdout), status.stdout
