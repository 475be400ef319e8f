"""Per-layer linear probes: the frozen-feature logistic regression of :mod:`tc2ssl.eval.linear_probe` on each of the
backbone's named taps (``backbone.forward_features(x, taps)``: globally average-pooled intermediate layers, e.g.
``layer1..layer4`` of a ResNet, ``block1..block4`` of the small CNN). Shows where in the network the
label-relevant information appears, and whether pretraining changed early or late layers.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from tc2ssl.data.base import ImageSet
from tc2ssl.errors import ConfigError
from tc2ssl.eval.features import extract_features
from tc2ssl.eval.linear_probe import linear_probe


def layer_probes(backbone: nn.Module, train: ImageSet, test: ImageSet, eval_cfg, device: str | torch.device = "cpu",
                 seed: int = 0) -> dict[str, dict]:
    """``{tap: {"accuracy", "best_c", "feature_dim"}}`` for ``eval.layer_taps`` (empty: every tap of the backbone),
    in the backbone's layer order."""
    available = tuple(getattr(backbone, "tap_names", ()))
    if not available:
        raise ConfigError(f"the backbone {type(backbone).__name__} has no named layer taps for per-layer probes")
    taps = list(eval_cfg.layer_taps) or list(available)
    train_features = extract_features(backbone, train.images, eval_cfg.batch_size, device, taps=taps)
    test_features = extract_features(backbone, test.images, eval_cfg.batch_size, device, taps=taps)
    results = {}
    for tap in train_features:
        probe = linear_probe(train_features[tap], train.labels, test_features[tap], test.labels, eval_cfg.probe_cs,
                             val_fraction=eval_cfg.val_fraction, max_iter=eval_cfg.probe_max_iter, seed=seed)
        results[tap] = {"accuracy": probe["accuracy"], "best_c": probe["best_c"],
                        "feature_dim": int(train_features[tap].shape[1])}
    return results
