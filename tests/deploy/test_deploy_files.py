"""deploy/: every file parses, passes its schema, and agrees with fluxq's own CLI and settings.

Docker is not available where fluxq is built, so nothing here runs a container. Instead every
check reads the files (the commands, options, ports and variables are parsed out of them) and
holds them against fluxq itself: the typer app parses each ``fluxq`` command line, Settings
knows every variable, the CLI's defaults give every port. A renamed option, a moved default
port, a new setting or a secret written inline fails here.
"""

from __future__ import annotations

import configparser
import importlib.resources
import ipaddress
import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import typer.main
import yaml

from fluxq.config.env_example import env_name, is_secret, render
from fluxq.config.errors import ConfigError
from fluxq.config.redis_url import parse_sentinel
from fluxq.config.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"
K8S = DEPLOY / "k8s"
SYSTEMD = DEPLOY / "systemd"
ENV_EXAMPLE = DEPLOY / ".env.example"
PROMETHEUS = DEPLOY / "prometheus.yml"
HEALTHCHECK = DEPLOY / "healthcheck.py"
DEPLOY_README = DEPLOY / "README.md"

KUBERNETES_VERSION = "1.31.0"
"""The Kubernetes release the manifests are validated against (a schema kubernetes-validate
ships); the manifests use only GA APIs (apps/v1, v1, policy/v1)."""

HTTP_COMMANDS = ("api", "flower", "metrics", "simulator")
"""fluxq commands that listen on a port (``--port``)."""

NOT_SETTINGS = {"FLUXQ_DEBUG"}
"""FLUXQ_* variables fluxq reads outside Settings (the CLI's traceback switch)."""

REQUIRED_SECRETS = {
    "BFL_API_KEY",
    "FLUXQ_API_TOKEN",
    "FLUXQ_FLOWER_PASSWORD",
    "FLUXQ_BFL_WEBHOOK_SECRET",
}
"""The keys the Kubernetes Secret template must hold."""

SECRET_EXTRAS = {"FLUXQ_REDIS_URL"}
"""Not a SecretStr, but secret when it holds a password: allowed in the Secret too."""

VARIABLE = re.compile(r"\b(?:FLUXQ_[A-Z0-9_]*[A-Z0-9]|BFL_API_KEY)\b")
URL_PORT = re.compile(r"\bhttps?://[^/\s'\"]+:(\d+)")
SHELL_STOPS = {"&&", "||", "|", ";", "&", ">", ">>", "2>&1", "<"}


# --- what fluxq itself says -------------------------------------------------------------------


@cache
def settings_env() -> dict[str, bool]:
    """Every variable Settings reads, and whether it is a secret."""
    return {env_name(n, f): is_secret(f) for n, f in Settings.model_fields.items()}


@cache
def secret_names() -> frozenset[str]:
    return frozenset(name for name, secret in settings_env().items() if secret)


@cache
def field_of() -> dict[str, str]:
    """Variable name to Settings field name."""
    return {env_name(n, f): n for n, f in Settings.model_fields.items()}


@cache
def cli() -> Any:
    """The click group typer builds from fluxq's app (typer ships its own copy of click, so
    groups are told apart by their ``commands``)."""
    from fluxq.cli import app

    group = typer.main.get_command(app)
    assert hasattr(group, "commands")
    return group


def parse_fluxq(args: list[str]) -> tuple[list[str], Any]:
    """Parse ``fluxq ARGS`` with the real CLI; returns the command path and its click context.

    Parsing converts and checks every option (unknown ones, types, ranges) without running
    the command."""
    command = cli()
    path: list[str] = []
    rest = list(args)
    while hasattr(command, "commands"):
        assert rest, f"`fluxq {' '.join(path)}` names no command"
        name = rest.pop(0)
        sub = command.commands.get(name)
        assert sub is not None, f"`fluxq {' '.join([*path, name])}`: no such command"
        command, path = sub, [*path, name]
    context = command.make_context(" ".join(["fluxq", *path]), rest)
    return path, context


def cli_default_port(command: str) -> int:
    for param in cli().commands[command].params:
        if param.name == "port":
            assert isinstance(param.default, int)
            return param.default
    raise AssertionError(f"fluxq {command} has no --port")


# --- reading the files --------------------------------------------------------------------------


def load_yaml(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def yaml_files() -> list[Path]:
    return sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])


def k8s_files() -> list[Path]:
    return sorted(K8S.rglob("*.yaml"))


def unit_files() -> list[Path]:
    return sorted(SYSTEMD.glob("*.service"))


@cache
def compose() -> dict[str, Any]:
    (doc,) = load_yaml(COMPOSE)
    assert isinstance(doc, dict)
    return doc


def services() -> dict[str, dict[str, Any]]:
    found = compose()["services"]
    assert isinstance(found, dict)
    return found


@cache
def k8s_docs() -> list[dict[str, Any]]:
    return [doc for path in k8s_files() for doc in load_yaml(path)]


def k8s_of(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in k8s_docs() if doc["kind"] == kind]


@dataclass(frozen=True)
class Instruction:
    stage: int
    keyword: str
    value: str


@cache
def dockerfile() -> list[Instruction]:
    """The Dockerfile's instructions (continuations joined, comments dropped), by stage."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found: list[Instruction] = []
    stage = -1
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, value = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        found.append(Instruction(stage, keyword, value.strip()))
    return found


def final_stage() -> list[Instruction]:
    last = max(i.stage for i in dockerfile())
    return [i for i in dockerfile() if i.stage == last]


def exec_form(value: str) -> list[str]:
    parsed = json.loads(value)
    assert isinstance(parsed, list), f"not exec form: {value}"
    return [str(part) for part in parsed]


def image_entrypoint() -> list[str]:
    (entry,) = [i for i in final_stage() if i.keyword == "ENTRYPOINT"]
    return exec_form(entry.value)


def image_cmd() -> list[str]:
    (cmd,) = [i for i in final_stage() if i.keyword == "CMD"]
    return exec_form(cmd.value)


def read_unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys keep case
    parser.read_string(path.read_text(), source=str(path))
    return parser


def unit_environment(unit: configparser.ConfigParser) -> dict[str, str]:
    """``Environment=`` of a unit (configparser keeps the last line of repeated keys)."""
    raw = unit["Service"].get("Environment", "")
    return dict(part.split("=", 1) for part in shlex.split(raw))


# --- every fluxq command line in deploy/ --------------------------------------------------------


@dataclass(frozen=True)
class Invocation:
    where: str
    args: tuple[str, ...]

    @property
    def command(self) -> str:
        return self.args[0] if self.args else ""


def is_fluxq_image(image: str) -> bool:
    name = image.rsplit("/", 1)[-1]
    return name.split(":", 1)[0].split("@", 1)[0] == "fluxq"


def as_argv(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(part) for part in value]


def fluxq_args(argv: list[str], where: str) -> tuple[str, ...]:
    assert argv, f"{where}: no command"
    assert PurePosixPath(argv[0]).name == "fluxq", f"{where}: runs {argv[0]}, not fluxq"
    return tuple(argv[1:])


def compose_invocations() -> Iterator[Invocation]:
    for name, service in services().items():
        if not is_fluxq_image(str(service.get("image", ""))):
            continue
        entry = as_argv(service.get("entrypoint")) or image_entrypoint()
        command = as_argv(service.get("command")) or image_cmd()
        yield Invocation(f"compose:{name}", fluxq_args(entry + command, f"compose {name}"))


def k8s_containers() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, container) for every container of every pod template."""
    for doc in k8s_of("Deployment") + k8s_of("StatefulSet"):
        for container in doc["spec"]["template"]["spec"]["containers"]:
            yield doc, container


def k8s_invocations() -> Iterator[Invocation]:
    for doc, container in k8s_containers():
        if not is_fluxq_image(container["image"]):
            continue
        entry = as_argv(container.get("command")) or image_entrypoint()
        where = f"k8s:{doc['metadata']['name']}/{container['name']}"
        yield Invocation(where, fluxq_args(entry + as_argv(container.get("args")), where))


def systemd_invocations() -> Iterator[Invocation]:
    for path in unit_files():
        argv = shlex.split(read_unit(path)["Service"]["ExecStart"])
        assert argv[0].startswith("/"), f"{path.name}: ExecStart needs an absolute path"
        yield Invocation(f"systemd:{path.name}", fluxq_args(argv, path.name))


def shell_lines(markdown: str) -> Iterator[str]:
    """The lines of fenced code blocks, continuations joined."""
    for block in re.findall(r"```[a-z]*\n(.*?)```", markdown, flags=re.DOTALL):
        yield from re.sub(r"\\\n", " ", block).splitlines()


def readme_invocations() -> Iterator[Invocation]:
    """``fluxq ...`` in deploy/README.md's code blocks (``docker compose exec x fluxq ...`` too)."""
    for number, line in enumerate(shell_lines(DEPLOY_README.read_text()), start=1):
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:
            continue
        for index, token in enumerate(tokens):
            following = tokens[index + 1] if index + 1 < len(tokens) else ""
            before = tokens[index - 1] if index else ""
            is_fluxq = token == "fluxq" or token.endswith("/bin/fluxq")
            # `fluxq WORD`, not an option's value (`-u fluxq`, `-n fluxq`: a user, a namespace)
            if is_fluxq and not before.startswith("-") and re.fullmatch(r"[a-z][a-z-]*", following):
                args: list[str] = []
                for part in tokens[index + 1 :]:
                    if part in SHELL_STOPS:
                        break
                    args.append(part)
                yield Invocation(f"deploy/README.md code line {number}", tuple(args))
                break


def dockerfile_invocation() -> Invocation:
    argv = image_entrypoint() + image_cmd()
    return Invocation("Dockerfile", fluxq_args(argv, "Dockerfile"))


@cache
def all_invocations() -> tuple[Invocation, ...]:
    return (
        dockerfile_invocation(),
        *compose_invocations(),
        *k8s_invocations(),
        *systemd_invocations(),
        *readme_invocations(),
    )


def port_of(invocation: Invocation) -> int:
    _, context = parse_fluxq(list(invocation.args))
    port = context.params["port"]
    assert isinstance(port, int)
    return port


def host_of(invocation: Invocation) -> str:
    _, context = parse_fluxq(list(invocation.args))
    host = context.params.get("host", context.params.get("address"))
    assert isinstance(host, str)
    return host


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# --- every file parses and passes its schema ----------------------------------------------------


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path: Path) -> None:
    docs = load_yaml(path)
    assert docs, f"{path} holds no document"
    assert all(isinstance(doc, dict) for doc in docs)


def test_the_compose_file_passes_the_compose_spec_schema() -> None:
    vendored = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads((vendored / "compose-spec.json").read_text())
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(compose())
    ]
    assert errors == []


@pytest.mark.parametrize("path", k8s_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_kubernetes_manifests_pass_kubernetes_validate(path: Path) -> None:
    for doc in load_yaml(path):
        version = kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        assert version, f"{path.name}: {doc['kind']} was not validated"


# --- every fluxq command, option, port and variable exists ------------------------------------


def test_the_files_name_fluxq_commands_everywhere_expected() -> None:
    where = {(i.where.split(":", 1)[0], i.command) for i in all_invocations()}
    for command in ("worker", "api", "flower", "metrics", "simulator"):
        assert ("compose", command) in where
    for command in ("worker", "api", "flower", "metrics"):
        assert ("k8s", command) in where
        assert ("systemd", command) in where
    assert ("Dockerfile", "worker") in where


@pytest.mark.parametrize("invocation", all_invocations(), ids=lambda i: i.where)
def test_every_fluxq_command_line_parses_with_the_real_cli(invocation: Invocation) -> None:
    try:
        parse_fluxq(list(invocation.args))
    except Exception as exc:  # click's usage errors (typer vendors click: no public type)
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        pytest.fail(f"{invocation.where}: `fluxq {' '.join(invocation.args)}`: {message}")


def deploy_texts() -> Iterator[tuple[Path, str]]:
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            yield path, path.read_text(errors="replace")


def test_every_variable_named_in_deploy_is_one_fluxq_reads() -> None:
    known = set(settings_env()) | NOT_SETTINGS
    unknown = {
        f"{path.relative_to(DEPLOY)}: {name}"
        for path, text in deploy_texts()
        for name in VARIABLE.findall(text)
        if name not in known
    }
    assert unknown == set()


def test_the_env_example_is_what_settings_render() -> None:
    assert ENV_EXAMPLE.read_text() == render(), (
        "deploy/.env.example drifted from Settings: python -m fluxq.config.env_example > "
        "deploy/.env.example"
    )
    listed = re.findall(r"^#([A-Z0-9_]+)=(.*)$", ENV_EXAMPLE.read_text(), flags=re.MULTILINE)
    assert [name for name, _ in listed] == list(settings_env())
    assert all(value == "" for name, value in listed if name in secret_names())


def test_http_commands_default_ports_are_the_healthcheck_scripts() -> None:
    script = healthcheck_module()
    assert {c: cli_default_port(c) for c in HTTP_COMMANDS} == script.DEFAULT_PORTS
    assert set(script.HEALTH_PATHS) == set(HTTP_COMMANDS)


# --- the Dockerfile -----------------------------------------------------------------------------


def resolved_bases() -> list[str]:
    """Each stage's base image with ARG defaults substituted."""
    args: dict[str, str] = {}
    bases: list[str] = []
    for instruction in dockerfile():
        if instruction.keyword == "ARG" and "=" in instruction.value:
            name, value = instruction.value.split("=", 1)
            args.setdefault(name.strip(), value.strip())
        if instruction.keyword == "FROM":
            image = instruction.value.split()[0]
            bases.append(
                re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), image)
            )
    return bases


def stage_names() -> set[str]:
    return {
        i.value.split()[-1].lower()
        for i in dockerfile()
        if i.keyword == "FROM" and " as " in i.value.lower()
    }


def test_the_dockerfile_base_is_pinned_and_multi_stage() -> None:
    bases = [b for b in resolved_bases() if b.lower() not in stage_names()]
    assert len(resolved_bases()) >= 2, "multi-stage: a builder and a runtime"
    for base in bases:
        digest = re.search(r"@sha256:[0-9a-f]{64}$", base)
        exact_tag = re.search(r":\d+\.\d+\.\d+(-[a-z0-9.-]+)?$", base)
        assert digest or exact_tag, f"base {base} is neither a digest nor an exact release"
    copies_from_builder = [i for i in final_stage() if i.keyword == "COPY" and "--from=" in i.value]
    assert copies_from_builder, "the runtime stage copies the venv from the builder"


def test_the_image_runs_fluxq_as_a_non_root_user_with_a_healthcheck() -> None:
    users = [i.value for i in final_stage() if i.keyword == "USER"]
    assert users, "no USER in the runtime stage: it would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    healthchecks = [i.value for i in final_stage() if i.keyword == "HEALTHCHECK"]
    assert healthchecks
    assert "NONE" not in healthchecks[-1].split()
    cmd = exec_form(healthchecks[-1].split("CMD", 1)[1].strip())
    script = PurePosixPath(cmd[-1])
    copied = [i.value.split() for i in final_stage() if i.keyword == "COPY"]
    assert any(parts[-1] == str(script) and (ROOT / parts[-2]).is_file() for parts in copied)
    assert image_entrypoint() == ["fluxq"]
    exposed = {
        int(p.split("/")[0])
        for i in final_stage()
        if i.keyword == "EXPOSE"
        for p in i.value.split()
    }
    assert exposed <= {cli_default_port(c) for c in HTTP_COMMANDS}


def dockerignore_patterns() -> list[str]:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: ``**`` any depth, ``*`` and ``?`` within a name."""
    out, index = "", 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            out, index = out + "(?:.*/)?", index + 3
        elif pattern.startswith("**", index):
            out, index = out + ".*", index + 2
        elif pattern[index] in "*?":
            out, index = out + ("[^/]*" if pattern[index] == "*" else "[^/]"), index + 1
        else:
            out, index = out + re.escape(pattern[index]), index + 1
    return re.compile(out)


def ignored(path: str) -> bool:
    """Whether the Dockerfile's ignore file drops ``path`` (a dropped folder drops its files;
    the last matching pattern decides, ``!`` keeps)."""
    candidates = [path, *(str(p) for p in PurePosixPath(path).parents if str(p) != ".")]
    verdict = False
    for pattern in dockerignore_patterns():
        regex = glob_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            verdict = not pattern.startswith("!")
    return verdict


def test_the_build_context_keeps_secrets_out_and_sources_in() -> None:
    for secret_path in (".env", "deploy/.env", ".git", ".venv"):
        assert ignored(secret_path), f"{secret_path} would enter the build context"
    for instruction in dockerfile():
        if instruction.keyword != "COPY" or "--from=" in instruction.value:
            continue
        sources = instruction.value.split()[:-1]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert not ignored(source), f"COPY {source}: dropped by {DOCKERIGNORE.name}"
            assert ".env" not in PurePosixPath(source).name


def test_the_dockerfile_bakes_no_secret() -> None:
    for instruction in dockerfile():
        if instruction.keyword in ("ENV", "ARG", "LABEL"):
            named = set(VARIABLE.findall(instruction.value))
            assert not named & secret_names(), f"{instruction.keyword} {instruction.value}"


# --- docker compose -----------------------------------------------------------------------------


def service_port_targets(service: dict[str, Any]) -> set[int]:
    """Container-side ports a service publishes or exposes, and those its healthcheck calls."""
    found: set[int] = set()
    for entry in service.get("ports", []):
        target = entry.get("target") if isinstance(entry, dict) else str(entry).rsplit(":", 1)[-1]
        found.add(int(str(target).split("/")[0]))
    found.update(int(str(port).split("/")[0]) for port in service.get("expose", []))
    test = " ".join(as_argv(service.get("healthcheck", {}).get("test")))
    found.update(int(port) for port in URL_PORT.findall(test))
    return found


def compose_by_service() -> dict[str, Invocation]:
    return {i.where.split(":", 1)[1]: i for i in compose_invocations()}


def test_compose_ports_match_each_commands_port() -> None:
    for name, invocation in compose_by_service().items():
        service = services()[name]
        if invocation.command in HTTP_COMMANDS:
            assert service_port_targets(service) <= {port_of(invocation)}, name
            assert service.get("healthcheck"), f"{name}: no healthcheck"
        else:
            assert not service.get("ports"), f"{name}: a worker publishes no port"


def test_compose_workers_scale() -> None:
    for name, invocation in compose_by_service().items():
        if invocation.command == "worker":
            service = services()[name]
            assert "container_name" not in service, f"{name}: --scale needs no container_name"
            assert "ports" not in service, f"{name}: --scale needs no fixed host port"


def test_compose_secrets_come_from_the_env_file_only() -> None:
    for name, service in services().items():
        if not is_fluxq_image(str(service.get("image", ""))):
            continue
        environment = service.get("environment") or {}
        inline = set(environment) & secret_names()
        if service.get("profiles") == ["dev"] and not service.get("env_file"):
            # the simulator's side: a key it accepts, never one of yours (no env file here)
            base = urlsplit(str(environment.get("FLUXQ_BFL_BASE_URL", "")))
            assert not inline or is_loopback(base.hostname or ""), name
            continue
        assert inline == set(), f"{name}: secrets inline: {inline}"
        assert as_argv(service.get("env_file")) == [".env"], f"{name}: env_file .env"


def image_default(image: str) -> str:
    """An image named ``${VAR:-default}`` as compose resolves it with VAR unset."""
    found = re.fullmatch(r"\$\{[A-Z_]+:-([^}]+)\}", image)
    return found.group(1) if found else image


def redis_services() -> dict[str, dict[str, Any]]:
    """The Redis servers (not the Sentinels) of the compose file."""
    return {
        name: service
        for name, service in services().items()
        if image_default(str(service.get("image", ""))).startswith("redis:")
        and "--sentinel" not in " ".join(as_argv(service.get("command")))
    }


def test_compose_redis_persists_and_never_evicts() -> None:
    by_profile = {name: s.get("profiles") for name, s in redis_services().items()}
    assert by_profile == {"redis": None, "redis-replica-1": ["ha"], "redis-replica-2": ["ha"]}
    for redis_service in redis_services().values():
        command = " ".join(as_argv(redis_service["command"]))
        assert "--appendonly yes" in command
        assert "--maxmemory-policy noeviction" in command
        volumes = [str(v).split(":") for v in redis_service["volumes"]]
        assert any(
            target == "/data" and source in compose()["volumes"] for source, target, *_ in volumes
        )
        image_tag = image_default(str(redis_service["image"])).split(":", 1)[1]
        assert re.match(r"\d+\.\d+\.\d+", image_tag), "pin Redis to an exact release"


def test_the_ha_profile_is_two_replicas_of_redis_and_three_sentinels_watching_it() -> None:
    ha = {name: s for name, s in services().items() if s.get("profiles") == ["ha"]}
    sentinels = {
        name: " ".join(as_argv(s.get("command")))
        for name, s in ha.items()
        if "--sentinel" in " ".join(as_argv(s.get("command")))
    }
    assert sorted(sentinels) == ["sentinel-1", "sentinel-2", "sentinel-3"]
    for text in sentinels.values():
        assert "sentinel monitor mymaster redis 6379 2" in text  # quorum 2 of 3
        assert "port 26379" in text
    for name in ("redis-replica-1", "redis-replica-2"):
        command = as_argv(ha[name]["command"])
        assert command[command.index("--replicaof") + 1 : command.index("--replicaof") + 3] == [
            "redis",
            "6379",
        ]
    # The URL the comment gives parses as fluxq's Sentinel URL and names these three
    url = re.search(r"FLUXQ_REDIS_URL=(sentinel://\S+)", COMPOSE.read_text())
    assert url is not None
    parsed = parse_sentinel(url.group(1))
    assert parsed.sentinels == tuple((name, 26379) for name in sorted(sentinels))


def redis_url_of(service: dict[str, Any]) -> str:
    return str((service.get("environment") or {}).get("FLUXQ_REDIS_URL", ""))


def test_the_simulator_and_its_workers_really_connect() -> None:
    # The simulator binds loopback only: whoever calls it shares its network namespace.
    by_service = compose_by_service()
    simulators = [n for n, i in by_service.items() if i.command == "simulator"]
    assert simulators, "no simulator service"
    for simulator in simulators:
        assert is_loopback(host_of(by_service[simulator]))
        assert services()[simulator].get("profiles") == ["dev"]
    real_redis = {
        redis_url_of(s) for n, s in services().items() if not s.get("profiles") and redis_url_of(s)
    }
    for name, service in services().items():
        base = urlsplit(str((service.get("environment") or {}).get("FLUXQ_BFL_BASE_URL", "")))
        if not base.hostname or not is_loopback(base.hostname):
            continue
        (simulator,) = [s for s in simulators if service.get("network_mode") == f"service:{s}"]
        port = port_of(by_service[simulator])
        assert base.port == port, f"{name}: base URL port {base.port}, simulator {port}"
        allowed = str(service["environment"]["FLUXQ_ALLOWED_URLS"]).split(",")
        assert {urlsplit(u).port for u in allowed} == {port + 1, port + 2}
        assert service.get("profiles") == ["dev"]
        assert redis_url_of(service) not in real_redis, f"{name} would share the real queues"


def test_workers_and_the_api_share_the_output_volume_at_fluxq_output_dir() -> None:
    by_service = compose_by_service()
    mounts: dict[str, set[str]] = {}
    for name, invocation in by_service.items():
        if invocation.command in ("worker", "api") and not services()[name].get("profiles"):
            service = services()[name]
            output_dir = service["environment"]["FLUXQ_OUTPUT_DIR"]
            mounts[name] = {
                str(v).split(":")[0]
                for v in service.get("volumes", [])
                if str(v).split(":")[1] == output_dir
            }
    assert mounts
    assert all(m for m in mounts.values()), mounts
    assert len({frozenset(m) for m in mounts.values()}) == 1, mounts


def test_prometheus_scrapes_the_metrics_service_on_its_port() -> None:
    (config,) = load_yaml(PROMETHEUS)
    targets = [
        t for job in config["scrape_configs"] for s in job["static_configs"] for t in s["targets"]
    ]
    assert targets
    by_service = compose_by_service()
    for target in targets:
        host, port = target.rsplit(":", 1)
        assert by_service[host].command == "metrics"
        assert int(port) == port_of(by_service[host])


# --- Kubernetes ---------------------------------------------------------------------------------


def k8s_by_component() -> dict[str, tuple[dict[str, Any], dict[str, Any], Invocation]]:
    found = {}
    for doc, container in k8s_containers():
        if is_fluxq_image(container["image"]):
            entry = as_argv(container.get("command")) or image_entrypoint()
            args = fluxq_args(entry + as_argv(container.get("args")), doc["metadata"]["name"])
            found[args[0]] = (doc, container, Invocation(doc["metadata"]["name"], args))
    return found


def named_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    assert isinstance(number, int)
    return number


def probe_ports(container: dict[str, Any]) -> Iterator[tuple[str, int, str | None]]:
    for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
        probe = container.get(kind) or {}
        for handler in ("httpGet", "tcpSocket"):
            if handler in probe:
                yield (
                    kind,
                    named_port(container, probe[handler]["port"]),
                    probe[handler].get("path"),
                )


def test_k8s_deployments_for_workers_api_and_flower() -> None:
    components = k8s_by_component()
    for command in ("worker", "api", "flower"):
        assert command in components, f"no Deployment runs fluxq {command}"
        assert components[command][0]["kind"] == "Deployment"


def test_k8s_ports_and_probes_match_each_commands_port() -> None:
    for command, (doc, container, invocation) in k8s_by_component().items():
        declared = {p["containerPort"] for p in container.get("ports", [])}
        probes = {port for _, port, _ in probe_ports(container)}
        if command in HTTP_COMMANDS:
            assert declared | probes <= {port_of(invocation)}, doc["metadata"]["name"]
        else:
            assert not declared, f"{command} listens on no port"


def test_the_api_is_probed_on_healthz_and_readyz() -> None:
    _, container, _ = k8s_by_component()["api"]
    probes = {kind: path for kind, _, path in probe_ports(container)}
    assert probes["readinessProbe"] == "/readyz"
    assert probes["livenessProbe"] == "/healthz"


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    assert isinstance(labels, dict)
    return labels


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_k8s_services_reach_their_pods_on_the_commands_port() -> None:
    components = k8s_by_component()
    reached: set[str] = set()
    for service in k8s_of("Service"):
        matched = [
            c
            for c, (doc, _, _) in components.items()
            if selects(service["spec"]["selector"], pod_labels(doc))
        ]
        for command in matched:
            _, container, invocation = components[command]
            for port in service["spec"]["ports"]:
                assert named_port(container, port["targetPort"]) == port_of(invocation)
            annotated = service["metadata"].get("annotations", {}).get("prometheus.io/port")
            assert annotated in (None, str(port_of(invocation)))
            reached.add(command)
    assert {"api", "flower"} <= reached


def test_k8s_workers_have_a_disruption_budget() -> None:
    worker, _, _ = k8s_by_component()["worker"]
    budgets = [
        b
        for b in k8s_of("PodDisruptionBudget")
        if selects(b["spec"]["selector"]["matchLabels"], pod_labels(worker))
    ]
    assert budgets, "no PodDisruptionBudget selects the workers"
    assert (
        worker["spec"]["selector"]["matchLabels"] == budgets[0]["spec"]["selector"]["matchLabels"]
    )


def test_k8s_containers_have_resources_and_run_as_non_root() -> None:
    for doc, container in k8s_containers():
        name = f"{doc['metadata']['name']}/{container['name']}"
        resources = container.get("resources", {})
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources.get(kind, {})), f"{name}: {kind}"
        pod = doc["spec"]["template"]["spec"].get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, name
        assert container.get("securityContext", {}).get("allowPrivilegeEscalation") is False, name


def env_refs(container: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for entry in container.get("env", []):
        yield entry["name"], entry


def test_k8s_secrets_live_in_the_secret_and_its_placeholders_are_refused() -> None:
    (secret,) = k8s_of("Secret")
    keys = set(secret["stringData"])
    assert keys >= REQUIRED_SECRETS
    assert keys <= secret_names() | SECRET_EXTRAS
    for key, value in secret["stringData"].items():
        assert "REPLACE" in value, f"{key}: the template holds placeholders only"
        with pytest.raises(ConfigError):  # fluxq refuses to start on a placeholder
            load_settings(_env_file=None, **{field_of()[key]: value})
    for config_map in k8s_of("ConfigMap"):
        assert not set(config_map["data"]) & secret_names(), "a secret in a ConfigMap"
    for doc, container in k8s_containers():
        for name, entry in env_refs(container):
            if name in secret_names():
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                assert ref, f"{doc['metadata']['name']}: {name} not from the Secret"
                assert "value" not in entry, f"{doc['metadata']['name']}: {name} inline"
                assert ref["name"] == secret["metadata"]["name"]
                assert ref["key"] in keys or ref.get("optional") is True


def test_k8s_references_resolve() -> None:
    config_maps = {c["metadata"]["name"] for c in k8s_of("ConfigMap")}
    claims = {c["metadata"]["name"] for c in k8s_of("PersistentVolumeClaim")}
    for doc, container in k8s_containers():
        for source in container.get("envFrom", []):
            assert source["configMapRef"]["name"] in config_maps
        for volume in doc["spec"]["template"]["spec"].get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims


def test_the_optional_k8s_redis_is_one_replica_with_aof_and_noeviction() -> None:
    (redis_set,) = [s for s in k8s_of("StatefulSet") if s["metadata"]["name"] == "fluxq-redis"]
    assert redis_set["spec"]["replicas"] == 1
    assert redis_set["spec"]["volumeClaimTemplates"]
    (container,) = redis_set["spec"]["template"]["spec"]["containers"]
    args = " ".join(as_argv(container.get("args")))
    assert "--appendonly yes" in args
    assert "--maxmemory-policy noeviction" in args
    (config_map,) = k8s_of("ConfigMap")
    host = urlsplit(config_map["data"]["FLUXQ_REDIS_URL"]).hostname
    assert host == redis_set["spec"]["serviceName"]


# --- systemd ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", unit_files(), ids=lambda p: p.name)
def test_systemd_units_parse_and_are_hardened(path: Path) -> None:
    unit = read_unit(path)
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    assert unit["Unit"].get("Description")
    service = unit["Service"]
    assert service.get("User") not in (None, "", "root", "0")
    assert service.get("EnvironmentFile") == "/etc/fluxq/env"
    assert service.get("Restart") == "on-failure"
    assert service.get("NoNewPrivileges") == "yes"
    assert service.get("ProtectSystem") == "strict"
    assert unit["Install"].get("WantedBy")
    assert not set(unit_environment(unit)) & secret_names(), "a secret in Environment="


def writable_paths(unit: configparser.ConfigParser) -> list[PurePosixPath]:
    service = unit["Service"]
    paths = [PurePosixPath(p) for p in service.get("ReadWritePaths", "").split()]
    paths += [PurePosixPath("/var/lib") / d for d in service.get("StateDirectory", "").split()]
    return paths


@pytest.mark.parametrize("path", unit_files(), ids=lambda p: p.name)
def test_systemd_units_can_write_what_they_write(path: Path) -> None:
    unit = read_unit(path)
    writable = writable_paths(unit)
    (invocation,) = [i for i in systemd_invocations() if i.where == f"systemd:{path.name}"]
    _, context = parse_fluxq(list(invocation.args))
    wanted = [PurePosixPath(unit["Service"]["WorkingDirectory"])]
    if "FLUXQ_OUTPUT_DIR" in unit_environment(unit):
        wanted.append(PurePosixPath(unit_environment(unit)["FLUXQ_OUTPUT_DIR"]))
    db = context.params.get("db")
    if db is not None:
        wanted.append(PurePosixPath(str(db)).parent)
    for target in wanted:
        assert any(target == w or w in target.parents for w in writable), f"{target} read-only"


def test_workers_and_the_api_write_and_read_the_same_output_dir_under_systemd() -> None:
    dirs = {}
    for path in unit_files():
        unit = read_unit(path)
        (invocation,) = [i for i in systemd_invocations() if i.where == f"systemd:{path.name}"]
        if invocation.command in ("worker", "api"):
            dirs[invocation.command] = unit_environment(unit).get("FLUXQ_OUTPUT_DIR")
    assert dirs.keys() == {"worker", "api"}
    assert dirs["worker"] == dirs["api"]
    assert dirs["worker"].startswith("/")


# --- the image's HEALTHCHECK script -------------------------------------------------------------


@cache
def healthcheck_module() -> ModuleType:
    # Compiled by hand, not imported: no __pycache__ is left in deploy/.
    module = ModuleType("fluxq_image_healthcheck")
    module.__file__ = str(HEALTHCHECK)
    exec(compile(HEALTHCHECK.read_text(), str(HEALTHCHECK), "exec"), module.__dict__)
    return module


def fake_proc(root: Path, processes: dict[int, list[str]]) -> Path:
    for pid, argv in processes.items():
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (root / "self").mkdir()
    return root


def test_healthcheck_calls_the_api_where_the_compose_file_runs_it(tmp_path: Path) -> None:
    script = healthcheck_module()
    args = list(compose_by_service()["api"].args)
    proc = fake_proc(
        tmp_path,
        {
            1: ["/sbin/docker-init", "--", "fluxq", *args],
            7: ["/opt/fluxq/bin/python", "/opt/fluxq/bin/fluxq", *args],
        },
    )
    seen: list[str] = []

    def fetch(url: str) -> int:
        seen.append(url)
        return 200

    assert script.check(proc, fetch)[0] is True
    assert seen == [f"http://127.0.0.1:{port_of(compose_by_service()['api'])}/healthz"]

    def down(url: str) -> int:
        raise ConnectionRefusedError(url)

    assert script.check(proc, down)[0] is False


def test_healthcheck_of_a_worker_needs_a_live_celery_child(tmp_path: Path) -> None:
    script = healthcheck_module()
    supervisor = ["/opt/fluxq/bin/python", "/opt/fluxq/bin/fluxq", "worker"]
    child = ["/opt/fluxq/bin/python", "-P", "-m", "fluxq.worker_process", "--name", "fluxq"]
    assert script.check(fake_proc(tmp_path / "a", {1: supervisor, 9: child}))[0] is True
    assert script.check(fake_proc(tmp_path / "b", {1: supervisor}))[0] is False
    assert script.check(fake_proc(tmp_path / "c", {1: ["sleep", "1"]}))[0] is False
    # a child's `--name fluxq` is an option's value, not the fluxq program
    assert script.check(fake_proc(tmp_path / "d", {5: child}))[0] is False
    assert script.command_of(
        fake_proc(tmp_path / "e", {3: ["python", "-m", "fluxq", "worker"]})
    ) == ["worker"]


@pytest.mark.parametrize("command", HTTP_COMMANDS)
def test_healthcheck_finds_each_http_commands_route_and_port(command: str, tmp_path: Path) -> None:
    script = healthcheck_module()
    flag = script.HOST_OPTIONS[command]
    args = [command, f"{flag}=0.0.0.0", "--port=9999"]
    assert script.url_for(args) == f"http://127.0.0.1:9999{script.HEALTH_PATHS[command]}"
    default = script.url_for([command])
    assert default == f"http://127.0.0.1:{cli_default_port(command)}{script.HEALTH_PATHS[command]}"
    parse_fluxq(args)  # the options the script reads are the command's own


def test_healthcheck_sends_the_token_to_metrics_and_only_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Off loopback `fluxq metrics` answers 401 without FLUXQ_API_TOKEN as a bearer token
    import http.server
    import threading

    seen: list[str | None] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("FLUXQ_API_TOKEN", "metrics-token-123")
        base = f"http://127.0.0.1:{server.server_address[1]}"
        script = healthcheck_module()
        assert script.http_status(f"{base}/metrics") == 200
        assert script.http_status(f"{base}/healthz") == 200
    finally:
        server.shutdown()
        server.server_close()
    assert seen == ["Bearer metrics-token-123", None]


def test_the_optional_k8s_sentinel_set_is_three_servers_and_three_sentinels_fluxq_can_name() -> (
    None
):
    by_name = {s["metadata"]["name"]: s for s in k8s_of("StatefulSet")}
    servers, sentinels = by_name["fluxq-redis-ha"], by_name["fluxq-redis-sentinel"]
    assert servers["spec"]["replicas"] == sentinels["spec"]["replicas"] == 3
    assert servers["spec"]["volumeClaimTemplates"]
    (server,) = servers["spec"]["template"]["spec"]["containers"]
    script = " ".join(as_argv(server["command"]))
    assert "--appendonly yes" in script
    assert "--maxmemory-policy noeviction" in script
    assert "get-master-addr-by-name mymaster" in script  # a restarted master comes back a replica
    (sentinel,) = sentinels["spec"]["template"]["spec"]["containers"]
    assert "mymaster $master 6379 2" in " ".join(as_argv(sentinel["command"]))  # quorum 2
    services = {s["metadata"]["name"] for s in k8s_of("Service")}
    assert {servers["spec"]["serviceName"], sentinels["spec"]["serviceName"]} <= services
    # The URL its header gives parses as fluxq's and names the three Sentinel pods
    text = (K8S / "optional" / "redis-sentinel.yaml").read_text()
    url = re.search(r'FLUXQ_REDIS_URL: "(sentinel://[^"]+)"', text)
    assert url is not None
    names = [host for host, _port in parse_sentinel(url.group(1)).sentinels]
    assert names == [f"fluxq-redis-sentinel-{n}.fluxq-redis-sentinel" for n in range(3)]
