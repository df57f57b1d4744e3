"""Every PromQL query Nudge ships, from the dashboards and the alert rules, ready to send to Prometheus.

Contract:
- `dashboard_queries()` yields one `Query` per panel target and per query variable of every dashboards/*.json,
  with Grafana's variables replaced by what Grafana would send (`$__rate_interval` → `RATE_WINDOW`, `$rule` →
  `.*` as the "All" option, ...). `label_values(metric, label)` variables become `group by (label) (metric)`.
- `alert_queries()` yields, for every alert rule, the whole expression and its signal: the expression without
  its final top-level comparison (`rate(x[5m]) > 0.1` → `rate(x[5m])`). The whole expression only has to parse
  (an alert that does not fire returns nothing); the signal must return data.
- `metric_names(expr)` lists the metric names an expression selects, for checking them against what the engine
  exports. It understands the subset of PromQL the project writes (no subqueries over string literals, etc.).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
ALERTS = DASHBOARDS / "alerts.yml"
RATE_WINDOW = "1m"
GRAFANA_VARIABLES = {
    "$__rate_interval": RATE_WINDOW,
    "$__interval": "15s",
    "$__range": "5m",
    "${datasource}": "",
}
ALL = ".*"  # what a multi-value variable set to "All" expands to (allValue in the dashboards)


@dataclass(frozen=True)
class Query:
    where: str  # "<file> / <panel title> / <refId>", for failure messages
    expr: str  # ready to send to Prometheus
    must_return_data: bool = True


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def panels(model: dict) -> Iterator[dict]:
    """Every panel, including those nested in collapsed rows."""
    for panel in model.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def substitute(expr: str, variables: list[str]) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", ALL).replace("$" + name, ALL)
    if "$" in expr:
        raise ValueError(f"unknown Grafana variable left in {expr!r}")
    return expr


def dashboard_queries() -> Iterator[Query]:
    for path in dashboard_files():
        model = json.loads(path.read_text())
        variables = [v["name"] for v in model.get("templating", {}).get("list", [])]
        for panel in panels(model):
            for target in panel.get("targets", []):
                if target.get("datasource", {}).get("type") != "prometheus":
                    continue  # the Experiments dashboard's SQL (tests/experiments/test_queries.py runs it)
                where = f"{path.name} / {panel.get('title')} / {target.get('refId')}"
                yield Query(where, substitute(target["expr"], variables))
        for var in model.get("templating", {}).get("list", []):
            if var.get("type") != "query":
                continue
            raw = var["query"] if isinstance(var["query"], str) else var["query"]["query"]
            match = re.fullmatch(r"label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)", raw)
            if not match:
                raise ValueError(f"{path.name}: variable {var['name']}: {raw!r} is not label_values(m, l)")
            yield Query(f"{path.name} / variable {var['name']}", f"group by ({match[2]}) ({match[1]})")


def alert_rules() -> Iterator[dict]:
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                yield rule


def alert_queries() -> Iterator[Query]:
    for rule in alert_rules():
        expr = " ".join(rule["expr"].split())
        labels = {k: v for k, v in rule.get("labels", {}).items() if k != "severity"}
        name = rule["alert"] + "".join(f" {{{k}={v}}}" for k, v in labels.items())
        yield Query(f"alerts.yml / {name}", expr, must_return_data=False)
        yield Query(f"alerts.yml / {name} (signal)", signal(expr))


_COMPARISON = re.compile(r"(==|!=|>=|<=|>|<)(\s*bool)?")


def signal(expr: str) -> str:
    """`expr` without its last comparison at nesting depth 0 (the threshold); `absent(x)` → `x`."""
    absent = re.fullmatch(r"absent\((.*)\)", expr.strip())
    if absent:
        return absent[1].strip()
    depth, last = 0, None
    i = 0
    quote = None
    while i < len(expr):
        ch = expr[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "\"'`":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0:
            match = _COMPARISON.match(expr, i)
            if match and expr[i : i + 2] not in ("=~", "!~"):
                last = i
                i = match.end()
                continue
        i += 1
    if last is None:
        raise ValueError(f"alert expression {expr!r} has no top-level comparison (`signal > threshold`)")
    return expr[:last].strip()


_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
    "inf", "nan",
}


def metric_names(expr: str) -> set[str]:
    """Names of the metrics `expr` selects: identifiers that are not functions, keywords or label names."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery windows
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        name = match[0]
        rest = text[match.end() :].lstrip()
        if name.lower() in _KEYWORDS or rest.startswith("("):
            continue
        if match.start() > 0 and (text[match.start() - 1].isdigit() or text[match.start() - 1] == "."):
            continue  # exponent or unit suffix of a number, e.g. 1e-9
        names.add(name)
    return names
