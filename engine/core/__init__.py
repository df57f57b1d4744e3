"""The pure evaluation core: `(lead state, event or tick, now) -> (new state, actions, deadlines)`.

Compiled matchers, lead state and derived facts, one module per rule kind (`kinds/`), `evaluate()` and
`simulate()`. The live worker, `nudge simulate` and `nudge replay` all run this same code.

May import: the standard library, orjson and `engine.events`; nothing else of Nudge, and nothing of Faust,
Kafka, Redis, ClickHouse, pydantic, YAML or the shell (tests/test_architecture.py checks the imports,
tests/core/test_purity.py what importing the core loads).
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
