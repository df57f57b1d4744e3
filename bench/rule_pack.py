"""The rule packs the benchmark runs: the shipped pack as is, and a time-compressed copy for latency runs.

Why a compressed copy: the shipped abandonment rules wait 30 minutes to 3 days, far longer than a benchmark
can. `compressed_pack(src, dst, factor)` writes the shipped rule files to `dst` with every absence rule's
`within:` divided by `factor` (30m / 600 = 3s), so carts abandoned during the run fall due while the load is
still running. Everything else (threshold windows, scores, conditions, cooldowns) is unchanged, so the work
per event is the shipped pack's. Comments are not kept (the files are rewritten from their YAML).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from engine.core.durations import parse_duration
from engine.language.loader import rule_files

SHIPPED = Path(__file__).resolve().parent.parent / "rules"


def compressed_pack(src: Path, dst: Path, factor: int) -> dict[str, int]:
    """Write the compressed copy; returns {absence rule id: compressed window in ms}."""
    dst.mkdir(parents=True, exist_ok=True)
    windows: dict[str, int] = {}
    for path in rule_files([src]):
        doc = yaml.safe_load(path.read_text())
        for rule in doc.get("rules") or []:
            if rule.get("kind") == "absence" and "within" in rule:
                window_ms = max(1, parse_duration(rule["within"]) // factor)
                rule["within"] = f"{window_ms}ms"
                windows[rule["id"]] = window_ms
        (dst / path.name).write_text(yaml.safe_dump(doc, sort_keys=False))
    return windows
