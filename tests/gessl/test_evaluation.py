"""σ and U in the evaluation output of every run (baseline or GeSSL)."""
import math

import pytest

import numpy as np
import torch
import torch.nn as nn
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tc2ssl.config import EvalConfig
from tc2ssl.data.augment import ViewMaker
from tc2ssl.data.base import ImageSet
from tc2ssl.eval.evaluate import evaluate_backbone
from tc2ssl.eval.features import extract_features


def digits(n_train=400, n_test=200):
    bunch = load_digits()
    images = torch.from_numpy(np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target).long()
    return (ImageSet(images[:n_train], labels[:n_train], name="train"),
            ImageSet(images[n_train:n_train + n_test], labels[n_train:n_train + n_test], name="test"))


def test_sigma_task_is_the_chosen_probes_test_cross_entropy_and_sigma_ssl_is_reported():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
    train, test = digits()
    cfg = EvalConfig(probe_cs=[0.1], probe_max_iter=300, knn_k=5, sigma_tasks=3, sigma_task_size=32)
    result = evaluate_backbone(backbone, train, test, cfg, view_maker=ViewMaker("digits", 8, 1))
    found = result["universality"]
    # independent reference: the same probe (standardised features, C = 0.1) fitted by hand
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=300)).fit(
        extract_features(backbone, train.images).double().numpy(), train.labels.numpy())
    probs = reference.predict_proba(extract_features(backbone, test.images).double().numpy())
    assert found["sigma_task"] == pytest.approx(log_loss(test.labels.numpy(), probs,
                                                                       labels=reference.classes_), rel=1e-6)
    assert found["U_task"] == math.exp(-found["sigma_task"])
    assert 0 < found["sigma_ssl"] < 1.5 * math.log(32) and found["U_ssl"] == math.exp(-found["sigma_ssl"])
    assert found["sigma_ssl_uninformative"] == math.log(32)
    assert backbone.training                                          # the mode is restored
