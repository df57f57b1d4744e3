"""What a demo run uses, with the bundled defaults (kept import-light: `nudge --help` loads it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@dataclass(frozen=True)
class DemoOptions:
    """Paths and knobs of `nudge demo`; the defaults are the bundled sample, demo rules and connectors."""

    root: Path = Path(".devstack")
    sample: Path = EXAMPLES / "clickstream.jsonl.gz"
    rules: Path = EXAMPLES / "rules"
    connectors: Path = EXAMPLES / "connectors.yaml"
    allowed_lateness_s: float = 0.5
    partitions: int = 4
