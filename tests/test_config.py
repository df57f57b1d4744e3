"""Settings from the environment: defaults, bad values, the broker URL as aiokafka takes it, and URLs with their
passwords redacted for messages (the Kafka security settings: tests/kafka/test_security.py)."""

from __future__ import annotations

import pytest

from engine.config import ConfigError, Settings, redact_url


@pytest.mark.parametrize(
    ("broker_url", "expected"),
    [
        ("kafka://127.0.0.1:9092", "127.0.0.1:9092"),
        ("kafka://h1:9092;h2:9092", "h1:9092,h2:9092"),  # Faust's separator
        ("kafka://h1:9092,kafka://h2:9092", "h1:9092,h2:9092"),
        ("h1:9092, h2:9092", "h1:9092,h2:9092"),
    ],
)
def test_bootstrap_servers(broker_url: str, expected: str) -> None:
    assert Settings(broker_url=broker_url).bootstrap_servers == expected


def test_defaults_need_no_environment() -> None:
    settings = Settings.from_env({})
    assert settings.allowed_lateness_s == 0.5
    assert settings.broker_profile == "kafka"


def test_a_bad_number_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="NUDGE_PARTITIONS"):
        Settings.from_env({"NUDGE_PARTITIONS": "eight"})


def test_env_round_trips() -> None:
    settings = Settings.from_env({"NUDGE_PARTITIONS": "3", "NUDGE_BROKER_PROFILE": "dev"})
    assert Settings.from_env(settings.env()) == settings


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:hunter22@redis:6379/0", "redis://:***@redis:6379/0"),
        ("rediss://nudge:hunter22@redis.example:6380/1", "rediss://nudge:***@redis.example:6380/1"),
        (
            "redis://redis:6379/0?password=hunter22&socket_timeout=2",
            "redis://redis:6379/0?password=***&socket_timeout=2",
        ),
        ("unix:///run/redis.sock?db=0&password=hunter22", "unix:///run/redis.sock?db=0&password=***"),
        ("http://nudge:hunt@er22@clickhouse:8123/nudge", "http://nudge:***@clickhouse:8123/nudge"),  # '@' in it
        ("redis://nudge@redis:6379/0", "redis://nudge@redis:6379/0"),  # a user alone is no secret
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("chdb:///var/lib/nudge/clickhouse", "chdb:///var/lib/nudge/clickhouse"),
        ("kafka://h1:9092;h2:9092", "kafka://h1:9092;h2:9092"),
        ("nudge:hunter22@redis:6379", "<unparsable URL>"),  # no scheme: do not guess where the secret ends
        ("redis://:hunter22@[::1:6379/0", "<unparsable URL>"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "hunter22" not in redact_url(url)


def test_the_settings_repr_hides_url_passwords() -> None:
    settings = Settings.from_env(
        {"NUDGE_REDIS_URL": "redis://:hunter22@redis:6379/0", "NUDGE_CLICKHOUSE_DSN": "http://n:hunter22@ch:8123/db"}
    )
    assert "hunter22" not in repr(settings)
    assert "redis://:***@redis:6379/0" in repr(settings)
    assert settings.redis_url == "redis://:hunter22@redis:6379/0"  # the value itself is untouched
