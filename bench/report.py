"""The benchmark's outputs: ratios and target checks added to the results, and the printed table.

`summarise(results)` adds `ratios` (worker/raw = 3/1, worker/naive = 3/2, two workers/one) and `targets`
(each issue-9 target with the measured value and whether it holds) to the results dict; `table(results)`
renders the human-readable table printed at the end of `python -m bench`.
"""

from __future__ import annotations

from typing import Any

KIB = 1024
MIB = 1024 * 1024


def _get(doc: dict[str, Any] | None, *path: str) -> Any:
    for key in path:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    m = results["measurements"]
    worker = _get(m, "worker", "events_per_s")
    results["ratios"] = {
        "worker_vs_raw (3/1)": _ratio(worker, _get(m, "raw", "events_per_s")),
        "worker_vs_naive (3/2)": _ratio(worker, _get(m, "naive", "events_per_s")),
        "worker_vs_naive_one_write (3/2'')": _ratio(worker, _get(m, "naive_one_write", "events_per_s")),
        "worker_vs_naive_tuned (3/2')": _ratio(worker, _get(m, "naive_tuned", "events_per_s")),
        "two_workers_vs_one (6)": _ratio(_get(m, "two_workers", "events_per_s"), worker),
    }
    per_lead = _get(m, "worker", "grown", "state_bytes_per_lead") or _get(m, "worker", "state",
                                                                         "state_bytes_per_lead")
    ratios = results["ratios"]
    checks = [
        ("worker >= 3x naive agent", ratios["worker_vs_naive (3/2)"], lambda v: v >= 3),
        ("stretch: worker >= 5x naive agent", ratios["worker_vs_naive (3/2)"], lambda v: v >= 5),
        ("stretch: worker >= 0.1x raw consume", ratios["worker_vs_raw (3/1)"], lambda v: v >= 0.1),
        ("event -> action p99 < 1 s", _get(m, "latency", "event_to_action_s", "p99"), lambda v: v < 1),
        ("deadline lag p99 < 1 s", _get(m, "latency", "deadline_lag_s", "p99"), lambda v: v < 1),
        ("state <= 1 KiB per active lead", per_lead, lambda v: v <= KIB),
    ]
    results["targets"] = [
        {"target": name, "value": value, "holds": None if value is None else bool(test(value))}
        for name, value, test in checks
    ]
    return results


def _num(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if not isinstance(value, float):
        return f"{value:,}{unit}"
    return f"{value:,.3f}{unit}" if value < 10 else f"{value:,.1f}{unit}"


def table(results: dict[str, Any]) -> str:
    m = results["measurements"]
    rows: list[tuple[str, str, str]] = []

    def rate_row(label: str, key: str) -> None:
        got = m.get(key)
        if got:
            cpu = _num(got.get("cpu_s_per_1k"), " CPU-s/1k ev")
            rows.append((label, _num(got.get("events_per_s"), " ev/s"), cpu))

    rate_row("(1) raw aiokafka consume + orjson", "raw")
    rate_row("(2) naive Faust agent, 2 table writes/event", "naive")
    rate_row("(2'') naive Faust agent, 1 table write/event", "naive_one_write")
    rate_row("(2') naive agent, worker's Faust settings", "naive_tuned")
    rate_row(f"(3) nudge worker [{results['broker_profile']}]", "worker")
    rate_row("(3') nudge worker [dev: 1 record/batch]", "worker_dev_profile")
    rate_row("(6) two nudge workers", "two_workers")
    for key in ("worker", "two_workers"):
        got = m.get(key) or {}
        extra = (got.get("group_joins") or 0) - (got.get("workers") or 0)
        if extra > 0:
            rows.append((f"    {key}: {extra} rebalance(s) during the run", "state figures may undercount",
                         "(Tansu end-offset bug on recovery)"))
    for key, note in (("latency", "as shipped: dev profile, Tansu fetch wait capped at 20 ms"),):
        lat = m.get(key)
        if not lat:
            continue
        ev, dl = lat["event_to_action_s"], lat["deadline_lag_s"]
        rows.append((f"(4) offered load [{note}]", _num(lat["offered_events_per_s"], " ev/s"),
                     f"achieved {_num(lat['achieved_events_per_s'])}"))
        rows.append(("    event -> action (threshold rule)", f"p50 {_num(ev['p50'], ' s')}",
                     f"p99 {_num(ev['p99'], ' s')} (n={ev['count']})"))
        rows.append(("    deadline lag (absence rules)", f"p50 {_num(dl['p50'], ' s')}",
                     f"p99 {_num(dl['p99'], ' s')} (n={dl['count']})"))
    for key, label in (("state", "(5) state"), ("grown", "(5) state, grown")):
        state = _get(m, "worker", key) if key == "state" else _get(m, "worker", "grown")
        if state:
            rss = max((r for r in state["rss_bytes"] if r), default=None)
            rows.append((f"{label}: {_num(state['active_leads'])} leads",
                         _num(state["state_bytes_per_lead"], " B/lead"),
                         f"RSS {_num(round(rss / MIB) if rss else None, ' MiB')}"))
    for name, value in results.get("ratios", {}).items():
        rows.append((f"ratio {name}", _num(value, "x"), ""))
    for check in results.get("targets", []):
        verdict = {True: "holds", False: "MISSED", None: "not measured"}[check["holds"]]
        rows.append((f"target: {check['target']}", _num(check["value"]), verdict))
    width = max(len(r[0]) for r in rows)
    second = max(len(r[1]) for r in rows)
    lines = [f"{a:<{width}}  {b:>{second}}  {c}" for a, b, c in rows]
    header = (f"Nudge benchmark {results['started_at']}  workload {results['workload']['events']:,} events / "
              f"{results['workload']['leads']:,} leads (seed {results['workload']['seed']}), "
              f"{results['partitions']} partitions, broker profile {results['broker_profile']}")
    return "\n".join([header, "-" * len(header), *lines])
