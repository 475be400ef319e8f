"""Semi-supervised evaluation: a small labelled fraction of the training split (1% and 10% by default, as SimCLR's
and BYOL's semi-supervised tables), used twice on the same images:

- ``finetune``: the whole encoder plus a linear head trained end to end (:func:`tc2ssl.eval.finetune.finetune`,
  ``eval.finetune_*`` settings, a fixed number of epochs: the labelled set is too small to hold out a validation
  split, as in SimCLR's protocol);
- ``linear_probe``: the frozen-feature logistic regression of :mod:`tc2ssl.eval.linear_probe` on those images.

Both are scored on the whole test split. The labelled subset is stratified: ``round(fraction · n_c)`` images of each
class c, at least one, drawn with ``seed``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from tc2ssl.data.base import ImageSet
from tc2ssl.eval.features import extract_features
from tc2ssl.eval.finetune import FinetuneSettings, classifier_accuracy, finetune
from tc2ssl.eval.linear_probe import linear_probe


def labelled_fraction(labels: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """Sorted indices of a stratified ``fraction`` of ``labels``: round(fraction · n_c), at least 1, per class."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"the labelled fraction must be in (0, 1], got {fraction}")
    generator = torch.Generator().manual_seed(seed)
    picked = []
    for label in torch.unique(labels).tolist():
        members = torch.nonzero(labels == label).flatten()
        n = max(1, int(np.floor(fraction * members.numel() + 0.5)))
        picked.append(members[torch.randperm(members.numel(), generator=generator)[:n]])
    return torch.cat(picked).sort().values


def semisup_protocol(backbone: nn.Module, train: ImageSet, test: ImageSet, eval_cfg, augment: str,
                     device: str | torch.device = "cpu", seed: int = 0) -> dict:
    """``{"<p>%": {"finetune": accuracy, "linear_probe": accuracy, "n_labelled"}}`` for each of
    ``eval.semisup_fractions``."""
    n_classes = int(max(train.labels.max(), test.labels.max())) + 1
    settings = FinetuneSettings.from_eval_config(eval_cfg, augment)
    test_features = extract_features(backbone, test.images, eval_cfg.batch_size, device)
    results = {}
    for fraction in eval_cfg.semisup_fractions:
        labelled = train.subset(labelled_fraction(train.labels, fraction, seed))
        tuned = finetune(backbone, labelled, None, n_classes, settings, device, seed)["classifier"]
        probe = linear_probe(extract_features(backbone, labelled.images, eval_cfg.batch_size, device),
                             labelled.labels, test_features, test.labels, eval_cfg.probe_cs,
                             val_fraction=eval_cfg.val_fraction, max_iter=eval_cfg.probe_max_iter, seed=seed)
        results[f"{100 * fraction:g}%"] = {
            "finetune": classifier_accuracy(tuned, test.images, test.labels, device=device),
            "linear_probe": probe["accuracy"], "n_labelled": len(labelled), "fraction": fraction}
    return results
