"""Settings from the environment, in one place.

Every setting has a documented default (docs/deployment.md, "Settings") so `make demo` runs with none set. Values
are read once with `Settings.from_env()`; modules take a `Settings` instead of reading `os.environ` themselves, so
tests can build one directly.

The broker profile `dev` holds the workarounds for the Tansu broker used in development and CI (see
docs/development.md, "Tansu quirks"); `kafka` is for a real Kafka cluster.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

Number = TypeVar("Number", int, float)


# Settings of the collector's public edge that are secrets: never shown by `Settings.__repr__`.
COLLECTOR_SECRETS = ("user_hash_secret", "server_write_keys", "unsubscribe_secret", "unsubscribe_previous_secrets")


# Settings of the privacy pipeline that are secrets (docs/privacy.md).
PRIVACY_SECRETS = ("admin_token", "privacy_hash_key")


class ConfigError(ValueError):
    """A setting has a value Nudge cannot use; the message names the variable and what it accepts."""


# "dev" = Tansu workarounds, "kafka" = real Kafka, "dev-batched" = the worker on Tansu in runs that never
# restart it (the demo; other processes treat it as unknown, give them "dev"); see
# engine/worker/faust_ext/broker_profiles.py.
BROKER_PROFILES = ("dev", "dev-batched", "kafka")

# How every Kafka client of Nudge connects (aiokafka's names; engine/kafka/security.py turns them into client
# options). Only the mechanisms that take a user name and password; GSSAPI and OAUTHBEARER are not supported.
KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
KAFKA_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

# Query parameters that carry a secret in a URL (redis-py takes `?password=`); their values are redacted too.
_SECRET_QUERY_KEY = re.compile(r"pass|secret|token|key", re.IGNORECASE)


def redact_url(url: str) -> str:
    """`url` fit for a log line or an error message: the password of its user part and the values of secret-looking
    query parameters replaced by `***` (`redis://:pw@redis:6379/0` → `redis://:***@redis:6379/0`); the rest as
    written. A string with an `@` that does not parse as `scheme://user@host` is returned as `<unparsable URL>`
    rather than risk printing a secret."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced IPv6 bracket
        return "<unparsable URL>"
    if "@" in url and "@" not in parts.netloc:
        return "<unparsable URL>"
    netloc, query = parts.netloc, parts.query
    user, at, host = netloc.rpartition("@")
    if at and ":" in user:
        netloc = f"{user.split(':', 1)[0]}:***@{host}"
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(_SECRET_QUERY_KEY.search(key) for key, _ in pairs):
        query = urlencode([(k, "***" if _SECRET_QUERY_KEY.search(k) else v) for k, v in pairs], safe="*")
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    slashes = "//" if url[len(parts.scheme) + 1 :].startswith("//") else ""
    prefix = f"{parts.scheme}:" if parts.scheme else ""
    return (
        f"{prefix}{slashes}{netloc}{parts.path}"
        + (f"?{query}" if query else "")
        + (f"#{parts.fragment}" if parts.fragment else "")
    )


def _number(env: dict[str, str], name: str, default: Number, parse: Callable[[str], Number], what: str) -> Number:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return parse(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not {what}; set it to e.g. {default}") from None


def _int(env: dict[str, str], name: str, default: int) -> int:
    return _number(env, name, default, int, "a whole number")


def _float(env: dict[str, str], name: str, default: float) -> float:
    return _number(env, name, default, float, "a number")


def _choice(env: dict[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name) or default
    if raw not in choices:
        raise ConfigError(f"{name}={raw!r} is not one of {', '.join(choices)}")
    return raw


@dataclass(frozen=True)
class Settings:
    broker_url: str = "kafka://127.0.0.1:9092"
    broker_profile: str = "kafka"  # "dev" = Tansu workarounds, "kafka" = real Kafka
    redis_url: str = "redis://127.0.0.1:6379/0"
    clickhouse_dsn: str = "chdb:///var/lib/nudge/clickhouse"
    rules_path: Path = Path("rules")
    connectors_path: Path = Path("connectors.yaml")
    reps_path: Path = Path("reps.yaml")
    partitions: int = 8
    web_port: int = 6066
    web_host: str = "127.0.0.1"
    collector_port: int = 8088
    state_dir: Path = Path("var/state")
    app_id: str = "nudge"
    topic_prefix: str = ""
    allowed_lateness_s: float = 0.5
    timer_interval_s: float = 0.1
    batch_size: int = 2000
    batch_within_s: float = 0.02
    log_level: str = "info"
    default_timezone: str = "UTC"
    write_keys: tuple[str, ...] = ()
    max_clock_skew_s: float = 5.0
    collector_body_timeout_s: float = 30.0
    # The collector's public edge (docs/collector.md, "Trust model" and "Limits").
    server_write_keys: tuple[str, ...] = field(default=(), repr=False)
    user_hash_secret: str = field(default="", repr=False)
    collector_max_batch_events: int = 500
    collector_max_traits: int = 100
    profile_max_fields: int = 500
    profile_ttl_days: float = 400.0
    rate_limit_key_events_per_s: float = 5000.0
    rate_limit_key_burst: int = 20000
    rate_limit_ip_events_per_s: float = 50.0
    rate_limit_ip_burst: int = 500
    collector_forwarded_hops: int = 0
    collector_public_url: str = ""
    collector_telemetry_sample_rate: float = 0.0
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = "PLAIN"
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = field(default="", repr=False)
    kafka_ca_file: str = ""
    reps_api_token: str = field(default="", repr=False)  # bearer token of `nudge reps serve`'s /v1 API
    reps_link_secret: str = field(default="", repr=False)  # HMAC key of reps' signed links and sign-ins
    reps_public_url: str = "http://127.0.0.1:6070"  # where reps reach `nudge reps serve` (links point there)
    reps_link_ttl_s: float = 604800.0  # how long an acknowledge/pass link works (7 days)
    reps_session_ttl_s: float = 1209600.0  # how long an inbox session lasts after signing in (14 days)
    # HMAC key of the email connector's unsubscribe links, verified by the collector's /v1/unsubscribe, and the
    # keys it replaced, still verified while mails signed with them are in inboxes (docs/collector.md).
    unsubscribe_secret: str = field(default="", repr=False)
    unsubscribe_previous_secrets: tuple[str, ...] = field(default=(), repr=False)
    extra: dict[str, Any] = field(default_factory=dict)
    # Privacy (docs/privacy.md): the bearer token of the collector's POST /v1/regulations (never a write key), the
    # HMAC key of the ids kept in receipts and suppression markers, and retention.
    admin_token: str = field(default="", repr=False)
    privacy_hash_key: str = field(default="", repr=False)
    retention_days: float = 400.0  # ClickHouse TTL of events
    actions_retention_days: float = 730.0  # ClickHouse TTL of actions and lead updates
    lead_idle_days: float = 400.0  # a worker drops a lead's state idle this long with no pending deadline (0: never)

    def __post_init__(self) -> None:
        _check_kafka_security(self)

    def __repr__(self) -> str:
        """Every field, with the URLs' passwords and the SASL password hidden: a `Settings` may end up in a log."""
        shown = []
        for setting in fields(self):
            value = getattr(self, setting.name)
            secret = (*COLLECTOR_SECRETS, *PRIVACY_SECRETS, "kafka_sasl_password", "reps_api_token", "reps_link_secret")
            if setting.name in secret:
                value = "***" if value else ""
            elif setting.name in ("redis_url", "clickhouse_dsn"):
                value = redact_url(value)
            shown.append(f"{setting.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        defaults = cls()
        return cls(
            broker_url=env.get("NUDGE_BROKER_URL") or defaults.broker_url,
            broker_profile=_choice(env, "NUDGE_BROKER_PROFILE", defaults.broker_profile, BROKER_PROFILES),
            redis_url=env.get("NUDGE_REDIS_URL") or defaults.redis_url,
            clickhouse_dsn=env.get("NUDGE_CLICKHOUSE_DSN") or defaults.clickhouse_dsn,
            rules_path=Path(env.get("NUDGE_RULES_PATH") or defaults.rules_path),
            connectors_path=Path(env.get("NUDGE_CONNECTORS_PATH") or defaults.connectors_path),
            reps_path=Path(env.get("NUDGE_REPS_PATH") or defaults.reps_path),
            partitions=_int(env, "NUDGE_PARTITIONS", defaults.partitions),
            web_port=_int(env, "NUDGE_WEB_PORT", defaults.web_port),
            web_host=env.get("NUDGE_WEB_HOST") or defaults.web_host,
            collector_port=_int(env, "NUDGE_COLLECTOR_PORT", defaults.collector_port),
            state_dir=Path(env.get("NUDGE_STATE_DIR") or defaults.state_dir),
            app_id=env.get("NUDGE_APP_ID") or defaults.app_id,
            topic_prefix=env.get("NUDGE_TOPIC_PREFIX") or defaults.topic_prefix,
            allowed_lateness_s=_float(env, "NUDGE_ALLOWED_LATENESS_S", defaults.allowed_lateness_s),
            timer_interval_s=_float(env, "NUDGE_TIMER_INTERVAL_S", defaults.timer_interval_s),
            batch_size=_int(env, "NUDGE_BATCH_SIZE", defaults.batch_size),
            batch_within_s=_float(env, "NUDGE_BATCH_WITHIN_S", defaults.batch_within_s),
            log_level=_choice(env, "NUDGE_LOG_LEVEL", defaults.log_level, ("debug", "info", "warning", "error")),
            default_timezone=env.get("NUDGE_DEFAULT_TIMEZONE") or defaults.default_timezone,
            write_keys=tuple(k for k in (env.get("NUDGE_WRITE_KEYS") or "").split(",") if k),
            max_clock_skew_s=_float(env, "NUDGE_MAX_CLOCK_SKEW_S", defaults.max_clock_skew_s),
            collector_body_timeout_s=_float(env, "NUDGE_COLLECTOR_BODY_TIMEOUT_S", defaults.collector_body_timeout_s),
            server_write_keys=tuple(k for k in (env.get("NUDGE_SERVER_WRITE_KEYS") or "").split(",") if k),
            user_hash_secret=env.get("NUDGE_USER_HASH_SECRET") or defaults.user_hash_secret,
            collector_max_batch_events=_int(
                env, "NUDGE_COLLECTOR_MAX_BATCH_EVENTS", defaults.collector_max_batch_events
            ),
            collector_max_traits=_int(env, "NUDGE_COLLECTOR_MAX_TRAITS", defaults.collector_max_traits),
            profile_max_fields=_int(env, "NUDGE_PROFILE_MAX_FIELDS", defaults.profile_max_fields),
            profile_ttl_days=_float(env, "NUDGE_PROFILE_TTL_DAYS", defaults.profile_ttl_days),
            rate_limit_key_events_per_s=_float(
                env, "NUDGE_RATE_LIMIT_KEY_EVENTS_PER_S", defaults.rate_limit_key_events_per_s
            ),
            rate_limit_key_burst=_int(env, "NUDGE_RATE_LIMIT_KEY_BURST", defaults.rate_limit_key_burst),
            rate_limit_ip_events_per_s=_float(
                env, "NUDGE_RATE_LIMIT_IP_EVENTS_PER_S", defaults.rate_limit_ip_events_per_s
            ),
            rate_limit_ip_burst=_int(env, "NUDGE_RATE_LIMIT_IP_BURST", defaults.rate_limit_ip_burst),
            collector_forwarded_hops=_int(env, "NUDGE_COLLECTOR_FORWARDED_HOPS", defaults.collector_forwarded_hops),
            collector_public_url=env.get("NUDGE_COLLECTOR_PUBLIC_URL") or defaults.collector_public_url,
            collector_telemetry_sample_rate=_float(
                env, "NUDGE_COLLECTOR_TELEMETRY_SAMPLE_RATE", defaults.collector_telemetry_sample_rate
            ),
            kafka_security_protocol=_choice(
                env, "NUDGE_KAFKA_SECURITY_PROTOCOL", defaults.kafka_security_protocol, KAFKA_SECURITY_PROTOCOLS
            ),
            kafka_sasl_mechanism=_choice(
                env, "NUDGE_KAFKA_SASL_MECHANISM", defaults.kafka_sasl_mechanism, KAFKA_SASL_MECHANISMS
            ),
            kafka_sasl_username=env.get("NUDGE_KAFKA_SASL_USERNAME") or defaults.kafka_sasl_username,
            kafka_sasl_password=env.get("NUDGE_KAFKA_SASL_PASSWORD") or defaults.kafka_sasl_password,
            kafka_ca_file=env.get("NUDGE_KAFKA_CA_FILE") or defaults.kafka_ca_file,
            reps_api_token=env.get("NUDGE_REPS_API_TOKEN") or defaults.reps_api_token,
            reps_link_secret=env.get("NUDGE_REPS_LINK_SECRET") or defaults.reps_link_secret,
            reps_public_url=env.get("NUDGE_REPS_PUBLIC_URL") or defaults.reps_public_url,
            reps_link_ttl_s=_float(env, "NUDGE_REPS_LINK_TTL_S", defaults.reps_link_ttl_s),
            reps_session_ttl_s=_float(env, "NUDGE_REPS_SESSION_TTL_S", defaults.reps_session_ttl_s),
            unsubscribe_secret=env.get("NUDGE_UNSUBSCRIBE_SECRET") or defaults.unsubscribe_secret,
            unsubscribe_previous_secrets=tuple(
                k for k in (env.get("NUDGE_UNSUBSCRIBE_PREVIOUS_SECRETS") or "").split(",") if k
            ),
            admin_token=env.get("NUDGE_ADMIN_TOKEN") or defaults.admin_token,
            privacy_hash_key=env.get("NUDGE_PRIVACY_HASH_KEY") or defaults.privacy_hash_key,
            retention_days=_float(env, "NUDGE_RETENTION_DAYS", defaults.retention_days),
            actions_retention_days=_float(env, "NUDGE_ACTIONS_RETENTION_DAYS", defaults.actions_retention_days),
            lead_idle_days=_float(env, "NUDGE_LEAD_IDLE_DAYS", defaults.lead_idle_days),
        )

    def env(self) -> dict[str, str]:
        """These settings as NUDGE_* variables (each named `NUDGE_` + the field's name in capitals, as `from_env`
        reads them), so a parent process can start `nudge` sub-commands with them."""
        variables = {}
        for setting in fields(self):
            if setting.name != "extra":
                value = getattr(self, setting.name)
                variables[f"NUDGE_{setting.name.upper()}"] = ",".join(value) if isinstance(value, tuple) else str(value)
        return variables

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @property
    def bootstrap_servers(self) -> str:
        """The broker URL as aiokafka takes it: `kafka://h1:9092;h2:9092` (Faust style, `;` or `,` between
        hosts) → `h1:9092,h2:9092`."""
        hosts = self.broker_url.replace(";", ",").split(",")
        return ",".join(host.strip().split("://", 1)[-1] for host in hosts if host.strip())

    def topic(self, name: str) -> str:
        """Full topic name: lets several test runs or tenants share one broker."""
        return f"{self.topic_prefix}{name}"


def _check_kafka_security(settings: Settings) -> None:
    """Raise `ConfigError` for Kafka security settings that cannot work together, so that a half-configured
    deployment stops at start instead of talking to the broker in clear or failing later with a broker error.
    The messages name the variables, never the password."""
    protocol = settings.kafka_security_protocol
    if protocol not in KAFKA_SECURITY_PROTOCOLS:
        raise ConfigError(
            f"NUDGE_KAFKA_SECURITY_PROTOCOL={protocol!r} is not one of {', '.join(KAFKA_SECURITY_PROTOCOLS)}"
        )
    if settings.kafka_sasl_mechanism not in KAFKA_SASL_MECHANISMS:
        raise ConfigError(
            f"NUDGE_KAFKA_SASL_MECHANISM={settings.kafka_sasl_mechanism!r} is not one of "
            f"{', '.join(KAFKA_SASL_MECHANISMS)}"
        )
    sasl = protocol.startswith("SASL_")
    credentials = {
        "NUDGE_KAFKA_SASL_USERNAME": settings.kafka_sasl_username,
        "NUDGE_KAFKA_SASL_PASSWORD": settings.kafka_sasl_password,
    }
    for name, value in credentials.items():
        if sasl and not value:
            raise ConfigError(f"{name} is required with NUDGE_KAFKA_SECURITY_PROTOCOL={protocol}")
        if value and not sasl:
            raise ConfigError(
                f"{name} is set but NUDGE_KAFKA_SECURITY_PROTOCOL={protocol} does not authenticate with SASL; "
                "set NUDGE_KAFKA_SECURITY_PROTOCOL=SASL_SSL (or SASL_PLAINTEXT)"
            )
    if settings.kafka_ca_file:
        if protocol not in ("SSL", "SASL_SSL"):
            raise ConfigError(
                f"NUDGE_KAFKA_CA_FILE is set but NUDGE_KAFKA_SECURITY_PROTOCOL={protocol} does not use TLS; "
                "set NUDGE_KAFKA_SECURITY_PROTOCOL=SSL or SASL_SSL"
            )
        if not Path(settings.kafka_ca_file).is_file():
            raise ConfigError(f"NUDGE_KAFKA_CA_FILE={settings.kafka_ca_file!r} is not a readable file")
