"""An experiment's holdout action is recorded `held_out` before any policy: no claim, no cap, no connector."""

from __future__ import annotations

from typing import Any

from engine.core.model import Action
from engine.dispatch.delivery import Deliverer, Job


class _Untouchable:
    """Any attribute access fails: the holdout path must not reach Redis, caps, the schedule or a connector."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"a held-out action touched {name}")


async def test_a_holdout_action_is_held_out_before_every_policy() -> None:
    nothing: Any = _Untouchable()
    deliverer = Deliverer({}, nothing, nothing, nothing, nothing, recheck=nothing)
    action = Action("act_1", "cart", "v1", "u1", 1000, ("m1",), "email", "why", experiment="x", variant="holdout",
                    held_out=True)  # fmt: skip
    outcome = await deliverer.deliver(Job(action))
    assert (outcome.outcome, outcome.reason, outcome.final) == ("held_out", "holdout", True)
