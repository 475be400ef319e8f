"""Benchmark statistics: mean ± std, the paired t-interval (against hand computations with a printed t table) and
Spearman's rank correlation."""
import math

import pytest

from tc2ssl.benchmarks.stats import paired_difference, spearman, summarize, t_critical

# two-sided 95% critical values of Student's t from a printed table
T_TABLE_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 9: 2.262, 30: 2.042}


def test_summarize_is_mean_and_sample_std():
    s = summarize([0.8, 0.9, 1.0])
    assert s.mean == pytest.approx(0.9) and s.std == pytest.approx(0.1)  # ddof = 1: sqrt(0.02 / 2)
    assert s.n == 3 and s.values == [0.8, 0.9, 1.0]
    assert summarize([0.7]).std == 0.0


@pytest.mark.parametrize("dof", sorted(T_TABLE_95))
def test_t_critical_matches_the_printed_table(dof):
    assert t_critical(0.95, dof) == pytest.approx(T_TABLE_95[dof], abs=1e-3)


def test_paired_difference_against_a_hand_computation():
    treatment, baseline = [0.82, 0.85, 0.80, 0.86], [0.80, 0.81, 0.80, 0.82]
    # d = [0.02, 0.04, 0.00, 0.04]; mean 0.025; s_d = sqrt((25 + 225 + 625 + 225)e-6 / 3) = 0.0191485
    # half width = t_{0.975, 3} · s_d / sqrt(4) = 3.182 · 0.0191485 / 2 = 0.030465
    d = paired_difference(treatment, baseline)
    assert d.mean == pytest.approx(0.025)
    assert d.std == pytest.approx(math.sqrt(1100e-6 / 3))
    assert d.ci_low == pytest.approx(0.025 - 0.030465, abs=2e-5)
    assert d.ci_high == pytest.approx(0.025 + 0.030465, abs=2e-5)
    assert d.n == 4 and d.differences == pytest.approx([0.02, 0.04, 0.0, 0.04])


def test_paired_difference_removes_the_shared_seed_effect():
    """A per-seed offset common to both sides (the seed's luck) changes neither the difference nor its interval;
    an unpaired comparison of the same numbers would see a spread of 0.2."""
    gains = [0.010, 0.012, 0.008]
    seed_effect = [0.0, 0.2, -0.1]
    baseline = [0.5 + e for e in seed_effect]
    treatment = [b + g for b, g in zip(baseline, gains)]
    d = paired_difference(treatment, baseline)
    assert d.mean == pytest.approx(0.010)
    assert 0.0 < d.ci_low < d.ci_high < 0.02  # a consistent gain is significant although the seeds vary a lot


def test_paired_difference_edge_cases():
    one = paired_difference([0.6], [0.5])
    assert one.mean == pytest.approx(0.1) and math.isnan(one.ci_low) and math.isnan(one.ci_high)
    with pytest.raises(ValueError, match="one value per seed"):
        paired_difference([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="NaN"):
        paired_difference([0.1, float("nan")], [0.1, 0.2])
    with pytest.raises(ValueError, match="confidence"):
        t_critical(1.5, 3)


def test_spearman_ranks_with_ties():
    assert spearman([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(1.0)  # monotone, not linear
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks x = [1, 2.5, 2.5, 4], y = [1, 2, 3, 4]: cov 4.5 / sqrt(4.5 · 5)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    assert math.isnan(spearman([1, 2], [2, 1])) and math.isnan(spearman([1, 1, 1], [1, 2, 3]))
