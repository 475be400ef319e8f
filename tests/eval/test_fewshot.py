"""Few-shot episodes: sampling counts and disjointness, heads with known answers (separable features = 100%,
label-independent features = chance), the 95% CI against an independent computation, per-group results."""
import math
import statistics

import numpy as np
import pytest
import torch

from tc2ssl.eval.fewshot import (few_shot_accuracies, few_shot_eval, mean_confidence_interval, prototype_predict,
                                 sample_episode)


def clustered(n_classes: int = 8, per_class: int = 30, dim: int = 16, spread: float = 0.05, seed: int = 0):
    """Features in tight, far-apart clusters (one per class): perfectly separable."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.eye(n_classes, dim) * 10
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    return centres[labels] + spread * torch.randn(len(labels), dim, generator=gen), labels


def test_episode_has_n_way_classes_k_shots_and_disjoint_queries():
    labels = torch.arange(10).repeat_interleave(25)[torch.randperm(250, generator=torch.Generator().manual_seed(1))]
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        s_idx, s_lab, q_idx, q_lab = sample_episode(labels, n_way=5, k_shot=3, n_query=7, generator=gen)
        assert s_idx.numel() == 15 and q_idx.numel() == 35
        assert not set(s_idx.tolist()) & set(q_idx.tolist())
        assert len(set(s_idx.tolist())) == 15 and len(set(q_idx.tolist())) == 35
        for way in range(5):                       # every episode label is one true class, 3 shots and 7 queries
            true = set(labels[s_idx[s_lab == way]].tolist()) | set(labels[q_idx[q_lab == way]].tolist())
            assert len(true) == 1
            assert int((s_lab == way).sum()) == 3 and int((q_lab == way).sum()) == 7
        assert len(set(labels[s_idx].tolist())) == 5


def test_episode_needs_enough_classes_with_enough_images():
    labels = torch.tensor([0] * 20 + [1] * 20 + [2] * 5)
    with pytest.raises(ValueError, match="need 3 classes of at least 16 images; only 2"):
        sample_episode(labels, 3, 1, 15, torch.Generator())


def test_confidence_interval_matches_independent_formula():
    values = [0.2, 0.6, 0.4, 0.8, 1.0, 0.4, 0.6]
    mean, half = mean_confidence_interval(values)
    assert mean == pytest.approx(statistics.fmean(values))
    assert half == pytest.approx(1.96 * statistics.pstdev(values) / math.sqrt(len(values)))


def test_prototype_head_matches_brute_force_nearest_mean():
    gen = torch.Generator().manual_seed(3)
    support, support_labels = torch.randn(12, 4, generator=gen, dtype=torch.float64), torch.arange(3).repeat(4)
    query = torch.randn(20, 4, generator=gen, dtype=torch.float64)
    means = np.stack([support.numpy()[support_labels.numpy() == c].mean(0) for c in range(3)])
    expected = [int(np.argmin([np.sum((q - m) ** 2) for m in means])) for q in query.numpy()]
    assert prototype_predict(support, support_labels, query).tolist() == expected


def test_separable_features_give_100_percent_for_both_heads():
    features, labels = clustered()
    result = few_shot_eval(features, labels, n_way=5, shots=(1, 5), n_query=10, episodes=40)
    for setting in ("5way_1shot", "5way_5shot"):
        for head in ("prototype", "logistic"):
            assert result[setting][head] == {"mean": 1.0, "ci95": 0.0, "episodes": 40}


def test_label_independent_features_score_chance():
    """No leakage between support and query: features that carry no label information give 1/n_way."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(10).repeat_interleave(40)
    features = torch.randn(400, 32, generator=gen)
    accuracies = few_shot_accuracies(features, labels, 5, 1, 15, episodes=300, heads=("prototype",))
    mean, half = mean_confidence_interval(accuracies["prototype"])
    assert abs(mean - 0.2) < max(3 * half, 0.02), (mean, half)


def test_groups_are_evaluated_separately_and_small_groups_skipped():
    features, labels = clustered(n_classes=8, per_class=30)
    groups = (torch.arange(len(labels)) % 2).long()           # both groups hold every class, 15 images each
    groups[labels >= 6] = 2                                  # group 2: only classes 6 and 7
    result = few_shot_eval(features, labels, n_way=5, shots=(1,), n_query=5, episodes=10, groups=groups,
                           group_names=["photo", "sketch", "cartoon"])
    assert set(result["groups"]) == {"photo", "sketch"}
    assert result["groups"]["photo"]["5way_1shot"]["prototype"]["mean"] == 1.0
    assert "only 2 have that many" in result["skipped"]["cartoon"]
