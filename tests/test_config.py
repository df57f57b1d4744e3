"""Settings from the environment: defaults, bad values, and the broker URL as aiokafka takes it."""

from __future__ import annotations

import pytest

from engine.config import ConfigError, Settings


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
