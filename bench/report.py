"""The benchmark's outputs: ratios, targets and gates added to the results, and the printed table.

`summarise(results, quick)` adds `ratios` (medians of the steps' windows: worker/raw = 3/1, worker/naive = 3/2,
n workers / one), `targets` and `gates` (bench/targets.py) to the results dict; `table(results)` renders the
human-readable table printed at the end of `python -m bench`; `exit_code(results)` is 1 when a gate fails.
`baseline_from(doc)` reads the figures the guard compares with from a previous results file.
"""

from __future__ import annotations

from typing import Any

from bench.targets import check_targets, get, guard, targets_met, validity

MIB = 1024 * 1024


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def baseline_from(doc: dict[str, Any] | None, source: str) -> dict[str, Any] | None:
    """The guard's baseline from a previous latest.json (`source` says where it came from)."""
    if not doc:
        return None
    ratio = get(doc, "ratios", "worker_vs_naive (3/2)")
    if not ratio:
        return None
    naive_cpu, worker_cpu = (get(doc, "measurements", k, "cpu_s_per_1k") for k in ("naive", "worker"))
    return {
        "source": source,
        "commit": get(doc, "environment", "commit"),
        "started_at": doc.get("started_at"),
        "worker_vs_naive": ratio,
        "worker_vs_naive_cpu": _ratio(naive_cpu, worker_cpu),
        "worker_events_per_s": get(doc, "measurements", "worker", "events_per_s"),
        "worker_cpu_s_per_1k": get(doc, "measurements", "worker", "cpu_s_per_1k"),
    }


def summarise(results: dict[str, Any], quick: bool = False) -> dict[str, Any]:
    m = results["measurements"]
    worker = get(m, "worker", "events_per_s")
    ratios = {
        "worker_vs_raw (3/1)": _ratio(worker, get(m, "raw", "events_per_s")),
        "worker_vs_naive (3/2)": _ratio(worker, get(m, "naive", "events_per_s")),
        "worker_vs_naive_one_write (3/2'')": _ratio(worker, get(m, "naive_one_write", "events_per_s")),
        "worker_vs_naive_tuned (3/2')": _ratio(worker, get(m, "naive_tuned", "events_per_s")),
        "journeys_vs_naive (7/2)": _ratio(get(m, "journeys", "events_per_s"), get(m, "naive", "events_per_s")),
        # CPU per event, naive over worker: the same comparison without the CPU share each process happened to get
        "worker_vs_naive_cpu (2/3 CPU-s per 1k)": _ratio(get(m, "naive", "cpu_s_per_1k"),
                                                         get(m, "worker", "cpu_s_per_1k")),
    }
    for key in sorted(m):
        if key.startswith("workers_"):
            ratios[f"{key}_vs_one (6)"] = _ratio(get(m, key, "events_per_s"), worker)
    results["ratios"] = {k: v for k, v in ratios.items() if v is not None}
    results["targets"] = check_targets(results)
    results["gates"] = [validity(results, quick), guard(results), targets_met(results, quick)]
    return results


def exit_code(results: dict[str, Any]) -> int:
    return 1 if any(g["holds"] is False for g in results.get("gates", [])) else 0


def _num(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if not isinstance(value, float):
        return f"{value:,}{unit}"
    return f"{value:,.3f}{unit}" if value < 10 else f"{value:,.1f}{unit}"


STEP_LABELS = [
    ("raw", "(1) raw aiokafka consume + orjson"),
    ("naive", "(2) naive Faust agent, 2 table writes/event"),
    ("naive_one_write", "(2'') naive Faust agent, 1 table write/event"),
    ("naive_tuned", "(2') naive agent, worker's Faust settings"),
    ("worker", "(3) nudge worker, all packs"),
    ("worker_dev_profile", "(3') nudge worker [dev: 1 record/batch]"),
    ("workers_2", "(6) 2 nudge workers"),
    ("workers_4", "(6) 4 nudge workers"),
    ("journeys", "(7) nudge worker, journey-heavy backlog"),
]


def table(results: dict[str, Any]) -> str:
    m = results["measurements"]
    rows: list[tuple[str, str, str]] = []
    for key, label in STEP_LABELS:
        got = m.get(key)
        if not got:
            continue
        spread = got.get("spread")
        rate = (f"{_num(got.get('events_per_s'))} ev/s [{_num(got.get('events_per_s_min'))}-"
                f"{_num(got.get('events_per_s_max'))}]")
        cores = got.get("cores_busy") or {}
        detail = (f"{_num(got.get('cpu_s_per_1k'))} CPU-s/1k; spread {_num(spread)}; {got.get('repetitions')}x"
                  f"{_num(got.get('window_s'))} s; cores: measured {_num(cores.get('measured_total'))}, broker "
                  f"{_num(cores.get('broker'))}, harness {_num(cores.get('harness'))}, irq "
                  f"{_num(cores.get('interrupts'))}, others {_num(cores.get('others'))}")
        if got.get("flags"):
            detail += f"  FLAGGED: {', '.join(got['flags'])}"
        rows.append((label, rate, detail))
    lat = m.get("latency")
    if lat:
        ev, dl = lat["event_to_action_s"], lat["deadline_lag_s"]
        rows.append((f"(4) offered load [{results.get('broker_profile')} profile, Tansu fetch wait capped]",
                     _num(lat["offered_events_per_s"], " ev/s"),
                     f"achieved {_num(lat['achieved_events_per_s'])}; worker busy "
                     f"{_num(lat.get('worker_cpu_busy_during_load'))}, load generator "
                     f"{_num(lat.get('load_generator_cpu_busy_during_load'))}, broker "
                     f"{_num(lat.get('broker_cpu_busy_during_load'))} cores"))
        rows.append(("    event -> action (threshold rule)", f"p50 {_num(ev['p50'], ' s')}",
                     f"p99 {_num(ev['p99'], ' s')} (n={ev['count']})"))
        rows.append(("    deadline lag (absence rules)", f"p50 {_num(dl['p50'], ' s')}",
                     f"p99 {_num(dl['p99'], ' s')} (n={dl['count']})"))
        out, arrival = lat.get("event_to_output_s"), lat.get("output_to_arrival_s")
        if out and arrival:  # where the time goes: inside the worker (input hop included), then the output hop
            rows.append(("    of which: event -> worker's produce, produce -> watcher",
                         f"p50 {_num(out['p50'], ' s')}, {_num(arrival['p50'], ' s')}",
                         f"p99 {_num(out['p99'], ' s')}, {_num(arrival['p99'], ' s')}"))
    for key, label in (("worker", "(5) state, all packs"), ("journeys", "(5) state, journey-heavy")):
        state = get(m, key, "state")
        if state:
            rss = max((r for r in state["rss_bytes"] if r), default=None)
            rows.append((f"{label}: {_num(state['active_leads'])} leads",
                         _num(state["state_bytes_per_lead"], " B/lead"),
                         f"RSS {_num(round(rss / MIB) if rss else None, ' MiB')}"
                         + (f" ({_num(round(rss / state['active_leads']))} B/lead)" if rss and state["active_leads"]
                            else "")))
    for key in sorted(k for k in m if k.startswith("store_")):
        got = m[key]
        before = got.get("before_restart") or {}
        restarts = " / ".join(_num(got.get(k), " s") for k in ("restart_to_ready_s", "second_restart_to_ready_s"))
        rows.append((f"(8) {got['store']} at {_num(got['leads'])} leads: {_num(before.get('active_leads'))} active",
                     f"RSS {_num(got.get('rss_bytes_per_lead'))} B/lead",
                     f"state {_num(before.get('state_bytes_per_lead'))} B/lead; filled in "
                     f"{_num(got.get('fill_seconds'))} s; restart to ready {restarts}"
                     + "".join(f"; {k}: {v}" for k, v in got.items() if k.endswith("_error"))))
    for name, value in results.get("ratios", {}).items():
        rows.append((f"ratio {name}", _num(value, "x"), ""))
    for check in results.get("targets", []):
        verdict = {True: "holds", False: "MISSED", None: "not measured"}[check["holds"]]
        rows.append((f"target ({check['source']}): {check['target']}", _num(check["value"]), verdict))
    for gate in results.get("gates", []):
        verdict = {True: "PASS", False: "FAIL", None: "not checked"}[gate["holds"]]
        if gate["gate"] == "ratio guard":
            detail = (f"worker/naive by {gate.get('compares')} = {_num(gate['value'])} vs baseline "
                      f"{_num(gate['baseline'])} (floor {_num(gate.get('floor'))}, "
                      f"tolerance {_num(gate['tolerance'])})")
        elif gate["gate"] == "targets met":
            missed = len(gate["missed"])
            detail = (f"{missed} target(s) MISSED (above)" if missed else "every measured target holds") + (
                "" if gate["holds"] is not None else "; quick run: not counted")
        else:
            detail = "; ".join([*(f"{k}: {', '.join(v)}" for k, v in gate["flagged"].items()),
                                *(f"{k}: failed" for k in gate["failed"])]) or "every window as asked"
        rows.append((f"gate: {gate['gate']}", verdict, detail))
    if not rows:
        return "no results"
    width = max(len(r[0]) for r in rows)
    second = max(len(r[1]) for r in rows)
    lines = [f"{a:<{width}}  {b:>{second}}  {c}" for a, b, c in rows]
    workload = results.get("workload", {})
    header = (f"Nudge benchmark {results.get('started_at')}  backlog {_num(get(results, 'backlog', 'records'))} "
              f"records over {_num(workload.get('leads'))} leads (seed {workload.get('seed')}), "
              f"{results.get('partitions')} partitions, broker profile {results.get('broker_profile')}")
    return "\n".join([header, "-" * len(header), *lines])
