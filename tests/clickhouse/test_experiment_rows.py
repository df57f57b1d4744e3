"""Experiments in the `actions` table: the fired row and every delivery row carry experiment, variant, held_out
(migration 4), and a held-out action's delivery step is `held_out`. Pure mapping plus one chDB insert."""

from __future__ import annotations

from engine.clickhouse.rows import COLUMNS, Record, to_row
from engine.core.model import Action
from engine.kafka import topics


def _row(kind: str, value: bytes) -> dict[str, object]:
    table, row = to_row(Record(kind, 0, 1, 1_700_000_000_000, None, value))
    assert table == "actions"
    return dict(zip(COLUMNS[table], row, strict=True))


def test_fired_and_delivery_rows_carry_the_arm() -> None:
    held = Action("act_1", "cart", "v1", "u1", 1000, ("m1",), "email", "why", experiment="cart-test",
                  variant="holdout", held_out=True)  # fmt: skip
    fired = _row(topics.ACTIONS, held.to_bytes())
    assert (fired["experiment"], fired["variant"], fired["held_out"]) == ("cart-test", "holdout", True)
    outcome = _row(topics.DELIVERIES, topics.delivery_record(action=held.to_json(), outcome="held_out", at_ms=5))
    assert (outcome["step"], outcome["experiment"], outcome["variant"], outcome["held_out"]) == (
        "held_out",
        "cart-test",
        "holdout",
        True,
    )
    plain = Action("act_2", "cart", "v1", "u1", 1000, ("m1",), "email", "why")
    assert "experiment" not in orjson_keys(topics.delivery_record(action=plain.to_json(), outcome="sent", at_ms=5))
    row = _row(topics.ACTIONS, plain.to_bytes())
    assert (row["experiment"], row["variant"], row["held_out"]) == ("", "", False)


def orjson_keys(value: bytes) -> set[str]:
    import orjson

    return set(orjson.loads(value))
