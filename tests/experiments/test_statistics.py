"""The experiment statistics checked by simulation (engine/experiments/statistics.py): seeded synthetic arms with a
known true effect; numpy draws the data (vectorised), the module's scalar functions compute each run's result.

- 95 % intervals (absolute, relative, revenue per lead) cover the truth in 93-97 % of 1,000 runs;
- with no true effect the sequential test, looked at every day for 30 days, rejects in <= 5 % of runs (and with
  a real effect it does reject: the test is not merely silent);
- the hash assignment splits leads as configured (chi-square), and the chi-square tail is right.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from engine.experiments import statistics as st

RUNS = 1_000


def _arm(name: str, leads: int, conversions: int, revenue: float = 0.0, revenue_sq: float = 0.0) -> st.Arm:
    return st.Arm(name, int(leads), int(conversions), float(revenue), float(revenue_sq))


def test_interval_coverage_of_absolute_and_relative_uplift() -> None:
    rng = np.random.default_rng(19)
    n_a, n_b, p_a, p_b = 1_500, 6_000, 0.08, 0.12
    x_a = rng.binomial(n_a, p_a, RUNS)
    x_b = rng.binomial(n_b, p_b, RUNS)
    absolute = relative = 0
    for xa, xb in zip(x_a, x_b, strict=True):
        c = st.compare(_arm("holdout", n_a, xa), _arm("treatment", n_b, xb))
        assert c.absolute_interval is not None and c.relative_interval is not None
        absolute += c.absolute_interval.contains(p_b - p_a)
        relative += c.relative_interval.contains(p_b / p_a - 1)
    print(f"coverage: absolute {absolute / RUNS:.3f}, relative {relative / RUNS:.3f}")
    assert 0.93 <= absolute / RUNS <= 0.97
    assert 0.93 <= relative / RUNS <= 0.97


def test_interval_coverage_of_revenue_per_lead_and_incremental_revenue() -> None:
    """Revenue: a conversion spends a lognormal amount (skewed, like orders); the truth is p * E[amount]."""
    rng = np.random.default_rng(7)
    n_a, n_b, p_a, p_b, mu, sigma = 1_000, 4_000, 0.08, 0.12, 4.0, 0.6
    mean_amount = float(np.exp(mu + sigma**2 / 2))
    truth = (p_b - p_a) * mean_amount
    covered = covered_incremental = 0
    for _ in range(RUNS):
        rev_a = rng.lognormal(mu, sigma, n_a) * (rng.random(n_a) < p_a)
        rev_b = rng.lognormal(mu, sigma, n_b) * (rng.random(n_b) < p_b)
        a = _arm("holdout", n_a, np.count_nonzero(rev_a), rev_a.sum(), (rev_a**2).sum())
        b = _arm("treatment", n_b, np.count_nonzero(rev_b), rev_b.sum(), (rev_b**2).sum())
        c = st.compare(a, b)
        assert c.revenue_per_lead_interval is not None and c.incremental_revenue_interval is not None
        covered += c.revenue_per_lead_interval.contains(truth)
        covered_incremental += c.incremental_revenue_interval.contains(truth * n_b)
    print(f"coverage: revenue per lead {covered / RUNS:.3f}")
    assert 0.93 <= covered / RUNS <= 0.97
    assert covered_incremental == covered  # the same interval, scaled by the (fixed) treated count


def _daily_rejections(p_a: float, p_b: float, per_day_a: int, per_day_b: int, days: int, seed: int) -> np.ndarray:
    """Runs x days: did the sequential test reject at that day's look (cumulative data)?"""
    rng = np.random.default_rng(seed)
    x_a = rng.binomial(per_day_a, p_a, (RUNS, days)).cumsum(axis=1)
    x_b = rng.binomial(per_day_b, p_b, (RUNS, days)).cumsum(axis=1)
    rejected = np.zeros((RUNS, days), dtype=bool)
    for run in range(RUNS):
        for day in range(days):
            a = _arm("holdout", per_day_a * (day + 1), x_a[run, day])
            b = _arm("treatment", per_day_b * (day + 1), x_b[run, day])
            if st.enough_data(a, b):
                rejected[run, day] = st.sequential_test(a, b).significant
    return rejected


def test_false_positive_rate_under_daily_peeking() -> None:
    """No true effect, 30 daily looks: the share of runs that *ever* rejected stays <= 5 %. The naive fixed-horizon
    test looked at daily is shown alongside (it is the reason for the sequential test)."""
    days, per_day_a, per_day_b, p = 30, 40, 160, 0.10
    rejected = _daily_rejections(p, p, per_day_a, per_day_b, days, seed=30)
    fpr = rejected.any(axis=1).mean()
    rng = np.random.default_rng(30)
    x_a = rng.binomial(per_day_a, p, (RUNS, days)).cumsum(axis=1)
    x_b = rng.binomial(per_day_b, p, (RUNS, days)).cumsum(axis=1)
    naive = 0
    for run in range(RUNS):
        for day in range(days):
            a = _arm("holdout", per_day_a * (day + 1), x_a[run, day])
            b = _arm("treatment", per_day_b * (day + 1), x_b[run, day])
            if st.enough_data(a, b) and not st.absolute_uplift(a, b)[1].contains(0.0):
                naive += 1
                break
    print(f"false-positive rate under 30 daily looks: sequential {fpr:.3f}, naive fixed-horizon {naive / RUNS:.3f}")
    assert fpr <= 0.05
    assert naive / RUNS > fpr  # peeking at the fixed-horizon test does inflate it


def test_sequential_test_detects_a_real_uplift() -> None:
    """8 % -> 12 % with 40 + 160 leads a day (the peeking test's traffic): most runs reject within 30 days."""
    rejected = _daily_rejections(0.08, 0.12, 40, 160, 30, seed=31)
    power = rejected.any(axis=1).mean()
    print(f"power after 30 daily looks: {power:.3f}")
    assert power >= 0.8


def test_not_enough_data_below_the_minimum() -> None:
    c = st.compare(_arm("holdout", 99, 5), _arm("treatment", 1_000, 100))
    assert c.verdict == st.NOT_ENOUGH_DATA and c.absolute is None and c.incremental_revenue is None
    c = st.compare(_arm("holdout", 100, 2), _arm("treatment", 100, 7))
    assert c.verdict == st.NOT_ENOUGH_DATA
    c = st.compare(_arm("holdout", 100, 3), _arm("treatment", 100, 7))
    assert c.verdict != st.NOT_ENOUGH_DATA


def test_verdicts_and_numbers_on_a_clear_case() -> None:
    holdout = _arm("holdout", 2_000, 160, 160 * 50.0, 160 * 2_500.0)
    treated = _arm("treatment", 8_000, 960, 960 * 50.0, 960 * 2_500.0)
    c = st.compare(holdout, treated)
    assert c.verdict == st.BETTER
    assert c.absolute == pytest.approx(0.04)
    assert c.relative == pytest.approx(0.5)
    assert c.incremental_revenue == pytest.approx((6.0 - 4.0) * 8_000)
    assert c.sequential is not None and c.sequential.interval.low > 0
    assert st.compare(treated, holdout).verdict == st.WORSE
    same = st.compare(holdout, _arm("treatment", 8_000, 640))
    assert same.verdict == st.NO_DIFFERENCE_YET and same.sequential is not None and same.sequential.p_value > 0.05


def test_chi_square_tail() -> None:
    assert st.chi_square_sf(3.841458820694124, 1) == pytest.approx(0.05, abs=1e-9)
    assert st.chi_square_sf(5.991464547107979, 2) == pytest.approx(0.05, abs=1e-9)
    assert st.chi_square_sf(18.307038053275146, 10) == pytest.approx(0.05, abs=1e-9)
    assert st.chi_square_sf(0.5, 3) == pytest.approx(0.918891411654, abs=1e-9)
    assert st.chi_square_sf(40.0, 3) == pytest.approx(1.0659e-8, rel=1e-3)


def reference_arm(experiment_id: str, lead_id: str, holdout: float, variants: list[tuple[str, float]]) -> str:
    """The issue's assignment formula, literally (hashlib), for comparison with the core and the SQL."""
    u = int.from_bytes(hashlib.sha256(f"{experiment_id}:{lead_id}".encode()).digest()[:8], "big") / 2**64
    if u < holdout:
        return "holdout"
    if not variants:
        return "treatment"
    v = (u - holdout) / (1 - holdout)
    total = sum(w for _, w in variants)
    cumulative = 0.0
    for name, weight in variants:
        cumulative += weight
        if v < cumulative / total:
            return name
    return variants[-1][0]


def test_assignment_splits_leads_as_configured() -> None:
    """Chi-square on 20,000 leads: holdout 20 %, variants 50/30/20 of the rest."""
    variants = [("a", 50.0), ("b", 30.0), ("c", 20.0)]
    counts = dict.fromkeys(["holdout", "a", "b", "c"], 0)
    for i in range(20_000):
        counts[reference_arm("cart-copy-test", f"user-{i}", 0.2, variants)] += 1
    statistic, p = st.chi_square_balance(list(counts.values()), [0.2, 0.4, 0.24, 0.16])
    print(f"arms {counts}: chi-square {statistic:.2f}, p {p:.3f}")
    assert p > 0.001
    # and a lopsided split is caught
    assert st.chi_square_balance([2_400, 7_600], [0.2, 0.8])[1] < 1e-6
