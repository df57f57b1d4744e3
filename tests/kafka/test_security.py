"""The Kafka security settings (`NUDGE_KAFKA_*`): what every aiokafka client and the Faust app are given, what is
refused at start, that the password shows in no message, and that no client in the tree is built without them."""

from __future__ import annotations

import ast
import ssl
import subprocess
from pathlib import Path

import pytest
from faust.auth import SASLCredentials, SSLCredentials
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from engine.config import ConfigError, Settings
from engine.kafka.security import client_options
from engine.worker.app import create_app
from engine.worker.faust_ext.broker_profiles import faust_security, faust_settings
from engine.worker.faust_ext.changelog_read_ahead import faust_client_options

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "pw-that-must-never-show-4f1c"
SASL = {
    "NUDGE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "NUDGE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "NUDGE_KAFKA_SASL_USERNAME": "nudge",
    "NUDGE_KAFKA_SASL_PASSWORD": PASSWORD,
}


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real self-signed CA certificate (openssl), so the TLS context really loads it."""
    directory = tmp_path_factory.mktemp("ca")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=nudge-test-ca",
         "-keyout", str(directory / "ca.key"), "-out", str(directory / "ca.pem")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return directory / "ca.pem"


def test_plaintext_is_the_default_and_adds_nothing_but_the_protocol() -> None:
    settings = Settings.from_env({})
    assert client_options(settings) == {"security_protocol": "PLAINTEXT"}
    assert faust_security(settings) == {"broker_credentials": None}
    assert faust_settings(settings)["broker_credentials"] is None


def test_sasl_ssl_with_a_ca_file(ca_file: Path) -> None:
    settings = Settings.from_env({**SASL, "NUDGE_KAFKA_CA_FILE": str(ca_file)})
    options = client_options(settings)
    context = options.pop("ssl_context")
    assert options == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "nudge",
        "sasl_plain_password": PASSWORD,
    }
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [cert["subject"] for cert in context.get_ca_certs()] == [((("commonName", "nudge-test-ca"),),)]


def test_faust_gets_the_same_options_as_the_plain_clients(ca_file: Path) -> None:
    """Faust's driver turns `broker_credentials` into aiokafka options: they must equal `client_options`."""
    for env in (
        {**SASL, "NUDGE_KAFKA_CA_FILE": str(ca_file)},
        {**SASL, "NUDGE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "NUDGE_KAFKA_SASL_MECHANISM": "PLAIN"},
        {"NUDGE_KAFKA_SECURITY_PROTOCOL": "SSL", "NUDGE_KAFKA_CA_FILE": str(ca_file)},
        {"NUDGE_KAFKA_SECURITY_PROTOCOL": "SSL"},  # the system's CA store
    ):
        settings = Settings.from_env(env)
        credentials = faust_settings(settings)["broker_credentials"]
        assert isinstance(credentials, SASLCredentials | SSLCredentials)
        faust_options = dict(credentials_to_aiokafka_auth(credentials))
        ours = client_options(settings)
        assert (faust_options.pop("ssl_context", None) is None) == (ours.pop("ssl_context", None) is None), env
        assert {k: v for k, v in faust_options.items() if v is not None} == ours, env
        assert PASSWORD not in repr(credentials)


def test_the_recovery_read_ahead_connects_with_the_apps_options(ca_file: Path) -> None:
    """The read-ahead's plain consumer (engine/worker/faust_ext/changelog_read_ahead.py) takes the options of the
    Faust app it recovers for: the same as `client_options`."""
    settings = Settings.from_env({**SASL, "NUDGE_KAFKA_CA_FILE": str(ca_file)})
    options = dict(faust_client_options(create_app(settings).app))
    ours = client_options(settings)
    assert isinstance(options.pop("ssl_context"), ssl.SSLContext) and ours.pop("ssl_context") is not None
    assert {k: v for k, v in options.items() if v is not None} == ours


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"NUDGE_KAFKA_SECURITY_PROTOCOL": "TLS"}, "NUDGE_KAFKA_SECURITY_PROTOCOL"),
        ({**SASL, "NUDGE_KAFKA_SASL_MECHANISM": "GSSAPI"}, "NUDGE_KAFKA_SASL_MECHANISM"),
        ({**SASL, "NUDGE_KAFKA_SASL_USERNAME": ""}, "NUDGE_KAFKA_SASL_USERNAME"),
        ({**SASL, "NUDGE_KAFKA_SASL_PASSWORD": ""}, "NUDGE_KAFKA_SASL_PASSWORD"),
        # Credentials without a SASL protocol would silently connect without them.
        ({**SASL, "NUDGE_KAFKA_SECURITY_PROTOCOL": "SSL"}, "NUDGE_KAFKA_SASL_USERNAME"),
        ({"NUDGE_KAFKA_SASL_PASSWORD": PASSWORD}, "NUDGE_KAFKA_SASL_PASSWORD"),
        # A CA file without TLS: the operator meant TLS and would get clear text.
        ({"NUDGE_KAFKA_CA_FILE": "/etc/ssl/certs/ca-certificates.crt"}, "NUDGE_KAFKA_CA_FILE"),
        ({**SASL, "NUDGE_KAFKA_CA_FILE": "/nonexistent/ca.pem"}, "NUDGE_KAFKA_CA_FILE"),
    ],
)
def test_settings_that_cannot_work_stop_the_process_and_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=names) as raised:
        Settings.from_env(env)
    assert PASSWORD not in str(raised.value)


def test_a_ca_file_that_is_not_pem_names_the_variable_not_the_password(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    settings = Settings.from_env({**SASL, "NUDGE_KAFKA_CA_FILE": str(bad)})
    with pytest.raises(ConfigError, match="NUDGE_KAFKA_CA_FILE") as raised:
        client_options(settings)
    assert PASSWORD not in str(raised.value)


def test_the_password_is_not_in_the_settings_repr_but_reaches_child_processes() -> None:
    settings = Settings.from_env({**SASL, "NUDGE_REDIS_URL": f"redis://:{PASSWORD}@redis:6379/0"})
    assert PASSWORD not in repr(settings) and PASSWORD not in str(settings)
    assert "kafka_sasl_password='***'" in repr(settings)
    assert settings.env()["NUDGE_KAFKA_SASL_PASSWORD"] == PASSWORD  # `nudge demo` and tests start children so
    assert Settings.from_env(settings.env()) == settings


# --- every client in the tree gets the options --------------------------------------------------------------------

CLIENTS = {"AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient"}
FAUST_APPS = {"App", "NudgeFaustApp"}
SCANNED = ("engine", "connectors", "bench")
# Files whose clients connect only to the dev broker Nudge starts itself on loopback (Tansu via engine.devstack,
# PLAINTEXT, no credentials): the environment's security settings do not describe that broker.
DEV_BROKER_ONLY = {
    "engine/testing.py": "the shipped test harness (TopicReader, CommittedOffsets) reads the dev/test broker",
    "engine/demo/replay.py": "`nudge demo` replays the sample into the dev stack it started",
    "bench/kafka_io.py": "`make bench` measures the Tansu broker it started",
}


def _name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _spreads(call: ast.Call, function: str) -> bool:
    """The call has `**function(...)` (or `**(function(...) if ... else {})`) among its keyword arguments."""
    for keyword in call.keywords:
        if keyword.arg is None:
            for node in ast.walk(keyword.value):
                if isinstance(node, ast.Call) and _name(node) == function:
                    return True
    return False


def _unsecured() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=relative)):
                if not isinstance(node, ast.Call):
                    continue
                name = _name(node)
                # `faust_client_options(app)`: a plain client of the worker's Faust app takes the app's own options.
                if name in CLIENTS and not any(_spreads(node, f) for f in ("client_options", "faust_client_options")):
                    found.setdefault(relative, []).append(f"{relative}:{node.lineno} {name}")
                elif name in FAUST_APPS and not any(_spreads(node, f) for f in ("faust_settings", "faust_security")):
                    # `faust.App(**options)`: the options must come from faust_settings/faust_security in the file.
                    source = path.read_text(encoding="utf-8")
                    if "faust_security(" not in source and "faust_settings(" not in source:
                        found.setdefault(relative, []).append(f"{relative}:{node.lineno} {name}")
    return found


def test_every_kafka_client_is_built_with_the_security_options() -> None:
    unsecured = _unsecured()
    missing = [where for path, calls in unsecured.items() if path not in DEV_BROKER_ONLY for where in calls]
    assert not missing, (
        "aiokafka clients built without **client_options(settings) (engine/kafka/security.py), or a Faust app "
        f"without faust_settings/faust_security: {missing}"
    )


def test_the_dev_broker_exceptions_are_still_needed() -> None:
    stale = sorted(set(DEV_BROKER_ONLY) - set(_unsecured()))
    assert not stale, f"no unsecured client left in {stale}: remove them from DEV_BROKER_ONLY"


def test_the_scan_finds_the_known_clients() -> None:
    """Guards the scan itself: it must see the clients it is meant to check."""
    seen = set()
    for top in SCANNED:
        for path in (ROOT / top).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Call) and _name(node) in CLIENTS | FAUST_APPS:
                    seen.add(path.relative_to(ROOT).as_posix())
    assert {"engine/dispatch/dispatcher.py", "engine/clickhouse/sink.py", "engine/collector/producer.py",
            "connectors/kafka.py", "engine/kafka/admin.py", "engine/worker/app.py"} <= seen  # fmt: skip
