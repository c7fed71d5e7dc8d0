"""docker-compose.yaml, .env and the Dockerfile, checked without a Docker engine.

The compose file is validated against the Compose Specification schema that check-jsonschema ships (vendored and
kept current there: ``check_jsonschema/builtin_schemas/vendor/compose-spec.json``, from compose-spec/compose-spec),
then against what the relay needs: the services, their wiring, the settings dicom_relay.config reads, the
files it mounts, and an .env that defines every variable it needs and holds placeholders only.
"""

from __future__ import annotations

import importlib.resources
import json
import re
import shlex
import sys
from pathlib import Path, PurePosixPath

import jsonschema
import pytest
import yaml
from dotenv import dotenv_values
from dotenv.parser import parse_stream

from dicom_relay.config import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
ENV_FILE = ROOT / ".env"
DOCKERFILE = ROOT / "Dockerfile"
SCHEMA = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"

AIRFLOW_SERVICES = {
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-init",
}
REQUIRED_SERVICES = AIRFLOW_SERVICES | {"postgres", "redis", "orthanc", "gcs", "identifier-service"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|FERNET|_KEY$")


# ------------------------------------------------------------------------------------------------- helpers


def load_compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())  # safe_load resolves anchors and "<<" merge keys


def parse_env_file(path: Path) -> dict[str, str]:
    """The .env as python-dotenv reads it (raw values: compose interpolates them, not this test), after checking
    that every line parses and no variable is set twice (the later line would silently win)."""
    seen: set[str] = set()
    with path.open() as stream:
        for binding in parse_stream(stream):
            assert not binding.error, f".env line {binding.original.line} is not KEY=VALUE"
            if binding.key is None:  # a blank line or a comment
                continue
            assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", binding.key), f".env line {binding.original.line}: bad name"
            assert binding.key not in seen, f".env defines {binding.key} twice"
            seen.add(binding.key)
    return {k: v or "" for k, v in dotenv_values(path, interpolate=False).items()}


def interpolations(text: str) -> list[tuple[str, str | None, str | None]]:
    """Every ``${NAME[op]word}`` / ``$NAME`` in ``text`` as (name, op, word); ``$$`` is a literal dollar."""
    found = []
    i = 0
    while i < len(text):
        if text[i] != "$":
            i += 1
            continue
        nxt = text[i + 1 : i + 2]
        if nxt == "$":
            i += 2
            continue
        if nxt == "{":
            depth, j = 1, i + 2
            while j < len(text) and depth:
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                j += 1
            assert depth == 0, f"unclosed ${{ in {text!r}"
            body = text[i + 2 : j - 1]
            m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?", body, re.S)
            assert m, f"not a compose interpolation: ${{{body}}}"
            found.append((m.group(1), m.group(2), m.group(3)))
            found.extend(interpolations(m.group(3) or ""))
            i = j
            continue
        m = re.match(r"[A-Za-z_][A-Za-z0-9_]*", text[i + 1 :])
        if m:
            found.append((m.group(0), None, None))
            i += 1 + len(m.group(0))
        else:
            i += 1
    return found


def strings_in(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():  # compose interpolates values, not keys
            yield from strings_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings_in(value)


def resolve(text: str, env: dict[str, str]) -> str:
    """Interpolate ``text`` as compose would with ``env`` (the .env file) as the environment."""

    def one(m):
        name, op, word = m.group(1), m.group(2), m.group(3) or ""
        if op in (":-",):
            return env.get(name) or word
        if op == "-":
            return env[name] if name in env else word
        return env.get(name, "")

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}", one, text.replace("$$", "\0")).replace("\0", "$")


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def short_volumes(service: dict) -> list[tuple[str, str]]:
    """(source, target) of each volume in short syntax ``source:target[:mode]``."""
    pairs = []
    for volume in service.get("volumes", []):
        assert isinstance(volume, str), "use the short volume syntax (the checks below read it)"
        # Split on the colons outside ${...}: a default such as ${DIR:-.} holds one.
        masked = re.sub(r"\$\{[^}]*\}", lambda m: "\0" * len(m.group(0)), volume)
        cuts = [i for i, ch in enumerate(masked) if ch == ":"]
        parts = [volume[a + 1 : b] for a, b in zip([-1, *cuts], [*cuts, len(volume)])]
        assert len(parts) in (2, 3), f"volume {volume!r} is not source:target[:mode]"
        pairs.append((parts[0], parts[1]))
    return pairs


def depends_on(service: dict) -> list[str]:
    deps = service.get("depends_on", [])
    return list(deps) if isinstance(deps, (list, dict)) else []


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


@pytest.fixture(scope="module")
def env_file() -> dict[str, str]:
    """The .env as shipped (every secret empty)."""
    return parse_env_file(ENV_FILE)


@pytest.fixture(scope="module")
def filled_env(env_file) -> dict[str, str]:
    """The .env as an operator fills it in: a distinct real-looking value for each secret."""
    return {k: (f"{k.lower().strip('_')}-3f9a1c7e5b" if SECRET_NAME.search(k) else v) for k, v in env_file.items()}


def refusals(compose: dict, env: dict[str, str]) -> dict[str, str]:
    """What ``docker compose up`` refuses with ``env``: {variable: message} for each ``${VAR:?message}`` whose
    variable is empty or unset (``:?``) or unset (``?``)."""
    found = {}
    for text in strings_in(compose):
        for name, op, word in interpolations(text):
            if (op == ":?" and not env.get(name)) or (op == "?" and name not in env):
                found[name] = word or ""
    return found


# ---------------------------------------------------------------------------------------- the compose file


def test_compose_file_follows_the_compose_specification(compose):
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)  # the draft the schema declares
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_required_services_are_present(compose):
    missing = REQUIRED_SERVICES - set(compose["services"])
    assert not missing, f"services missing: {sorted(missing)}"


def test_every_depends_on_names_a_service(compose):
    services = set(compose["services"])
    dangling = {
        (name, dep) for name, service in compose["services"].items() for dep in depends_on(service) if dep not in services
    }
    assert not dangling, f"depends_on names unknown services: {sorted(dangling)}"


def test_airflow_services_follow_the_airflow3_celery_shape(compose):
    for name in AIRFLOW_SERVICES:
        service = compose["services"][name]
        env = environment(service)
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/", name
        assert env["AIRFLOW__CORE__LOAD_EXAMPLES"].lower() == "false", name
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"], f"{name}: components must share one JWT secret"
        assert {"postgres", "redis"} <= set(depends_on(service)), name
        assert service.get("build", {}).get("dockerfile") == "Dockerfile", f"{name} must run the project's image"
        targets = {target for _, target in short_volumes(service)}
        for needed in ("/opt/airflow/dags", "/opt/airflow/logs", "/opt/airflow/config", "/opt/airflow/plugins",
                       "/opt/dicom-relay/include", "/data"):
            assert needed in targets, f"{name} does not mount {needed}"
    commands = {compose["services"][n].get("command") for n in AIRFLOW_SERVICES - {"airflow-init"}}
    assert commands == {"api-server", "scheduler", "dag-processor", "triggerer", "celery worker"}
    init_env = environment(compose["services"]["airflow-init"])
    assert init_env["_AIRFLOW_DB_MIGRATE"] == "true"


def test_airflow_services_get_every_relay_setting(compose):
    """Whatever name dicom_relay.config.Settings reads must reach the Airflow services."""
    names = Settings.variables()
    assert len(names) > 20 and "RELAY_SECRET_KEY" in names
    # from_env really reads every one of them: a distinct number for each changes every numeric setting.
    numeric = [n for n, f in zip(names, Settings.model_fields.values()) if f.annotation in (int, float)]
    read = Settings.from_env({n: str(i + 7) for i, n in enumerate(numeric)})
    assert [getattr(read, f) for f, v in Settings.model_fields.items() if v.validation_alias in numeric] == [
        i + 7 for i in range(len(numeric))]
    for name in AIRFLOW_SERVICES:
        missing = set(names) - set(environment(compose["services"][name]))
        assert not missing, f"{name} lacks {sorted(missing)}"


def test_airflow_services_get_the_service_account_that_writes_run_notes(compose):
    """The tasks write run notes through the REST API as a User-role account (dicom_relay.airflow_client reads
    these three); airflow-init creates that account."""
    for name in AIRFLOW_SERVICES:
        env = environment(compose["services"][name])
        assert {"AIRFLOW_URL", "AIRFLOW_USER", "AIRFLOW_PASSWORD"} <= set(env), name
        assert env["AIRFLOW_URL"].startswith("http://airflow-apiserver:"), name
    init = " ".join(map(str, compose["services"]["airflow-init"]["command"]))
    assert "airflow users create" in init and "--role User" in init


def test_inbox_and_work_dir_share_one_mount_so_claims_are_renames(compose):
    service = compose["services"]["airflow-worker"]
    env = environment(service)
    assert (env["RELAY_INBOX"], env["RELAY_WORK_DIR"]) == ("/data/inbox", "/data/relay")
    targets = [PurePosixPath(t) for _, t in short_volumes(service)]

    def mount_of(path: str) -> PurePosixPath:
        return max((t for t in targets if PurePosixPath(path).is_relative_to(t)), key=lambda t: len(t.parts))

    assert mount_of(env["RELAY_INBOX"]) == mount_of(env["RELAY_WORK_DIR"]) == PurePosixPath("/data")


def test_safety_switches_default_on_when_blank(compose, filled_env):
    env_file = filled_env
    env = environment(compose["services"]["airflow-worker"])
    blank = {**env_file, "DEIDENTIFY_RESTFUL": "", "SEND_TO_ORTHANC": "", "SEND_TO_GOOGLE": ""}
    settings = Settings.from_env({k: resolve(v, blank) for k, v in env.items()})
    assert settings.deidentify and settings.send_orthanc and settings.send_gcs
    # ... while an empty identifier URL stays empty: it selects the embedded provider.
    settings = Settings.from_env({k: resolve(v, {**env_file, "RELAY_IDENTIFIER_URL": ""}) for k, v in env.items()})
    assert settings.identifier_url == ""


def test_settings_resolve_to_the_compose_services(compose, filled_env):
    env_file = filled_env
    services = compose["services"]
    env = {k: resolve(v, env_file) for k, v in environment(services["airflow-worker"]).items()}
    settings = Settings.from_env(env)
    assert settings.inbox == Path("/data/inbox") and settings.work_dir == Path("/data/relay")
    id_command = [str(a) for a in services["identifier-service"]["command"]]
    assert "dicom_relay.identifiers.service" in id_command
    id_port = id_command[id_command.index("--port") + 1]
    assert settings.identifier_url == f"http://identifier-service:{id_port}"
    assert settings.orthanc_host == "orthanc" and settings.orthanc_url == "http://orthanc:8042"
    assert env["STORAGE_EMULATOR_HOST"] == "http://gcs:4443"
    gcs_command = [str(a) for a in services["gcs"]["command"]]
    assert gcs_command[gcs_command.index("-port") + 1] == "4443"
    assert re.fullmatch(r"postgresql://relay:[^@]+@postgres:5432/relay", settings.db_url)
    # One token configures both ends of the identifier service.
    id_env = {k: resolve(v, env_file) for k, v in environment(services["identifier-service"]).items()}
    assert id_env["RELAY_IDENTIFIER_TOKEN"] == settings.identifier_token.get_secret_value() != ""
    settings.require_secrets(deidentify=True, send_orthanc=True)  # what the tasks check before they start


def test_airflow_reads_endpoints_from_connections_matching_the_services(compose, filled_env, monkeypatch):
    """The Connections compose gives Airflow (environment secrets backend) resolve, through the relay's own hooks,
    to the same endpoints and secrets as the plain settings the CLI reads in the containers."""
    from dicom_relay.airflow import connections

    env = {k: resolve(v, filled_env) for k, v in environment(compose["services"]["airflow-worker"]).items()}
    for name in list(Settings.variables()) + [n for n in env if n.startswith("AIRFLOW_CONN_")]:
        monkeypatch.delenv(name, raising=False)
    plain = Settings.from_env(env)
    for name, value in env.items():
        if name.startswith("AIRFLOW_CONN_"):
            json.loads(value)  # valid JSON once interpolated
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("RELAY_INBOX", "/data/inbox")
    via_connections = connections.task_settings()
    for field in ("db_url", "orthanc_url", "orthanc_transport", "orthanc_host", "orthanc_dicom_port", "orthanc_ae_title",
                  "orthanc_user", "orthanc_password", "gcs_bucket", "gcs_project", "gcs_prefix", "gcs_emulator_host",
                  "identifier_url", "identifier_token"):
        assert getattr(via_connections, field) == getattr(plain, field), field


def test_identifier_service_keeps_its_mapping_on_a_volume(compose):
    service = compose["services"]["identifier-service"]
    command = [str(a) for a in service["command"]]
    assert command[:3] == ["python", "-m", "dicom_relay.identifiers.service"]
    assert "--token" not in command, "the token belongs in the environment, not on the command line"
    db = PurePosixPath(command[command.index("--db") + 1])
    named = {target for source, target in short_volumes(service) if not source.startswith((".", "/", "$"))}
    assert any(db.is_relative_to(t) for t in named), "the pseudonym mapping must live on a named volume"
    assert "RELAY_IDENTIFIER_TOKEN" in environment(service)
    assert service["healthcheck"]["test"], "workers wait for it to be healthy"
    assert compose["services"]["airflow-worker"]["depends_on"]["identifier-service"]["condition"] == "service_healthy"


def test_orthanc_requires_authentication_with_credentials_from_env(compose):
    service = compose["services"]["orthanc"]
    sources = {target: source for source, target in short_volumes(service)}
    config_path = ROOT / sources["/etc/orthanc/orthanc.json"]
    config = json.loads(config_path.read_text())
    assert config["AuthenticationEnabled"] is True
    assert config["RegisteredUsers"] == {"${ORTHANC_USER}": "${ORTHANC_PASSWORD}"}
    # Orthanc substitutes ${VAR} from its own environment: every one it uses must be given to the container.
    used = {name for name, _, _ in interpolations(config_path.read_text())}
    missing = used - set(environment(service))
    assert not missing, f"docker/orthanc.json uses {sorted(missing)} that the orthanc service does not set"



def test_only_the_api_server_is_published_and_on_loopback_by_default(compose, env_file):
    published = {name: service["ports"] for name, service in compose["services"].items() if service.get("ports")}
    assert set(published) == {"airflow-apiserver"}, f"published ports beyond the api-server: {published}"
    (port,) = published["airflow-apiserver"]
    assert resolve(str(port), env_file) == "127.0.0.1:8080:8080"


def test_postgres_creates_the_relay_database(compose):
    service = compose["services"]["postgres"]
    init = {target: source for source, target in short_volumes(service) if target.startswith("/docker-entrypoint-initdb.d/")}
    assert len(init) == 1
    script = (ROOT / next(iter(init.values()))).read_text()
    assert "CREATE DATABASE relay OWNER relay" in script
    assert "RELAY_DB_PASSWORD" in script and "RELAY_DB_PASSWORD" in environment(service)


def test_postgres_cancels_statements_of_clients_that_are_gone_as_the_local_stack_does(compose):
    # The local stack's setting, tested on a real server in tests/integration/test_stack_postgres.py.
    command = compose["services"]["postgres"]["command"]
    assert command[0] == "postgres" and "client_connection_check_interval=2s" in command
    local = (ROOT / "tests" / "support" / "stack" / "postgres.py").read_text()
    assert '"client_connection_check_interval=2s"' in local


def test_volume_sources_exist_or_are_created_by_airflow_init(compose, env_file):
    init_script = "\n".join(strings_in(compose["services"]["airflow-init"].get("command", "")))
    created = {PurePosixPath(p) for line in init_script.splitlines() if "mkdir" in line for p in shlex.split(line) if p.startswith("/")}
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for source, target in short_volumes(service):
            source = resolve(source, env_file)
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: named volume {source!r} is not declared under volumes:"
                continue
            path = (ROOT / source).resolve()
            assert path.is_relative_to(ROOT), f"{name}: {source} points outside the repository"
            if path.exists():
                continue
            # Docker creates a missing bind source as an empty folder; that is only right for folders that
            # airflow-init then creates and hands to AIRFLOW_UID (logs/, config/, the data folder).
            made_here = {c for c in created if c == PurePosixPath(target) or c.is_relative_to(target)}
            assert made_here, f"{name}: {source} does not exist and airflow-init does not create {target}"


def test_build_contexts_exist(compose):
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            context = ROOT / build.get("context", ".")
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name


# ------------------------------------------------------------------------------------------------------ .env


def test_every_variable_without_a_default_is_defined_in_env(compose, env_file):
    needed = {
        name for text in strings_in(compose) for name, op, _ in interpolations(text) if op in (None, "?", ":?")
    }
    missing = needed - set(env_file)
    assert not missing, f".env lacks {sorted(missing)}"


def test_compose_refuses_the_shipped_env_naming_each_secret(compose, env_file, filled_env):
    """``docker compose up`` with .env as shipped stops before anything starts, and says which secret to set."""
    refused = refusals(compose, env_file)
    secrets_in_env = {k for k in env_file if SECRET_NAME.search(k)}
    assert set(refused) == secrets_in_env, "every secret of .env (and nothing else) must stop compose until set"
    for name, message in refused.items():
        assert message.startswith(f"{name} is empty") and "set it in .env" in message, message
    assert refusals(compose, filled_env) == {}, "once every secret is set, compose starts"


def test_every_env_entry_is_used_by_compose(compose, env_file):
    used = {name for text in strings_in(compose) for name, _, _ in interpolations(text)}
    unused = set(env_file) - used
    assert not unused, f".env sets {sorted(unused)} that docker-compose.yaml never reads (a typo?)"


def test_secrets_are_required_and_never_defaulted(compose):
    for text in strings_in(compose):
        for name, op, word in interpolations(text):
            if SECRET_NAME.search(name):
                assert op == ":?", f"${{{name}}} must be required (:?) so compose refuses to start without it"


def test_env_holds_placeholders_not_secrets(env_file):
    for key, value in env_file.items():
        if SECRET_NAME.search(key):
            # Empty, not a placeholder: compose can refuse an empty value (:?) but would accept "change-me".
            assert value == "", f".env {key} must be empty (compose then refuses to start until it is set)"
        else:
            assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", value), f".env {key} embeds credentials in a URL"
            assert not re.fullmatch(r"[A-Za-z0-9+/_=-]{32,}", value), f".env {key} looks like a key or token"


# ------------------------------------------------------------------------------------------------ Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_extends_airflow_3_3_2_as_pinned_in_requirements():
    instructions = dockerfile_instructions()
    args = dict(rest.split("=", 1) for word, rest in instructions if word == "ARG" and "=" in rest)
    base = next(rest for word, rest in instructions if word == "FROM")
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    assert re.fullmatch(r"apache/airflow:3\.3\.2(-python3\.\d+)?", base), base
    pins = (ROOT / "requirements.txt").read_text().splitlines()
    assert "apache-airflow==3.3.2" in pins, "requirements.txt must pin the image's Airflow"
    python = re.search(r"-python(3\.\d+)$", base)
    if python:
        assert python.group(1) == f"{sys.version_info.major}.{sys.version_info.minor}", (
            "the image's Python should be the one requirements.txt was frozen with"
        )


def test_dockerfile_installs_requirements_and_the_project():
    instructions = dockerfile_instructions()
    copies = {}
    for word, rest in instructions:
        if word == "COPY":
            parts = [p for p in rest.split() if not p.startswith("--")]
            for source in parts[:-1]:
                copies[source] = parts[-1]
                assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
    runs = [rest for word, rest in instructions if word == "RUN"]

    req = copies.get("requirements.txt")
    assert req, "the Dockerfile must COPY requirements.txt"
    assert any(re.search(rf"pip install .*-r {re.escape(req)}", r) for r in runs), "requirements.txt is not installed"
    assert any('"apache-airflow==${AIRFLOW_VERSION}"' in r for r in runs), "pin Airflow while installing requirements"

    project = PurePosixPath(copies["pyproject.toml"]).parent
    assert copies.get("include") == f"{project}/include", "the package sources must sit beside pyproject.toml"
    assert any(re.search(rf"pip install .*-e {re.escape(str(project))}(\s|$)", r) for r in runs), "project not installed"
    assert any("import dicom_relay" in r for r in runs), "the build should prove dicom_relay imports"
