import math

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss

from tc2ssl.data.augment import ViewMaker
from tc2ssl.gessl.sigma import sigma_from_log_probs, sigma_ssl, sigma_task, universality


def test_sigma_task_is_the_probe_cross_entropy():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=30)
    labels = rng.integers(0, 4, size=30)
    result = sigma_task(probs, labels)
    assert result["sigma"] == pytest.approx(log_loss(labels, probs, labels=[0, 1, 2, 3]), rel=1e-12)
    assert result["U"] == pytest.approx(math.exp(-result["sigma"]))


def test_sigma_task_maps_columns_through_classes_and_clips_unknown_labels():
    probs = np.array([[0.25, 0.75], [0.5, 0.5]])
    result = sigma_task(probs, np.array([7, 3]), classes=[3, 7])       # columns are classes 3 and 7
    assert result["sigma"] == pytest.approx(-(math.log(0.75) + math.log(0.5)) / 2)
    assert math.isfinite(sigma_task(probs, np.array([9, 3]), classes=[3, 7])["sigma"])


def test_universality_is_exp_minus_sigma_and_rejects_negative():
    assert universality(0.0) == 1.0 and universality(math.log(4)) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        universality(-0.1)


def test_sigma_from_log_probs_picks_the_label_column():
    log_probs = torch.tensor([[0.1, 0.9], [0.6, 0.4]]).log()
    assert float(sigma_from_log_probs(log_probs, torch.tensor([1, 0]))) == pytest.approx(
        -(math.log(0.9) + math.log(0.6)) / 2, rel=1e-6)


def images(n=40, seed=0):
    return torch.randint(0, 256, (n, 1, 8, 8), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_sigma_ssl_is_zero_for_an_embedding_that_identifies_images_and_log_n_for_noise():
    views = ViewMaker("none", 8, 1)
    held_out = images()
    exact = sigma_ssl(lambda x: x.flatten(1) - x.flatten(1).mean(1, keepdim=True), held_out, views, n_tasks=3,
                      task_size=16, temperature=0.001)
    assert exact["sigma"] < 1e-6 and exact["U"] > 0.999999
    noise = sigma_ssl(lambda x: torch.randn(x.shape[0], 16), held_out, views, n_tasks=3, task_size=16,
                      temperature=1e3)
    assert noise["sigma"] == pytest.approx(math.log(16), rel=0.02) and noise["sigma_uninformative"] == math.log(16)


def test_sigma_ssl_is_seeded():
    views = ViewMaker("digits", 8, 1)
    torch.manual_seed(0)
    weights = torch.randn(64, 8)

    def embed(x):
        return x.flatten(1) @ weights

    first = sigma_ssl(embed, images(), views, n_tasks=2, task_size=8, seed=3)
    again = sigma_ssl(embed, images(), views, n_tasks=2, task_size=8, seed=3)
    other = sigma_ssl(embed, images(), views, n_tasks=2, task_size=8, seed=4)
    assert first == again and first["sigma"] != other["sigma"]
