"""Statistics of a benchmark over seeds: mean ± std, the paired difference against the baseline with a Student-t
confidence interval, and Spearman's rank correlation.

Every plug-in of a benchmark runs with the same seeds, so plug-in A and the baseline B are compared through the
per-seed differences d_i = A_i − B_i (a paired design: the seed's data order, views and initial weights are shared).
The interval is the usual one for the mean of d: d̄ ± t_{(1+c)/2, n−1} · s_d / √n (Student 1908), with s_d the
sample standard deviation (ddof = 1). With one seed the interval is undefined (NaN bounds).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as scipy_stats


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value) of one metric over seeds."""

    mean: float
    std: float
    n: int
    values: list[float]

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PairedDifference:
    """Mean of the per-seed differences (plug-in − baseline) and its two-sided confidence interval."""

    mean: float
    std: float
    ci_low: float
    ci_high: float
    confidence: float
    n: int
    differences: list[float]

    def as_dict(self) -> dict:
        return asdict(self)


def _finite_values(values, name: str) -> np.ndarray:
    array = np.asarray(list(values), dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty sequence of numbers, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or inf: {array.tolist()}")
    return array


def summarize(values) -> Summary:
    """Mean ± sample std (ddof = 1) of the per-seed values of one metric."""
    array = _finite_values(values, "values")
    std = float(array.std(ddof=1)) if array.size > 1 else 0.0
    return Summary(float(array.mean()), std, int(array.size), array.tolist())


def t_critical(confidence: float, dof: int) -> float:
    """The two-sided Student-t critical value t_{(1+confidence)/2, dof}."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if dof < 1:
        raise ValueError(f"a t interval needs at least 1 degree of freedom, got {dof}")
    return float(scipy_stats.t.ppf(0.5 + confidence / 2.0, dof))


def paired_difference(treatment, baseline, confidence: float = 0.95) -> PairedDifference:
    """Paired difference ``treatment − baseline`` over seeds (the i-th values share a seed) with a t interval."""
    a, b = _finite_values(treatment, "treatment"), _finite_values(baseline, "baseline")
    if a.shape != b.shape:
        raise ValueError(f"paired values need one value per seed on both sides, got {a.size} and {b.size}")
    d = a - b
    n = int(d.size)
    mean = float(d.mean())
    if n < 2:
        return PairedDifference(mean, 0.0, math.nan, math.nan, confidence, n, d.tolist())
    std = float(d.std(ddof=1))
    half_width = t_critical(confidence, n - 1) * std / math.sqrt(n)
    return PairedDifference(mean, std, mean - half_width, mean + half_width, confidence, n, d.tolist())


def spearman(x, y) -> float:
    """Spearman's rank correlation of two equally long sequences (ties get average ranks); NaN when it is
    undefined (fewer than 3 pairs or a constant sequence)."""
    a, b = _finite_values(x, "x"), _finite_values(y, "y")
    if a.shape != b.shape:
        raise ValueError(f"spearman needs sequences of equal length, got {a.size} and {b.size}")
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(scipy_stats.spearmanr(a, b).statistic)
