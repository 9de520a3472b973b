"""Distribution drift of a suite's distances: pure numpy, no scipy, so the light gate can judge drift.

`detect` compares the most recent distances with a baseline using three views that fail differently:
KS (any shape change, with a p-value), PSI (the industry's binned score, held above its sampling
noise floor at the KS significance level) and the 1-D Wasserstein distance (how far, in distance
units, the mass moved)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from gate.judging.policy import DriftPolicy

Sample = Iterable[float] | np.ndarray  # a 1-D sample of distances
FloatArray = np.ndarray

PSI_EPSILON = 1e-4  # share given to an empty bin so the log stays finite
NULL_DRAWS = 100_000  # simulated PSIs behind each noise floor: 100 beyond it at alpha 0.001


@dataclass(frozen=True)
class DriftResult:
    """One drift check. The statistics are None when there were too few samples to run it."""

    ks: float | None
    ks_p: float | None
    psi: float | None
    wasserstein: float | None
    n_baseline: int
    n_recent: int
    drifted: bool
    reasons: list[str] = field(default_factory=list)

    @property
    def checked(self) -> bool:
        return self.ks_p is not None


def _sample(values: Sample, name: str, *, min_size: int = 1) -> FloatArray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {array.shape}")
    if array.size < min_size:
        raise ValueError(f"{name}: expected at least {min_size} value(s), got {array.size}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return array


def _ecdfs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both empirical CDFs at every distinct observed value (ties counted on the right)."""
    points = np.unique(np.concatenate([a, b]))
    cdf_a = np.searchsorted(np.sort(a), points, side="right") / a.size
    cdf_b = np.searchsorted(np.sort(b), points, side="right") / b.size
    return points, cdf_a, cdf_b


def kolmogorov_sf(lam: float) -> float:
    """P(K > lam) for the Kolmogorov distribution; two series so both tails converge fast
    (Numerical Recipes 3rd ed., 6.14)."""
    if lam <= 0:
        return 1.0
    if lam < 1.18:
        y = math.exp(-(math.pi**2) / (8 * lam**2))
        cdf = math.sqrt(2 * math.pi) / lam * (y + y**9 + y**25 + y**49)
        return min(1.0, max(0.0, 1.0 - cdf))
    x = math.exp(-2 * lam**2)
    return min(1.0, max(0.0, 2 * (x - x**4 + x**9)))


def ks_2samp(a: Sample, b: Sample) -> tuple[float, float]:
    """Two-sample KS: the exact statistic sup|F_a - F_b| and its asymptotic p-value with
    Stephens' effective-n correction, which keeps it usable down to ~5 samples a side."""
    a, b = _sample(a, "a"), _sample(b, "b")
    _, cdf_a, cdf_b = _ecdfs(a, b)
    statistic = float(np.max(np.abs(cdf_a - cdf_b)))
    effective_n = math.sqrt(a.size * b.size / (a.size + b.size))
    pvalue = kolmogorov_sf((effective_n + 0.12 + 0.11 / effective_n) * statistic)
    return statistic, pvalue


def psi(expected: Sample, actual: Sample, bins: int = 10) -> float:
    """Population stability index over quantile bins of `expected` (the baseline), so each
    baseline bin holds about the same share; tied quantiles merge bins."""
    expected, actual = _sample(expected, "expected"), _sample(actual, "actual")
    if bins < 2:
        raise ValueError(f"bins: expected at least 2, got {bins}")
    inner_edges = np.unique(np.quantile(expected, np.linspace(0, 1, bins + 1)[1:-1]))
    n_bins = inner_edges.size + 1
    share_expected = _bin_shares(expected, inner_edges, n_bins)
    share_actual = _bin_shares(actual, inner_edges, n_bins)
    return float(np.sum((share_actual - share_expected) * np.log(share_actual / share_expected)))


@lru_cache(maxsize=256)
def psi_noise_floor(n_expected: int, n_actual: int, bins: int, alpha: float) -> float:
    """The PSI that two samples of one continuous distribution exceed with probability alpha.

    Over the baseline's quantile bins that null does not depend on the distribution (see
    `_null_bin_masses`), so its quantile is simulated, with a fixed seed: a size always gets the
    same floor. The chi-square approximation, chi2(bins - 1) * (1/n + 1/m), is its large-sample
    limit; at 30 to 50 recent values an empty bin alone (PSI ~1.5) is likelier than alpha = 0.001,
    and that approximation alarmed up to 10 times too often."""
    if n_expected < bins:
        raise ValueError(f"n_expected: {n_expected} baseline values are too few for {bins} quantile bins")
    if n_actual < 1:
        raise ValueError(f"n_actual: expected at least 1, got {n_actual}")
    if bins < 2:
        raise ValueError(f"bins: expected at least 2, got {bins}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: expected 0 < alpha < 1, got {alpha}")
    rng = np.random.default_rng(0)
    expected, masses = _null_bin_masses(n_expected, bins, rng)
    actual = np.maximum(rng.multinomial(n_actual, masses) / n_actual, PSI_EPSILON)
    null = np.sum((actual - expected) * np.log(actual / expected), axis=1)
    return float(np.quantile(null, 1 - alpha, method="higher"))


def _null_bin_masses(n_expected: int, bins: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The baseline's shares of its quantile bins, and NULL_DRAWS draws of the bins' true masses: the
    baseline's n values cut the probability axis into n + 1 gaps of Dirichlet(1, ..., 1) sizes
    (exponentials, normalised), and a bin holds its whole gaps and the share of the gap its linearly
    interpolated edge splits. Distinct values all bin alike, so ranks stand for any baseline."""
    ranks = np.arange(n_expected, dtype=np.float64)
    edges = np.quantile(ranks, np.linspace(0, 1, bins + 1)[1:-1])
    below = np.floor(edges).astype(int)  # an edge splits the gap just above this baseline value
    split = edges - below  # the share of that gap under the edge
    whole = np.diff(np.concatenate([[-1], below, [n_expected]])) - np.r_[0, np.ones(bins - 1, dtype=int)]
    masses = rng.gamma(whole, size=(NULL_DRAWS, bins))  # a sum of k exponentials is gamma(k)
    edge_gaps = rng.exponential(size=(NULL_DRAWS, bins - 1))
    masses[:, :-1] += split * edge_gaps
    masses[:, 1:] += (1 - split) * edge_gaps
    return _bin_shares(ranks, edges, bins), masses / masses.sum(axis=1, keepdims=True)


def _bin_shares(values: np.ndarray, inner_edges: np.ndarray, n_bins: int) -> np.ndarray:
    counts = np.bincount(np.searchsorted(inner_edges, values, side="right"), minlength=n_bins)
    return np.maximum(counts / values.size, PSI_EPSILON)


def wasserstein_1d(a: Sample, b: Sample) -> float:
    """Earth mover's distance between two samples: the area between their empirical CDFs."""
    a, b = _sample(a, "a"), _sample(b, "b")
    points, cdf_a, cdf_b = _ecdfs(a, b)
    return float(np.sum(np.abs(cdf_a - cdf_b)[:-1] * np.diff(points)))


def detect(baseline: Sample, recent: Sample, policy: DriftPolicy) -> DriftResult:
    """Judge the last `policy.window` distances against the last `policy.baseline_size` baseline ones."""
    baseline = _sample(baseline, "baseline", min_size=0)[-policy.baseline_size :]
    recent = _sample(recent, "recent", min_size=0)[-policy.window :]
    short = [
        f"not enough samples ({name} n={values.size} < min {policy.min_samples})"
        for name, values in (("baseline", baseline), ("recent", recent))
        if values.size < policy.min_samples
    ]
    if short:
        return DriftResult(None, None, None, None, baseline.size, recent.size, False, short)
    ks, ks_p = ks_2samp(baseline, recent)
    stability = psi(baseline, recent, bins=policy.psi_bins)
    moved = wasserstein_1d(baseline, recent)
    psi_limit = max(
        policy.psi_threshold,
        psi_noise_floor(baseline.size, recent.size, policy.psi_bins, policy.ks_threshold),
    )
    reasons = _reasons(policy, ks_p=ks_p, stability=stability, psi_limit=psi_limit, moved=moved)
    return DriftResult(ks, ks_p, stability, moved, baseline.size, recent.size, bool(reasons), reasons)


def _reasons(policy: DriftPolicy, *, ks_p: float, stability: float, psi_limit: float, moved: float) -> list[str]:
    reasons = []
    if ks_p < policy.ks_threshold:
        reasons.append(f"KS p={ks_p:.3g} < {policy.ks_threshold:g}")
    if stability > psi_limit:
        reasons.append(f"PSI {stability:.3g} > {psi_limit:.3g}")
    if policy.wasserstein_threshold is not None and moved > policy.wasserstein_threshold:
        reasons.append(f"Wasserstein {moved:.3g} > {policy.wasserstein_threshold:g}")
    return reasons
