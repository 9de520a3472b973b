import math

import numpy as np
import pytest

from gate.judging.drift import detect, kolmogorov_sf, ks_2samp, psi, psi_noise_floor, wasserstein_1d
from gate.judging.policy import DriftPolicy


def _distances(seed: int, n: int, shift: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).lognormal(math.log(0.1), 0.35, n) + shift


# --- KS -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "a, b, statistic",
    [
        ([1, 2, 3], [4, 5, 6], 1.0),  # disjoint
        ([1, 2, 3, 4], [3, 4, 5, 6], 0.5),  # ties at 3 and 4 counted on the right
        ([0.1, 0.4, 0.7], [0.2, 0.3, 0.5, 0.9], 1 / 3),  # worst gap at 0.1: 1/3 - 0
        ([2, 2, 2], [2, 2], 0.0),  # identical constants
        ([0, 0, 1, 1], [0, 1, 1, 1], 0.25),  # at 0: 2/4 vs 1/4
    ],
)
def test_ks_statistic_is_exact_on_hand_made_samples(a, b, statistic):
    assert ks_2samp(a, b)[0] == pytest.approx(statistic, abs=1e-15)


@pytest.mark.parametrize(
    "lam, survival",  # critical values of the Kolmogorov distribution from the standard tables
    [(0.8276, 0.50), (1.2239, 0.10), (1.3581, 0.05), (1.6276, 0.01), (1.9495, 0.001)],
)
def test_kolmogorov_survival_matches_textbook_critical_values(lam, survival):
    assert kolmogorov_sf(lam) == pytest.approx(survival, rel=2e-3)


def test_kolmogorov_series_meet_continuously_at_the_switch():
    assert kolmogorov_sf(1.18 - 1e-9) == pytest.approx(kolmogorov_sf(1.18), abs=1e-9)
    assert kolmogorov_sf(0.0) == 1.0 and kolmogorov_sf(0.1) == 1.0


def test_ks_pvalue_applies_stephens_effective_n():
    statistic, pvalue = ks_2samp([1, 2, 3], [4, 5, 6])
    effective_n = math.sqrt(9 / 6)
    assert pvalue == pytest.approx(kolmogorov_sf((effective_n + 0.12 + 0.11 / effective_n) * statistic))
    assert pvalue == pytest.approx(0.0326, abs=1e-4)  # lambda 1.4345; the exact n=3 value is 0.1


def test_ks_pvalue_agrees_with_a_brute_force_permutation_estimate():
    rng = np.random.default_rng(7)
    a, b = rng.normal(0.0, 1.0, 60), rng.normal(0.3, 1.0, 60)
    statistic, pvalue = ks_2samp(a, b)
    pooled = np.concatenate([a, b])
    exceed = 0
    permutations = 4000
    for _ in range(permutations):
        shuffled = rng.permutation(pooled)
        exceed += ks_2samp(shuffled[:60], shuffled[60:])[0] >= statistic - 1e-12
    assert 0.01 < pvalue < 0.1  # near the alarm levels, where accuracy matters
    assert pvalue == pytest.approx(exceed / permutations, abs=0.01)  # permutation SE ~0.003


# --- PSI and Wasserstein ---------------------------------------------------------------------


def test_psi_over_quantile_bins_with_empty_bins_floored_at_epsilon():
    expected = np.arange(100.0)  # quartile edges 24.75, 49.5, 74.25
    actual = np.concatenate([np.arange(0.0, 25.0), np.arange(75.0, 100.0)])  # only the outer quartiles
    eps = 1e-4
    by_hand = 2 * (0.5 - 0.25) * math.log(0.5 / 0.25) + 2 * (eps - 0.25) * math.log(eps / 0.25)
    assert psi(expected, actual, bins=4) == pytest.approx(by_hand, rel=1e-12)
    assert by_hand == pytest.approx(4.2570, abs=1e-4)


def test_psi_of_a_sample_against_itself_is_zero_even_with_heavy_ties():
    values = np.array([0.0] * 30 + [0.1, 0.2, 0.3] * 10)  # identical images score exactly 0
    assert psi(values, values) == 0.0


@pytest.mark.parametrize(
    "n_expected, n_actual, bins, chi2_quantile",  # chi2(bins - 1) at 0.99, from the tables
    [(5000, 5000, 5, 13.277), (2000, 500, 10, 21.666)],
)
def test_psi_noise_floor_tends_to_the_chi_square_quantile_in_large_samples(n_expected, n_actual, bins, chi2_quantile):
    floor = psi_noise_floor(n_expected, n_actual, bins, 0.01)
    assert floor == pytest.approx(chi2_quantile * (1 / n_expected + 1 / n_actual), rel=0.03)


@pytest.mark.parametrize("alpha, most", [(0.01, 32), (0.001, 6)])  # 20 and 2 expected of 2000
@pytest.mark.parametrize("n_expected, n_actual", [(200, 50), (30, 50), (200, 30)])
def test_psi_alarms_on_stable_samples_at_its_nominal_rate(n_expected, n_actual, alpha, most):
    """2000 pairs of samples of one distribution at the default policy's sizes (a full baseline and
    window, the shortest baseline, the shortest window): PSI passes its noise floor about alpha of
    the time (here 19, 27, 16 at 0.01; 2, 2, 2 at 0.001). The chi-square floor: 31, 39, 50 and 4, 19, 20."""
    rng = np.random.default_rng(11)
    floor = psi_noise_floor(n_expected, n_actual, DriftPolicy().psi_bins, alpha)
    alarms = sum(
        psi(_draw(rng, n_expected), _draw(rng, n_actual), bins=DriftPolicy().psi_bins) > floor for _ in range(2000)
    )
    assert (alpha == 0.001 or alarms >= 10) and alarms <= most


def _draw(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.lognormal(math.log(0.1), 0.35, n)


@pytest.mark.parametrize(
    "args, message",
    [
        ((4, 50, 5, 0.01), "n_expected: 4 baseline values are too few for 5 quantile bins"),
        ((200, 0, 5, 0.01), "n_actual: expected at least 1, got 0"),
        ((200, 50, 1, 0.01), "bins: expected at least 2, got 1"),
        ((200, 50, 5, 1.0), "alpha: expected 0 < alpha < 1, got 1.0"),
    ],
)
def test_psi_noise_floor_validates_its_arguments(args, message):
    with pytest.raises(ValueError) as caught:
        psi_noise_floor(*args)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    "a, b, distance",
    [
        ([0, 1, 3], [5, 6, 8], 5.0),  # a pure shift moves every unit of mass by 5
        ([0], [1, 3], 2.0),  # mean |0 - x| over {1, 3}
        ([0.1, 0.2], [0.1, 0.2], 0.0),
    ],
)
def test_wasserstein_on_hand_made_samples(a, b, distance):
    assert wasserstein_1d(a, b) == pytest.approx(distance, abs=1e-12)


# --- detect ----------------------------------------------------------------------------------


def test_a_shift_of_five_hundredths_is_detected():
    result = detect(_distances(1, 200), _distances(2, 50, shift=0.05), DriftPolicy())
    assert result.drifted and result.checked
    assert (result.n_baseline, result.n_recent) == (200, 50)
    assert result.ks > 0.5 and result.ks_p < 1e-6
    assert result.wasserstein == pytest.approx(0.05, abs=0.015)
    assert [reason.split()[0] for reason in result.reasons] == ["KS", "PSI"]


def test_a_stable_suite_is_not_flagged():
    result = detect(_distances(1, 200), _distances(2, 50), DriftPolicy())
    assert not result.drifted and result.reasons == []
    assert result.ks_p > 0.05 and result.psi < 0.25


def test_only_the_policy_windows_are_judged():
    old_regime = _distances(3, 500, shift=0.3)
    baseline = np.concatenate([old_regime, _distances(4, 200)])
    result = detect(baseline, _distances(5, 80), DriftPolicy(window=40, baseline_size=200))
    assert (result.n_baseline, result.n_recent) == (200, 40)
    assert not result.drifted


def test_wasserstein_threshold_adds_its_own_reason():
    policy = DriftPolicy(wasserstein_threshold=0.01)
    result = detect(_distances(1, 200), _distances(2, 50, shift=0.05), policy)
    assert result.reasons[-1].startswith("Wasserstein 0.0") and result.reasons[-1].endswith("> 0.01")


def test_too_few_samples_gives_no_verdict():
    result = detect(_distances(1, 200), _distances(2, 29), DriftPolicy())
    assert not result.drifted and not result.checked
    assert result.reasons == ["not enough samples (recent n=29 < min 30)"]
    assert (result.ks, result.psi, result.wasserstein) == (None, None, None)


@pytest.mark.parametrize(
    "baseline, recent, message",
    [
        (np.zeros((10, 2)), np.zeros(40), r"^baseline: expected a 1-D array, got shape \(10, 2\)$"),
        (np.zeros(40), [0.1] * 39 + [float("nan")], r"^recent: contains NaN or infinite values$"),
    ],
)
def test_detect_rejects_bad_samples_by_name(baseline, recent, message):
    with pytest.raises(ValueError, match=message):
        detect(baseline, recent, DriftPolicy())


def test_ks_rejects_an_empty_sample():
    with pytest.raises(ValueError, match=r"^b: expected at least 1 value\(s\), got 0$"):
        ks_2samp([1.0], [])
