"""The pure evaluation core: `(lead state, event or tick, now) -> (new state, actions, deadlines)`.

Imports nothing from Faust, Kafka, Redis or ClickHouse; the live worker and `nudge simulate` both call
`evaluate`.
"""

from engine.core.evaluate import Evaluation, build_view, evaluate, pending_deadlines
from engine.core.model import Action, Tick, make_action_id
from engine.core.ruleset import ActionSpec, Rule, RuleSet
from engine.core.simulate import simulate
from engine.core.state import LeadState

__all__ = [
    "Action",
    "ActionSpec",
    "Evaluation",
    "LeadState",
    "Rule",
    "RuleSet",
    "Tick",
    "build_view",
    "evaluate",
    "make_action_id",
    "pending_deadlines",
    "simulate",
]
