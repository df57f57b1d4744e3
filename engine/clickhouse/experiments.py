"""Experiment queries over the Nudge store (issue 19, docs/experiments.md): per experiment and arm, the counts the
statistics need (from the migration-5 views), turned into the report `nudge report experiments` prints, and the
assignment formula as ClickHouse SQL for analysts. Read-only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from clickhouse_connect.driver.client import Client

from engine.experiments import statistics as st

if TYPE_CHECKING:
    from engine.core.ruleset import RuleSet

HOLDOUT = "holdout"
TREATMENT = "treatment"
TREATED = "treated"  # every non-holdout arm pooled, against the holdout
SRM_P = 0.001  # a sample-ratio mismatch below this p-value (the usual alarm level: it must not fire by chance)

Config = tuple[float, Sequence[tuple[str, float]]]
"""An experiment as configured: (holdout share, [(variant id, weight), ...] in the order listed)."""


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def hash_sql(experiment_id: str, lead_column: str = "lead_id") -> str:
    """The assignment hash as a UInt64: the first 8 bytes of SHA-256(f"{experiment_id}:{lead_id}"), big-endian
    (`reinterpretAsUInt64` reads little-endian, hence the `reverse`)."""
    key = f"concat({_quote(experiment_id + ':')}, {lead_column})"
    return f"reinterpretAsUInt64(reverse(substring(SHA256({key}), 1, 8)))"


def arm_sql(hash_expr: str, holdout: float, variants: Sequence[tuple[str, float]] = ()) -> str:
    """The arm of the lead whose assignment hash (UInt64) is `hash_expr`, exactly as the core computes it:
    u = hash / 2^64 as a Float64 (the UInt64 rounded to 53 bits, as Python's int / 2**64 does), `holdout` when
    u < holdout, else v = (u - holdout) / (1 - holdout) and the first variant whose cumulative weight share
    (cumulative weight / total weight) exceeds v; the last variant when rounding leaves none (u rounds to 1.0 for
    the top 2^10 hashes). Without variants the other arm is `treatment`. Same IEEE-754 double operations in the
    same order as Python, so the boundaries agree bit for bit (tests/experiments/test_queries.py)."""
    u = f"(toFloat64({hash_expr}) / 18446744073709551616.0)"
    h = repr(float(holdout))
    if not variants:
        return f"if({u} < {h}, 'holdout', 'treatment')"
    v = f"(({u} - {h}) / (1.0 - {h}))"
    total = sum(float(w) for _, w in variants)
    cumulative = 0.0
    branches = [f"{u} < {h}", "'holdout'"]
    for name, weight in variants[:-1]:
        cumulative += float(weight)
        branches += [f"{v} < ({cumulative!r} / {total!r})", _quote(name)]
    return f"multiIf({', '.join(branches)}, {_quote(variants[-1][0])})"


def assignment_sql(
    experiment_id: str, holdout: float, variants: Sequence[tuple[str, float]] = (), lead_column: str = "lead_id"
) -> str:
    """The arm of the lead id in `lead_column` for an experiment configured with `holdout` (a share, 0.1 for
    10 %) and `variants` [(id, weight), ...] in the order listed."""
    return arm_sql(hash_sql(experiment_id, lead_column), holdout, variants)


def _ms(column: str) -> str:
    return f"toInt64(toUnixTimestamp64Milli({column}))"


def arms(client: Client, since_ms: int, until_ms: int) -> dict[str, dict[str, Any]]:
    """Per experiment: its rule(s) and `statistics.Arm` per arm, over the people assigned in `[since_ms, until_ms)`
    (their goals and actions counted whenever they came: the worker records goals only within goal_within of the
    assignment)."""
    sql = f"""
        SELECT l.experiment, l.variant, groupUniqArray(l.rule), count(), countIf(l.goals > 0), sum(l.revenue),
               sum(l.revenue * l.revenue), sum(l.actions_sent), sum(l.actions_held_out)
        FROM experiment_leads AS l
        WHERE {_ms("l.assigned_at")} >= %(since)s AND {_ms("l.assigned_at")} < %(until)s
        GROUP BY l.experiment, l.variant ORDER BY l.experiment, l.variant"""
    out: dict[str, dict[str, Any]] = {}
    rows = client.query(sql, parameters={"since": since_ms, "until": until_ms}).result_rows
    for experiment, variant, rules, leads, conversions, revenue, revenue_sq, sent, held in rows:
        entry = out.setdefault(experiment, {"rules": set(), "arms": [], "held_out_actions": 0})
        entry["rules"].update(rules)
        entry["held_out_actions"] += int(held)
        entry["arms"].append(
            st.Arm(str(variant), int(leads), int(conversions), float(revenue), float(revenue_sq), int(sent))
        )
    return out


def _ordered(arms_: list[st.Arm]) -> list[st.Arm]:
    """The holdout first, then the variants by id (`treatment` when there are none)."""
    return sorted(arms_, key=lambda a: (a.name != HOLDOUT, a.name))


def _interval(interval: st.Interval | None, digits: int) -> list[float] | None:
    return None if interval is None else [round(interval.low, digits), round(interval.high, digits)]


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def comparison_json(c: st.Comparison) -> dict[str, Any]:
    seq = c.sequential
    return {
        "arm": c.arm,
        "baseline": c.baseline,
        "verdict": c.verdict,
        "absolute_uplift": _round(c.absolute, 6),
        "absolute_uplift_ci95": _interval(c.absolute_interval, 6),
        "relative_uplift": _round(c.relative, 6),
        "relative_uplift_ci95": _interval(c.relative_interval, 6),
        "sequential": None
        if seq is None
        else {
            "method": "mSPRT (normal mixture), always valid",
            "p_value": round(seq.p_value, 6),
            "z": round(seq.z, 4),
            "confidence_sequence_95": _interval(seq.interval, 6),
            "significant": seq.significant,
        },
        "revenue_per_lead_difference": _round(c.revenue_per_lead_difference, 4),
        "revenue_per_lead_difference_ci95": _interval(c.revenue_per_lead_interval, 4),
        "incremental_revenue": _round(c.incremental_revenue, 2),
        "incremental_revenue_ci95": _interval(c.incremental_revenue_interval, 2),
        "notes": list(c.notes),
    }


def arm_json(arm: st.Arm) -> dict[str, Any]:
    return {
        "arm": arm.name,
        "leads": arm.leads,
        "actions_sent": arm.actions_sent,
        "conversions": arm.conversions,
        "conversion_rate": _round(arm.rate, 6),
        "revenue": round(arm.revenue, 2),
        "revenue_per_lead": _round(arm.revenue_per_lead, 4),
    }


def configs(rules: RuleSet) -> dict[str, Config]:
    """The experiments of a rule set (rules' `experiment:` and journeys' `split:`) by id, as `Config`s."""
    return {
        e.id: (e.holdout, [(v.id, v.weight) for v in e.variants]) for rule in rules.rules for e in rule.experiments
    }


def expected_shares(config: Config) -> dict[str, float]:
    """Each arm's configured share of the leads: the holdout's, and the rest split by weight."""
    holdout, variants = config
    if not variants:
        return {HOLDOUT: holdout, TREATMENT: 1 - holdout}
    total = sum(w for _, w in variants)
    return {HOLDOUT: holdout, **{name: (1 - holdout) * w / total for name, w in variants}}


def balance(arms_: Sequence[st.Arm], config: Config | None) -> dict[str, Any] | None:
    """The sample-ratio check: do the arms split the leads as configured (chi-square)? A mismatch means the
    assignment or the logging is broken (or the configuration changed mid-experiment) and the uplift cannot be
    trusted. None without a configuration (the experiment is not in the loaded rules)."""
    if config is None:
        return None
    shares = expected_shares(config)
    counts = {a.name: a.leads for a in arms_}
    unknown = sorted(set(counts) - set(shares))
    if unknown:
        return {"expected_shares": shares, "p_value": None, "mismatch": True,
                "note": f"arms not in the configuration: {', '.join(unknown)}"}  # fmt: skip
    live = {name: share for name, share in shares.items() if share > 0}
    statistic, p_value = st.chi_square_balance([counts.get(n, 0) for n in live], list(live.values()))
    return {
        "expected_shares": {n: round(v, 6) for n, v in shares.items()},
        "chi_square": round(statistic, 4),
        "p_value": round(p_value, 6),
        "mismatch": p_value < SRM_P,
    }


def analyse(
    experiment: str,
    rules: Sequence[str],
    arms_: list[st.Arm],
    held_out_actions: int = 0,
    config: Config | None = None,
) -> dict[str, Any]:
    """One experiment's report: its arms, each variant against the holdout and against the first variant (the
    first listed when `config` is known, else by id), every variant pooled ("treated") against the holdout, whose
    incremental revenue is the experiment's, and the sample-ratio check when `config` is known."""
    ordered = _ordered(arms_)
    if config is not None:
        listed = [name for name, _ in config[1]]
        ordered.sort(key=lambda a: (a.name != HOLDOUT, listed.index(a.name) if a.name in listed else len(listed)))
    holdout = next((a for a in ordered if a.name == HOLDOUT), None)
    variants = [a for a in ordered if a.name != HOLDOUT]
    comparisons = []
    if holdout is not None:
        comparisons += [st.compare(holdout, v) for v in variants]
    if len(variants) > 1:
        comparisons += [st.compare(variants[0], v) for v in variants[1:]]
    overall = None
    if holdout is not None and variants:
        treated = variants[0] if len(variants) == 1 else st.pooled(TREATED, variants)
        overall = st.compare(holdout, treated)
    return {
        "experiment": experiment,
        "rules": sorted(rules),
        "arms": [arm_json(a) for a in ordered],
        "held_out_actions": held_out_actions,
        "balance": balance(ordered, config),
        "comparisons": [comparison_json(c) for c in comparisons],
        "overall": None if overall is None else comparison_json(overall),
    }


def report(
    client: Client, since_ms: int, until_ms: int, configs: Mapping[str, Config] | None = None
) -> dict[str, Any]:
    """Every experiment with people assigned in the window (what `nudge report experiments --json` prints), and
    the total incremental revenue over the experiments that have enough data. `configs`: the experiments as the
    loaded rules configure them, by id (for the sample-ratio check and the variants' order)."""
    found = arms(client, since_ms, until_ms)
    configs = configs or {}
    experiments = [
        analyse(name, sorted(entry["rules"]), entry["arms"], entry["held_out_actions"], configs.get(name))
        for name, entry in sorted(found.items())
    ]
    return {
        "window": {"since_ms": since_ms, "until_ms": until_ms},
        "method": {
            "interval": "95 % fixed-sample intervals (Agresti-Caffo difference, Katz ratio, Welch revenue)",
            "verdict": "always-valid mSPRT (normal mixture): safe to look every day",
            "minimum": {"leads_per_arm": st.MIN_LEADS_PER_ARM, "conversions": st.MIN_CONVERSIONS},
        },
        "experiments": experiments,
        "incremental_revenue": incremental_total(experiments),
    }


def incremental_total(experiments: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The sum of the experiments' incremental revenue (treated vs holdout) with an interval from their standard
    errors added in quadrature (experiments treated as independent); None when no experiment has enough data."""
    measured = [e for e in experiments if e["overall"] is not None and e["overall"]["incremental_revenue"] is not None]
    if not measured:
        return None
    total = sum(e["overall"]["incremental_revenue"] for e in measured)
    variance = sum(((e["overall"]["incremental_revenue_ci95"][1] - e["overall"]["incremental_revenue_ci95"][0]) /
                    (2 * st.Z95)) ** 2 for e in measured)  # fmt: skip
    half = st.Z95 * variance**0.5
    interval = [round(total - half, 2), round(total + half, 2)]
    return {
        "revenue": round(total, 2),
        "ci95": measured[0]["overall"]["incremental_revenue_ci95"] if len(measured) == 1 else interval,
        "experiments": [e["experiment"] for e in measured],
        "not_measured": [e["experiment"] for e in experiments if e not in measured],
    }


def uplift_sql(time_filter: str = "1") -> str:
    """Per experiment, every non-holdout arm pooled ("treated") against the holdout, in SQL, the same numbers as
    `statistics.compare` (Agresti-Caffo 95 % interval, the mSPRT's always-valid p-value and verdict, incremental
    revenue with Welch's interval), over the people of `experiment_leads` matching `time_filter` (Grafana:
    `$__timeFilter(assigned_at)`). For the Experiments dashboard and analysts; `nudge report experiments` is the
    reference."""
    z = repr(st.Z95)
    mixing = repr(st.OPTIMAL_MIXING_RATIO / st.DESIGN_HARMONIC_LEADS)
    counts = f"""
        SELECT experiment,
               countIf(variant = 'holdout') AS n_h, countIf(variant != 'holdout') AS n_t,
               countIf(variant = 'holdout' AND goals > 0) AS x_h, countIf(variant != 'holdout' AND goals > 0) AS x_t,
               sumIf(revenue, variant = 'holdout') AS r_h, sumIf(revenue, variant != 'holdout') AS r_t,
               sumIf(revenue * revenue, variant = 'holdout') AS q_h,
               sumIf(revenue * revenue, variant != 'holdout') AS q_t
        FROM experiment_leads WHERE {time_filter} GROUP BY experiment"""
    return f"""
SELECT experiment, n_h AS holdout_leads, n_t AS treated_leads,
       round(x_h / n_h, 4) AS holdout_rate, round(x_t / n_t, 4) AS treated_rate,
       round(x_t / n_t - x_h / n_h, 4) AS uplift,
       round(((x_t + 1) / (n_t + 2) - (x_h + 1) / (n_h + 2)) - {z} * sqrt(v), 4) AS uplift_ci95_low,
       round(((x_t + 1) / (n_t + 2) - (x_h + 1) / (n_h + 2)) + {z} * sqrt(v), 4) AS uplift_ci95_high,
       round(least(1.0, exp(0.5 * log1p(ratio) - pow(x_t / n_t - x_h / n_h, 2) / v * ratio / (2 * (1 + ratio)))),
             4) AS always_valid_p,
       multiIf(n_h < {st.MIN_LEADS_PER_ARM} OR n_t < {st.MIN_LEADS_PER_ARM} OR x_h + x_t < {st.MIN_CONVERSIONS},
               '{st.NOT_ENOUGH_DATA}', always_valid_p <= {st.ALPHA}, if(uplift > 0, '{st.BETTER}', '{st.WORSE}'),
               '{st.NO_DIFFERENCE_YET}') AS verdict,
       round((r_t / n_t - r_h / n_h) * n_t, 2) AS incremental_revenue,
       round((r_t / n_t - r_h / n_h - {z} * se_rev) * n_t, 2) AS incremental_ci95_low,
       round((r_t / n_t - r_h / n_h + {z} * se_rev) * n_t, 2) AS incremental_ci95_high
FROM (
    SELECT *,
           ((x_t + 1) / (n_t + 2)) * (1 - (x_t + 1) / (n_t + 2)) / (n_t + 2)
             + ((x_h + 1) / (n_h + 2)) * (1 - (x_h + 1) / (n_h + 2)) / (n_h + 2) AS v,
           {mixing} / (1 / n_h + 1 / n_t) AS ratio,
           sqrt(greatest(0, (q_t - r_t * r_t / n_t) / greatest(1, n_t - 1)) / n_t
                + greatest(0, (q_h - r_h * r_h / n_h) / greatest(1, n_h - 1)) / n_h) AS se_rev
    FROM ({counts})
    WHERE n_h > 0 AND n_t > 0
)
ORDER BY experiment"""
