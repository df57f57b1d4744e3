"""Pure parts of the outbound side: policies, retry, circuit, offsets, redaction, templates, config."""

from __future__ import annotations

import random
from datetime import datetime
from datetime import time as dtime
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from hypothesis import given
from hypothesis import strategies as st

from connectors.context import LeadView
from connectors.http import parse_retry_after
from connectors.rendering import Renderer, template_vars
from engine.config import ConfigError
from engine.dispatch.config import load_connectors, parse_connectors
from engine.dispatch.offsets import OffsetTracker
from engine.dispatch.policies.circuit import CircuitBreaker, CircuitConfig, CircuitState
from engine.dispatch.policies.consent import consent_block_reason
from engine.dispatch.policies.quiet_hours import QuietHours, QuietHoursConfig
from engine.dispatch.policies.retry import RetryConfig, RetryPolicy
from engine.dispatch.redaction import Redactor
from tests.connectors.helpers import make_action

REPO = Path(__file__).resolve().parents[2]


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


# --- quiet hours
QUIET = QuietHours(QuietHoursConfig(start=dtime(21), end=dtime(8)), "UTC")


def test_quiet_hours_span_midnight_in_the_lead_timezone() -> None:
    assert QUIET.next_allowed_ms(ms("2026-03-10T12:00:00+00:00"), "UTC") is None
    assert QUIET.next_allowed_ms(ms("2026-03-10T22:30:00+00:00"), "UTC") == ms("2026-03-11T08:00:00+00:00")
    assert QUIET.next_allowed_ms(ms("2026-03-10T03:00:00+00:00"), "UTC") == ms("2026-03-10T08:00:00+00:00")
    # 12:00 UTC is 21:00 in Tokyo (+9): quiet there until 08:00 Tokyo = 23:00 UTC.
    assert QUIET.next_allowed_ms(ms("2026-03-10T12:00:00+00:00"), "Asia/Tokyo") == ms(
        "2026-03-10T23:00:00+00:00"
    )
    # Unknown timezone → the default, never an exception.
    assert QUIET.next_allowed_ms(ms("2026-03-10T12:00:00+00:00"), "Mars/Olympus") is None


def test_quiet_hours_across_a_dst_change() -> None:
    # Night of 2026-03-28/29 in Paris: clocks jump from 02:00 to 03:00; 08:00 local is 06:00 UTC the next day.
    assert QUIET.next_allowed_ms(ms("2026-03-28T22:00:00+00:00"), "Europe/Paris") == ms(
        "2026-03-29T06:00:00+00:00"
    )


@given(
    st.integers(min_value=0, max_value=4_000_000_000_000),
    st.sampled_from(["UTC", "America/New_York", "Asia/Kolkata"]),
)
def test_quiet_hours_always_resume_outside_the_window(now_ms: int, tz: str) -> None:
    resume = QUIET.next_allowed_ms(now_ms, tz)
    if resume is not None:
        assert now_ms < resume <= now_ms + 11 * 3600 * 1000 + 1
        assert QUIET.next_allowed_ms(resume, tz) is None


# --- consent
@pytest.mark.parametrize(
    ("traits", "marketing", "explicit", "expected"),
    [
        ({"unsubscribed": True}, True, False, "unsubscribed"),
        ({"unsubscribed": "yes"}, True, False, "unsubscribed"),
        ({"marketing_consent": False}, True, False, "consent_withdrawn"),
        ({"consent": "revoked"}, True, False, "consent_withdrawn"),
        ({"consent": {"marketing": False}}, True, False, "consent_withdrawn"),
        ({}, True, False, None),
        ({}, True, True, "no_consent_recorded"),
        ({"marketing_consent": True}, True, True, None),
        ({"unsubscribed": True}, False, True, None),  # a sales alert to the rep is not marketing
    ],
)
def test_consent(traits: dict, marketing: bool, explicit: bool, expected: str | None) -> None:
    action = make_action("email", marketing=marketing, context={"traits": traits})
    assert consent_block_reason(LeadView(action), explicit) == expected


# --- retry and circuit
def test_backoff_grows_with_jitter_and_honours_retry_after() -> None:
    policy = RetryPolicy(RetryConfig(max_attempts=5, base_delay_s=1, max_delay_s=10), random.Random(1))
    for attempt, full in [(1, 1), (2, 2), (3, 4), (4, 8)]:
        assert full / 2 <= policy.next_delay_s(attempt) <= full
    assert policy.next_delay_s(5) is None  # budget spent
    assert policy.next_delay_s(1, retry_after_s=30) == 30
    assert RetryPolicy(RetryConfig(max_retry_after_s=60)).next_delay_s(1, retry_after_s=9999) == 60


def test_parse_retry_after() -> None:
    assert parse_retry_after("120") == 120
    assert (
        parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now_s=ms("2015-10-21T07:28:00+00:00") / 1000) == 30
    )
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_circuit_opens_probes_and_closes() -> None:
    now = [0.0]
    breaker = CircuitBreaker("t", CircuitConfig(failure_threshold=3, reset_after_s=10), clock=lambda: now[0])
    for _ in range(3):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state is CircuitState.OPEN and not breaker.allow()
    assert breaker.retry_in_s() == 10
    now[0] = 10
    assert breaker.state is CircuitState.HALF_OPEN
    assert breaker.allow() and not breaker.allow()  # one probe at a time
    breaker.record_failure()
    assert breaker.state is CircuitState.OPEN
    now[0] = 20
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is CircuitState.CLOSED and breaker.allow()


def test_a_refused_attempt_waits_for_the_next_probe_plus_a_spread() -> None:
    now = [0.0]
    config = CircuitConfig(failure_threshold=1, reset_after_s=30)
    breaker = CircuitBreaker("t", config, clock=lambda: now[0], rng=random.Random(7))
    breaker.record_failure()
    now[0] = 12
    waits = [breaker.refused_wait_s() for _ in range(50)]
    assert all(18.5 <= w <= 19 for w in waits) and len(set(waits)) > 1  # open: until the probe, then spread
    now[0] = 30
    assert breaker.allow()  # the probe is out
    assert all(0.5 <= breaker.refused_wait_s() <= 1 for _ in range(50))  # half-open: recheck within a second


# --- offsets, redaction, context
def test_offsets_commit_only_below_the_oldest_unfinished() -> None:
    tp = TopicPartition("actions", 0)
    tracker = OffsetTracker()
    for offset in (5, 6, 7):
        tracker.start(tp, offset)
    tracker.done(tp, 6)
    tracker.done(tp, 7)
    assert tracker.committable() == {tp: 5}
    tracker.committed({tp: 5})
    assert tracker.committable() == {}
    tracker.done(tp, 5)
    assert tracker.committable() == {tp: 8}


@given(st.permutations(list(range(30))), st.integers(min_value=0, max_value=30))
def test_offsets_never_commit_past_an_unfinished_action(order: list[int], finished: int) -> None:
    tp = TopicPartition("actions", 1)
    tracker = OffsetTracker()
    for offset in range(100, 130):
        tracker.start(tp, offset)
    done = {100 + i for i in order[:finished]}
    for offset in done:
        tracker.done(tp, offset)
    point = tracker.committable().get(tp, 100)
    assert all(o in done for o in range(100, point))  # everything below the commit point is finished
    assert point == 130 or point not in done  # and the point itself is the first unfinished one


def test_redactor_masks_plain_and_url_encoded_secrets() -> None:
    redactor = Redactor(["s3cr3t/with space", "abc"])  # too short to redact safely: ignored
    text = "url=https://x/s3cr3t%2Fwith%20space body=s3cr3t/with space abc"
    assert redactor.redact(text) == "url=https://x/*** body=*** abc"


def test_lead_view_never_crashes_on_odd_context() -> None:
    for context in (
        {},
        {"traits": None, "cart": "x"},
        {"cart": {"items": ["x", {"price": "?"}]}, "owner": 5},
    ):
        view = LeadView(make_action("email", context=context))
        assert view.email is None
        vars_ = template_vars(view.action, {"links": {}, "brand": {"name": "B"}})
        Renderer().email("cart_reminder", vars_)
        Renderer().slack("hot_lead", vars_)


def test_templates_are_sandboxed(tmp_path: Path) -> None:
    (tmp_path / "slack").mkdir()
    (tmp_path / "slack" / "evil.md.j2").write_text("{{ action.__class__.__mro__[1].__subclasses__() }}")
    from connectors.rendering import TemplateProblem

    with pytest.raises(TemplateProblem, match="evil"):
        Renderer(tmp_path).slack("evil", template_vars(make_action("slack")))


# --- connectors file
def test_shipped_connectors_file_loads_without_any_environment() -> None:
    loaded = load_connectors(REPO / "connectors.yaml", env={})
    assert set(loaded.connectors) == {"log", "webhook", "slack", "email", "kafka", "redis", "crm"}
    assert loaded.policies.caps and loaded.policies.quiet_hours is not None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "connectors:\n  x:\n    type: pigeon\n",
            "connectors.yaml:3: connectors.x.type: unknown connector type 'pigeon'",
        ),
        (
            "connectors:\n  m:\n    type: email\n    password: ${SMTP_PW}\n",
            "connectors.yaml:4: connectors.m.password: environment variable SMTP_PW is not set",
        ),
        ("connectors:\n  w:\n    type: webhook\n    url: 12\n", "connectors.yaml:4: connectors.w.url"),
        (
            "connectors:\n  w:\n    type: log\n    colour: red\n",
            "connectors.w.colour: Extra inputs are not permitted",
        ),
        (
            "policies:\n  caps:\n    - {max: 1, per: soon}\n",
            "policies.caps.0.per: Value error, 'soon' is not a duration",
        ),
        (
            "connectors:\n  l:\n    type: log\n    timeout_s: 90\n",
            "connectors.l.timeout_s: must be shorter than policies.idempotency.claim_ttl_s",
        ),
    ],
)
def test_config_errors_say_where_and_what(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_connectors(text, env={})
    assert message in str(raised.value)


def test_config_error_never_echoes_a_secret() -> None:
    text = "connectors:\n  s:\n    type: slack\n    webhook_url: ${URL}\n    timeout_s: ${URL}\n"
    with pytest.raises(ConfigError) as raised:
        parse_connectors(text, env={"URL": "hooks-Sup3rSecret"})
    assert "Sup3rSecret" not in str(raised.value)


def test_unquoted_yaml_times_are_read_as_wall_times() -> None:
    loaded = parse_connectors("policies:\n  quiet_hours: {start: 21:30, end: 07:00}\n", env={})
    assert loaded.policies.quiet_hours is not None
    assert (loaded.policies.quiet_hours.start, loaded.policies.quiet_hours.end) == (dtime(21, 30), dtime(7))


def _connector_names(node: object) -> set[str]:
    if isinstance(node, dict):
        found = {node["connector"]} if isinstance(node.get("connector"), str) else set()
        return found.union(*(_connector_names(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_connector_names(v) for v in node))
    return set()


@pytest.mark.parametrize("connectors_file", ["connectors.yaml", "connectors/demo.yaml"])
def test_every_connector_the_shipped_rules_use_is_configured(connectors_file: str) -> None:
    import yaml

    used = set().union(
        *(_connector_names(yaml.safe_load(p.read_text())) for p in (REPO / "rules").glob("*.yaml"))
    )
    configured = set(load_connectors(REPO / connectors_file, env={}).connectors)
    assert used and used <= configured, f"{connectors_file} lacks {used - configured}"
