"""The statistics of an experiment, pure (standard library only, no I/O): per-arm rates, uplift of an arm over a
baseline arm with 95 % intervals, an always-valid sequential test, incremental revenue, and the sample-ratio check.
docs/experiments.md explains the choices; tests/experiments/test_statistics.py checks coverage and the
false-positive rate under daily peeking by simulation.

Methods (why, in short):
- Absolute uplift (difference in conversion rates): Agresti-Caffo interval (one success and one failure added to
  each arm for the standard error): the Wald interval's coverage without its collapse at 0 or 100 %.
- Relative uplift: the log risk ratio's (Katz) interval, exponentiated: asymmetric like the ratio itself.
- Revenue per lead: Welch's unequal-variance normal interval from per-lead sums and sums of squares (revenue is
  skewed, but the per-arm means are over hundreds of leads at least: see `MIN_LEADS_PER_ARM`).
- The verdict: a mixture sequential probability ratio test (mSPRT, Johari et al. 2017; the normal-mixture
  boundary of Howard et al. 2021) on the difference in proportions. Its p-value and its confidence sequence are
  valid at *every* sample size at once, so looking at the report every day (or every minute) does not inflate
  the false-positive rate the way repeated fixed-horizon tests do. The fixed-horizon 95 % interval is still
  shown as the estimate's precision; only the sequential test decides.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

ALPHA = 0.05
Z95 = NormalDist().inv_cdf(0.975)  # 1.959963984540054

MIN_LEADS_PER_ARM = 100
"""Below this many leads in either arm the comparison says "not enough data yet"."""
MIN_CONVERSIONS = 10
"""... and below this many conversions in the two arms together."""

DESIGN_HARMONIC_LEADS = 500.0
"""The mSPRT's mixing variance is tuned so its confidence sequence is tightest when 1/(1/n_a + 1/n_b) reaches this
(500: two arms of 1,000 leads, or a holdout of 600 against 3,000 treated). Smaller or larger samples stay valid,
the boundary is only a little wider there."""

# The optimal ratio of mixing variance to the estimate's variance at the design size: t = 2 log(1/alpha) + log(1 + t)
# (minimises the normal-mixture boundary's width there; the tuning of Howard et al. 2021).
OPTIMAL_MIXING_RATIO = 2 * math.log(1 / ALPHA)
for _ in range(50):
    OPTIMAL_MIXING_RATIO = 2 * math.log(1 / ALPHA) + math.log(1 + OPTIMAL_MIXING_RATIO)

NOT_ENOUGH_DATA = "not enough data yet"
BETTER = "better"
WORSE = "worse"
NO_DIFFERENCE_YET = "no significant difference yet"


@dataclass(frozen=True)
class Arm:
    """What one arm of an experiment measured: leads assigned to it, those with at least one goal event within the
    goal window (conversions), the sum of their goal revenue and the sum of each lead's revenue squared (for the
    variance of revenue per lead), and the actions actually sent to them."""

    name: str
    leads: int
    conversions: int
    revenue: float = 0.0
    revenue_sq: float = 0.0
    actions_sent: int = 0

    @property
    def rate(self) -> float | None:
        return self.conversions / self.leads if self.leads else None

    @property
    def revenue_per_lead(self) -> float | None:
        return self.revenue / self.leads if self.leads else None

    def revenue_variance(self) -> float:
        """Sample variance of revenue per lead (0 for fewer than two leads)."""
        if self.leads < 2:
            return 0.0
        mean = self.revenue / self.leads
        return max(0.0, (self.revenue_sq - self.leads * mean * mean) / (self.leads - 1))


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True)
class Sequential:
    """The always-valid test of "the two conversion rates are equal": `p_value` = min(1, 1/Λ) with Λ the mixture
    likelihood ratio; `interval` the confidence sequence for the difference (arm minus baseline). Rejecting when
    p_value <= alpha, at whatever time one looks, keeps the false-positive rate <= alpha."""

    z: float
    log_likelihood_ratio: float
    p_value: float
    interval: Interval
    significant: bool


@dataclass(frozen=True)
class Comparison:
    """`arm` against `baseline` (the holdout, or the first variant). Estimates are None when there is not enough
    data yet (`verdict` says so)."""

    arm: str
    baseline: str
    verdict: str
    absolute: float | None = None
    absolute_interval: Interval | None = None
    relative: float | None = None
    relative_interval: Interval | None = None
    sequential: Sequential | None = None
    revenue_per_lead_difference: float | None = None
    revenue_per_lead_interval: Interval | None = None
    incremental_revenue: float | None = None
    incremental_revenue_interval: Interval | None = None
    notes: tuple[str, ...] = field(default=())


def enough_data(baseline: Arm, arm: Arm) -> bool:
    """The documented minimum: each arm at least `MIN_LEADS_PER_ARM` leads and the two together at least
    `MIN_CONVERSIONS` conversions."""
    return (
        baseline.leads >= MIN_LEADS_PER_ARM
        and arm.leads >= MIN_LEADS_PER_ARM
        and baseline.conversions + arm.conversions >= MIN_CONVERSIONS
    )


def _adjusted_variance(arm: Arm) -> float:
    """Agresti-Caffo: the variance of the rate with one success and one failure added."""
    p = (arm.conversions + 1) / (arm.leads + 2)
    return p * (1 - p) / (arm.leads + 2)


def absolute_uplift(baseline: Arm, arm: Arm, z: float = Z95) -> tuple[float, Interval]:
    """Difference in conversion rates (arm minus baseline) and its Agresti-Caffo interval. Both arms need leads."""
    estimate = arm.conversions / arm.leads - baseline.conversions / baseline.leads
    centre = (arm.conversions + 1) / (arm.leads + 2) - (baseline.conversions + 1) / (baseline.leads + 2)
    half = z * math.sqrt(_adjusted_variance(arm) + _adjusted_variance(baseline))
    return estimate, Interval(centre - half, centre + half)


def relative_uplift(baseline: Arm, arm: Arm, z: float = Z95) -> tuple[float, Interval] | None:
    """Arm's rate over the baseline's minus 1, with the Katz log-ratio interval; None while either arm has no
    conversions (the ratio is undefined or infinite)."""
    if not baseline.conversions or not arm.conversions:
        return None
    ratio = (arm.conversions / arm.leads) / (baseline.conversions / baseline.leads)
    se = math.sqrt(1 / arm.conversions - 1 / arm.leads + 1 / baseline.conversions - 1 / baseline.leads)
    return ratio - 1, Interval(ratio * math.exp(-z * se) - 1, ratio * math.exp(z * se) - 1)


def sequential_test(
    baseline: Arm, arm: Arm, alpha: float = ALPHA, design_harmonic_leads: float = DESIGN_HARMONIC_LEADS
) -> Sequential:
    """The mSPRT for the difference in proportions with a normal mixing distribution N(0, tau^2) over the effect:

        Λ = sqrt(V / (V + tau^2)) * exp(tau^2 * d^2 / (2 V (V + tau^2)))

    with d the observed difference and V its variance (Agresti-Caffo adjusted, as in `absolute_uplift`).
    tau^2 = t* · V*, V* the variance at the design size (`design_harmonic_leads`, with the observed per-lead
    variance), t* the boundary-optimal ratio; so tau^2 / V = r = t* · h / h* with h = 1/(1/n_a + 1/n_b).
    The confidence sequence is every effect θ with Λ(θ) < 1/alpha:
    |d - θ| < sqrt(V (1 + r) / r · (2 log(1/alpha) + log(1 + r)))."""
    variance = _adjusted_variance(arm) + _adjusted_variance(baseline)
    difference = arm.conversions / arm.leads - baseline.conversions / baseline.leads
    harmonic = 1 / (1 / arm.leads + 1 / baseline.leads)
    r = OPTIMAL_MIXING_RATIO * harmonic / design_harmonic_leads
    z = difference / math.sqrt(variance)
    log_lr = -0.5 * math.log1p(r) + z * z * r / (2 * (1 + r))
    p_value = min(1.0, math.exp(-log_lr))
    half = math.sqrt(variance * (1 + r) / r * (2 * math.log(1 / alpha) + math.log1p(r)))
    return Sequential(
        z=z,
        log_likelihood_ratio=log_lr,
        p_value=p_value,
        interval=Interval(difference - half, difference + half),
        significant=p_value <= alpha,
    )


def revenue_difference(baseline: Arm, arm: Arm, z: float = Z95) -> tuple[float, Interval]:
    """Revenue per lead, arm minus baseline, with Welch's normal interval."""
    difference = (arm.revenue / arm.leads) - (baseline.revenue / baseline.leads)
    se = math.sqrt(arm.revenue_variance() / arm.leads + baseline.revenue_variance() / baseline.leads)
    return difference, Interval(difference - z * se, difference + z * se)


def incremental_revenue(baseline: Arm, treated: Arm, z: float = Z95) -> tuple[float, Interval]:
    """(revenue per lead in `treated` - in `baseline`) * treated leads: what the nudge added over doing nothing,
    with the revenue difference's interval scaled the same way (the treated count is fixed, not estimated)."""
    difference, interval = revenue_difference(baseline, treated, z)
    n = treated.leads
    return difference * n, Interval(interval.low * n, interval.high * n)


def compare(baseline: Arm, arm: Arm, alpha: float = ALPHA) -> Comparison:
    """Everything the report shows for `arm` against `baseline`; estimates only above the documented minimum."""
    if not enough_data(baseline, arm):
        return Comparison(
            arm=arm.name,
            baseline=baseline.name,
            verdict=NOT_ENOUGH_DATA,
            notes=(f"needs >= {MIN_LEADS_PER_ARM} leads in each arm and >= {MIN_CONVERSIONS} conversions in the two",),
        )
    absolute, absolute_ci = absolute_uplift(baseline, arm)
    relative = relative_uplift(baseline, arm)
    sequential = sequential_test(baseline, arm, alpha)
    revenue, revenue_ci = revenue_difference(baseline, arm)
    incremental, incremental_ci = incremental_revenue(baseline, arm)
    verdict = (BETTER if absolute > 0 else WORSE) if sequential.significant else NO_DIFFERENCE_YET
    return Comparison(
        arm=arm.name,
        baseline=baseline.name,
        verdict=verdict,
        absolute=absolute,
        absolute_interval=absolute_ci,
        relative=None if relative is None else relative[0],
        relative_interval=None if relative is None else relative[1],
        sequential=sequential,
        revenue_per_lead_difference=revenue,
        revenue_per_lead_interval=revenue_ci,
        incremental_revenue=incremental,
        incremental_revenue_interval=incremental_ci,
    )


def pooled(name: str, arms: Sequence[Arm]) -> Arm:
    """Several arms as one (every variant together: "treated" against the holdout)."""
    return Arm(
        name=name,
        leads=sum(a.leads for a in arms),
        conversions=sum(a.conversions for a in arms),
        revenue=sum(a.revenue for a in arms),
        revenue_sq=sum(a.revenue_sq for a in arms),
        actions_sent=sum(a.actions_sent for a in arms),
    )


def chi_square_balance(counts: Sequence[int], shares: Sequence[float]) -> tuple[float, float]:
    """Pearson's chi-square test that `counts` were drawn with the expected `shares` (a sample-ratio check:
    assignment by the hash must split leads as configured). Returns (statistic, p-value); k-1 degrees of freedom."""
    total = sum(counts)
    norm = sum(shares)
    statistic = 0.0
    for count, share in zip(counts, shares, strict=True):
        expected = total * share / norm
        if expected > 0:
            statistic += (count - expected) ** 2 / expected
    return statistic, chi_square_sf(statistic, len(counts) - 1)


def chi_square_sf(x: float, dof: int) -> float:
    """P(X >= x) for X ~ chi-square(dof): the regularised upper incomplete gamma Q(dof/2, x/2)."""
    if dof <= 0:
        return 1.0
    if x <= 0:
        return 1.0
    return _gamma_q(dof / 2, x / 2)


def _gamma_q(a: float, x: float) -> float:
    """Regularised upper incomplete gamma (series below a + 1, Lentz continued fraction above; Numerical Recipes)."""
    log_prefix = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1:
        term = total = 1 / a
        ap = a
        for _ in range(1000):
            ap += 1
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1 - total * math.exp(log_prefix))
    tiny = 1e-300
    b = x + 1 - a
    c = 1 / tiny
    d = 1 / b
    h = d
    for i in range(1, 1000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return min(1.0, math.exp(log_prefix) * h)
