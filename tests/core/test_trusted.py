"""`trusted: true` on a matcher: only events a visitor could not have sent (a server key, a verified user hash, or
written to Kafka directly) match it, in every kind, and stage changes are as trusted as the event behind them."""

from __future__ import annotations

import dataclasses

from engine.core import evaluate
from engine.core.predicates import compile_matcher, describe_matcher
from engine.events import Event
from tests.core.helpers import at, rules, track


def untrusted(event: Event) -> Event:
    return dataclasses.replace(event, trusted=False)


def test_a_trusted_matcher_skips_untrusted_events_in_every_kind() -> None:
    ruleset = rules(
        """
rules:
  - id: hot_alert
    kind: threshold
    match: {event: Demo Requested, trusted: true}
    count: 1
    within: 1h
    action: {connector: slack}
  - id: any_demo
    kind: threshold
    match: {event: Demo Requested}
    count: 1
    within: 1h
    action: {connector: log}
  - id: chain
    kind: sequence
    steps: [{event: Pricing Viewed}, {event: Demo Requested, trusted: true}]
    within: 1h
    action: {connector: slack}
"""
    )
    state = evaluate(ruleset, None, track("Pricing Viewed", 0, mid="p")).state
    visitor = evaluate(ruleset, state, untrusted(track("Demo Requested", 1, mid="v")))
    assert [a.rule for a in visitor.actions] == ["any_demo"]
    server = evaluate(ruleset, visitor.state, track("Demo Requested", 2, mid="s"))
    assert sorted(a.rule for a in server.actions) == ["chain", "hot_alert"]


def test_stage_changes_caused_by_untrusted_events_do_not_reach_trusted_matchers() -> None:
    ruleset = rules(
        """
rules:
  - id: lifecycle
    kind: score
    points: [{match: {event: Email Opened}, points: 10}]
    stages: {lead: 0, sql: null}
    stage_on: [{match: {event: Demo Requested}, stage: sql}]
    action: {connector: log}
  - id: sql_alert
    kind: threshold
    match: {event: Stage Changed, where: {properties.to: sql}, trusted: true}
    count: 1
    within: 1m
    action: {connector: slack}
"""
    )
    by_visitor = evaluate(ruleset, None, untrusted(track("Demo Requested", 0, mid="d1")))
    assert [u["to"] for u in by_visitor.updates] == ["sql"] and by_visitor.actions == []
    by_server = evaluate(ruleset, None, track("Demo Requested", 0, mid="d2"))
    assert [a.rule for a in by_server.actions] == ["sql_alert"]
    assert by_server.actions[0].fired_at_ms == at(0)


def test_trusted_stage_on_keeps_a_visitor_from_moving_the_stage() -> None:
    ruleset = rules(
        """
rules:
  - id: lifecycle
    kind: score
    points: [{match: {event: Email Opened}, points: 10}]
    stages: {lead: 0, customer: null}
    stage_on: [{match: {event: Order Completed, trusted: true}, stage: customer}]
    on_stage: {customer: {connector: slack}}
    action: {connector: log}
"""
    )
    faked = evaluate(ruleset, None, untrusted(track("Order Completed", 0, mid="o1")))
    assert faked.updates == [] and faked.actions == []
    real = evaluate(ruleset, None, track("Order Completed", 0, mid="o2"))
    assert [u["to"] for u in real.updates] == ["customer"] and [a.rule for a in real.actions] == ["lifecycle"]


def test_compiled_matcher_and_its_description() -> None:
    spec = {"event": ["Demo Requested"], "trusted": True}
    assert describe_matcher(spec) == "'Demo Requested' (trusted only)"
    assert describe_matcher({"event": ["Demo Requested"]}) == "'Demo Requested'"

    class Ctx:
        def __init__(self, event: Event) -> None:
            self.event, self.doc, self.lead = event, event.document(), {}

    match = compile_matcher(spec)
    event = track("Demo Requested", 0)
    assert match(Ctx(event)) and not match(Ctx(untrusted(event)))
    assert compile_matcher({"event": ["Demo Requested"]})(Ctx(untrusted(event)))
