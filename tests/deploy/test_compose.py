"""docker-compose.yml as an attacker and a careless operator would meet it: no default secret, a clear message
naming each missing one, nothing published on all interfaces, each service with only the environment it needs,
Redis with a password and a memory ceiling, ClickHouse's app user without access management, `.env` ignored.

`docker-compose config` (Debian's docker-compose 1.29, installed by scripts/install-system.sh) validates the file
without a Docker engine; those tests skip only when the binary is missing. The rest parses the YAML.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
TEXT = COMPOSE.read_text(encoding="utf-8")
SERVICES: dict[str, Any] = yaml.safe_load(TEXT)["services"]  # PyYAML resolves the `<<: *anchor` merges

# Every secret the stack needs, with no default: `docker-compose config` fails naming the first one missing.
REQUIRED = {
    "NUDGE_WRITE_KEYS": "collector write keys",
    "REDIS_PASSWORD": "Redis requirepass, and in the app URLs",
    "CLICKHOUSE_PASSWORD": "ClickHouse user nudge, and in the sink's DSN",
    "GRAFANA_ADMIN_PASSWORD": "Grafana admin",
    "NUDGE_WEBHOOK_SECRET": "webhook HMAC key",
    "NUDGE_UNSUBSCRIBE_SECRET": "unsubscribe link signatures",
    "NUDGE_COLLECTOR_PUBLIC_URL": "the collector's public https URL, for unsubscribe links",
    "NUDGE_REPS_API_TOKEN": "bearer token of the assignment API",
    "NUDGE_REPS_LINK_SECRET": "reps' signed links (made by the dispatcher, checked by reps)",
}
NUDGE_SERVICES = ("collector", "worker", "dispatcher", "sink", "reps")
KAFKA_CLIENT = {
    "NUDGE_BROKER_URL", "NUDGE_BROKER_PROFILE", "NUDGE_APP_ID", "NUDGE_PARTITIONS", "NUDGE_LOG_LEVEL",
    "NUDGE_KAFKA_SECURITY_PROTOCOL", "NUDGE_KAFKA_SASL_MECHANISM", "NUDGE_KAFKA_SASL_USERNAME",
    "NUDGE_KAFKA_SASL_PASSWORD", "NUDGE_KAFKA_CA_FILE",
}  # fmt: skip
CONNECTOR_VARIABLES = {
    "NUDGE_WEBHOOK_URL", "NUDGE_WEBHOOK_SECRET", "NUDGE_SLACK_WEBHOOK_URL", "NUDGE_SMTP_HOST", "NUDGE_SMTP_PORT",
    "NUDGE_SMTP_SECURITY", "NUDGE_SMTP_USERNAME", "NUDGE_SMTP_PASSWORD", "NUDGE_EMAIL_FROM", "NUDGE_SITE_URL",
    "NUDGE_UNSUBSCRIBE_SECRET", "NUDGE_KAFKA_CONNECTOR_TOPIC", "NUDGE_CRM_URL", "NUDGE_CRM_TOKEN",
}  # fmt: skip
# What each Nudge process is given (docs/security.md, "What each process needs"): every one talks to Kafka; the
# rest only where the code uses it (grep `settings.` in its package).
REPS_LINKS = {"NUDGE_REPS_LINK_SECRET", "NUDGE_REPS_PUBLIC_URL"}
ENVIRONMENT = {
    "collector": KAFKA_CLIENT | {
        "NUDGE_REDIS_URL", "NUDGE_COLLECTOR_PORT", "NUDGE_WRITE_KEYS", "NUDGE_SERVER_WRITE_KEYS",
        "NUDGE_USER_HASH_SECRET", "NUDGE_COLLECTOR_PUBLIC_URL", "NUDGE_COLLECTOR_FORWARDED_HOPS",
        "NUDGE_UNSUBSCRIBE_SECRET", "NUDGE_UNSUBSCRIBE_PREVIOUS_SECRETS",
    },
    "worker": KAFKA_CLIENT | {"NUDGE_WEB_PORT", "NUDGE_ALLOWED_LATENESS_S"},
    "dispatcher": KAFKA_CLIENT
    | {"NUDGE_REDIS_URL", "NUDGE_DEFAULT_TIMEZONE", "NUDGE_COLLECTOR_PUBLIC_URL"}
    | CONNECTOR_VARIABLES
    | REPS_LINKS,
    "sink": KAFKA_CLIENT | {"NUDGE_CLICKHOUSE_DSN"},
    "reps": KAFKA_CLIENT | {"NUDGE_REDIS_URL", "NUDGE_REPS_API_TOKEN"} | REPS_LINKS,
}  # fmt: skip
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|WRITE_KEYS|_AUTH$")


def environment(service: str) -> dict[str, Any]:
    return SERVICES[service].get("environment") or {}


# --- docker-compose config --------------------------------------------------------------------------------------

needs_compose = pytest.mark.skipif(
    not shutil.which("docker-compose"), reason="docker-compose not installed (scripts/install-system.sh)"
)


def compose_config(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` in a clean environment: only `env`, and an empty env file instead of a developer's
    .env beside the compose file."""
    empty = tmp_path / "empty.env"
    empty.write_text("")
    return subprocess.run(
        ["docker-compose", "--env-file", str(empty), "-f", str(COMPOSE), "config", *args],
        cwd=ROOT, env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def filled() -> dict[str, str]:
    return {name: f"test-{name.lower().replace('_', '-')}-0123456789abcdef" for name in REQUIRED}


def test_the_required_variables_are_exactly_the_secrets_and_the_public_url() -> None:
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", TEXT))
    assert required == set(REQUIRED)


@needs_compose
def test_config_passes_with_the_required_variables_set(tmp_path: Path) -> None:
    result = compose_config(tmp_path, filled(), "-q")
    assert result.returncode == 0, result.stderr


@needs_compose
@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_config_fails_naming_each_missing_variable(tmp_path: Path, missing: str) -> None:
    for value in ("", None):  # set but empty counts as missing (`:?`)
        env = {k: v for k, v in filled().items() if k != missing}
        if value is not None:
            env[missing] = value
        result = compose_config(tmp_path, env, "-q")
        assert result.returncode != 0
        # docker-compose 1.29 stops at the first missing variable; its last line ends with our message.
        assert f": {missing} is required (" in result.stderr.strip().splitlines()[-1], result.stderr


@needs_compose
def test_the_interpolated_file_publishes_nothing_on_all_interfaces(tmp_path: Path) -> None:
    result = compose_config(tmp_path, filled())
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert not exposed_ports(services), exposed_ports(services)
    assert "NUDGE_CLICKHOUSE_DSN" not in services["collector"]["environment"]


# --- the YAML itself ----------------------------------------------------------------------------------------------


def exposed_ports(services: dict[str, Any]) -> list[str]:
    """Published ports not bound to loopback. Short syntax `[IP:]HOST:CONTAINER[/proto]` without an IP, or a
    bare `CONTAINER` (a random host port), binds every interface; so does long syntax without `host_ip`."""
    wrong = []
    for name, service in services.items():
        for port in service.get("ports") or []:
            if isinstance(port, dict):
                host_ip = port.get("host_ip")
            else:
                parts = str(port).split(":")
                host_ip = ":".join(parts[:-2]) if len(parts) >= 3 else None
            if host_ip not in ("127.0.0.1", "::1"):
                wrong.append(f"{name}: {port}")
    return wrong


def test_no_port_is_published_on_all_interfaces() -> None:
    assert not exposed_ports(SERVICES)
    assert {"kafka", "redis", "worker", "dispatcher", "sink"}.isdisjoint(n for n in SERVICES if "ports" in SERVICES[n])


def test_the_scan_would_see_an_exposed_port() -> None:
    assert exposed_ports({"s": {"ports": ["6070:6070", "8088", "0.0.0.0:1:1", {"target": 1, "published": 1}]}}) == [
        "s: 6070:6070", "s: 8088", "s: 0.0.0.0:1:1", "s: {'target': 1, 'published': 1}",
    ]  # fmt: skip


@pytest.mark.parametrize("service", NUDGE_SERVICES)
def test_each_process_gets_only_the_environment_it_needs(service: str) -> None:
    assert set(environment(service)) == ENVIRONMENT[service]


def test_only_the_sink_sees_the_clickhouse_dsn_and_only_the_collector_the_write_keys() -> None:
    assert [s for s in SERVICES if "NUDGE_CLICKHOUSE_DSN" in environment(s)] == ["sink"]
    assert [s for s in SERVICES if "NUDGE_WRITE_KEYS" in environment(s)] == ["collector"]
    assert [s for s in SERVICES if "NUDGE_REDIS_URL" in environment(s)] == ["collector", "dispatcher", "reps"]


def test_no_secret_has_a_default() -> None:
    """A secret is required (`${X:?...}`) or passed through only when set (a key without a value): never
    `${X:-default}`, never written in the file."""
    defaults = re.findall(r"\$\{([A-Z0-9_]+):?-", TEXT)
    assert not [name for name in defaults if SECRET_NAME.search(name)], defaults
    for name, service in SERVICES.items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key) and value is not None:
                assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]+\}", str(value)), f"{name}: {key}={value!r}"


def test_redis_requires_a_password_and_has_a_memory_ceiling() -> None:
    command = [str(arg) for arg in SERVICES["redis"]["command"]]
    options = dict(zip(command[1::2], command[2::2], strict=False))
    assert command[0] == "redis-server"  # the image's entrypoint then drops root for the redis user
    assert options["--requirepass"].startswith("${REDIS_PASSWORD:?")
    assert options["--maxmemory"] == "${REDIS_MAXMEMORY:-1gb}"
    assert options["--maxmemory-policy"] == "noeviction"  # evicting a claim or a schedule entry doubles or loses
    assert options["--appendonly"] == "yes"
    assert "PONG" in " ".join(SERVICES["redis"]["healthcheck"]["test"])  # NOAUTH is not healthy
    for service in NUDGE_SERVICES:
        url = environment(service).get("NUDGE_REDIS_URL")
        assert url is None or url.startswith("redis://:${REDIS_PASSWORD:?"), (service, url)


def test_clickhouse_app_user_has_no_access_management() -> None:
    assert "CLICKHOUSE_DEFAULT_ACCESS_MANAGEMENT" not in environment("clickhouse")
    assert environment("clickhouse")["CLICKHOUSE_USER"] == "nudge"


def test_smtp_defaults_to_starttls_in_compose() -> None:
    assert environment("dispatcher")["NUDGE_SMTP_SECURITY"] == "${NUDGE_SMTP_SECURITY:-starttls}"


def test_the_collector_trusts_one_proxy_hop() -> None:
    """Its port is published on loopback only, for the TLS proxy: the proxy's X-Forwarded-For is the client."""
    assert environment("collector")["NUDGE_COLLECTOR_FORWARDED_HOPS"] == "${NUDGE_COLLECTOR_FORWARDED_HOPS:-1}"
    assert SERVICES["collector"]["ports"] == ["127.0.0.1:8088:8088"]


def test_dotenv_is_ignored_and_the_example_lists_every_required_variable() -> None:
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT, timeout=30)
    assert ignored.returncode == 0, ".env is not in .gitignore"
    assert ".env" in (ROOT / "deploy" / "Dockerfile.dockerignore").read_text().split()
    example = (ROOT / "deploy" / "env.example").read_text()
    listed = set(re.findall(r"^([A-Z0-9_]+)=$", example, re.M))
    assert listed == set(REQUIRED), "deploy/env.example: the required variables, each with an empty value"
