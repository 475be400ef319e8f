"""Full fine-tuning: the whole encoder plus a linear head trained end to end on labelled images, with a held-out
validation split for early stopping (the protocol of SimCLR's and TC²'s fine-tuning tables).

:func:`finetune` trains a copy of the backbone (the caller's module is never changed): AdamW, a cosine learning-rate
schedule over ``epochs``, cross-entropy, one augmented view per image per step (the run's augmentation preset;
``none`` = the images as they are). With a validation set, the validation accuracy is measured after every epoch,
the best epoch's weights are kept, and training stops after ``patience`` epochs without improvement. The whole
procedure draws its random numbers from ``seed`` only. ``min_steps`` (``eval.finetune_min_steps``) raises the number
of epochs until at least that many optimiser steps are taken: 1% of a small training split is one batch per epoch.

:func:`finetune_protocol` holds out a stratified ``eval.val_fraction`` of the training split, fine-tunes, and reports
the test accuracy of the best-validation weights.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from tc2ssl.data.augment import ViewMaker, seeded, step_seed
from tc2ssl.data.base import ImageSet, to_unit


@dataclass
class FinetuneSettings:
    """The ``eval.finetune_*`` keys."""

    epochs: int = 30
    lr: float = 1e-3
    batch_size: int = 128
    weight_decay: float = 1e-4
    patience: int = 5
    augment: str = "none"
    min_steps: int = 0

    @classmethod
    def from_eval_config(cls, eval_cfg, augment: str) -> "FinetuneSettings":
        return cls(eval_cfg.finetune_epochs, eval_cfg.finetune_lr, eval_cfg.finetune_batch_size,
                   eval_cfg.finetune_weight_decay, eval_cfg.finetune_patience, augment, eval_cfg.finetune_min_steps)


@torch.no_grad()
def classifier_accuracy(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512,
                        device: str | torch.device = "cpu") -> float:
    """Top-1 accuracy of ``classifier`` (eval mode; left in eval mode) on uint8 images."""
    classifier.eval()
    dtype = next(classifier.parameters()).dtype
    correct = 0
    for start in range(0, images.shape[0], batch_size):
        batch = to_unit(images[start:start + batch_size].to(device)).to(dtype)
        correct += int((classifier(batch).argmax(dim=1).cpu() == labels[start:start + batch_size]).sum())
    return correct / images.shape[0]


def finetune(backbone: nn.Module, train: ImageSet, val: ImageSet | None, n_classes: int, settings: FinetuneSettings,
             device: str | torch.device = "cpu", seed: int = 0) -> dict:
    """Fine-tune a copy of ``backbone`` with a new linear head (see module doc).

    Returns ``{"classifier": nn.Sequential(backbone copy, head) in eval mode, "best_epoch", "epochs_run",
    "val_accuracy": per-epoch list (empty without ``val``), "train_loss": per-epoch list}``.
    """
    if train.labels is None or (val is not None and val.labels is None):
        raise ValueError("fine-tuning needs labelled training (and validation) images")
    if settings.epochs < 1 or settings.batch_size < 2:
        raise ValueError(f"fine-tuning needs epochs >= 1 and batch_size >= 2, got {settings.epochs}, "
                         f"{settings.batch_size}")
    device = torch.device(device)
    view_maker = ViewMaker(settings.augment, train.resolution, train.channels)
    with seeded(step_seed(seed, 0, 0, stream=11), device):
        classifier = nn.Sequential(copy.deepcopy(backbone), nn.Linear(backbone.feat_dim, n_classes)).to(device)
    dtype = next(classifier.parameters()).dtype
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    batch = min(settings.batch_size, len(train))
    steps_per_epoch = max(1, math.ceil(len(train) / batch))
    epochs = max(settings.epochs, math.ceil(settings.min_steps / steps_per_epoch))   # small labelled sets
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    order_generator = torch.Generator().manual_seed(seed)
    best_state, best_accuracy, best_epoch = None, -1.0, epochs - 1
    val_accuracy: list[float] = []
    train_loss: list[float] = []
    epoch = 0
    for epoch in range(epochs):
        classifier.train()
        order = torch.randperm(len(train), generator=order_generator)
        losses = []
        for b in range(steps_per_epoch):
            index = order[b * batch:(b + 1) * batch]
            if index.numel() < 2:            # BatchNorm cannot train on one image
                continue
            images = train.images[index].to(device)
            views = view_maker(images, 1, step_seed(seed, epoch, b, stream=12))[:, 0].to(dtype)
            with seeded(step_seed(seed, epoch, b, stream=13), device):
                loss = F.cross_entropy(classifier(views), train.labels[index].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
        train_loss.append(sum(losses) / max(1, len(losses)))
        if val is None:
            continue
        val_accuracy.append(classifier_accuracy(classifier, val.images, val.labels, device=device))
        if val_accuracy[-1] > best_accuracy:
            best_accuracy, best_epoch = val_accuracy[-1], epoch
            best_state = copy.deepcopy(classifier.state_dict())
        elif epoch - best_epoch >= settings.patience:
            break
    if best_state is not None:
        classifier.load_state_dict(best_state)
    return {"classifier": classifier.eval(), "best_epoch": best_epoch, "epochs_run": epoch + 1,
            "val_accuracy": val_accuracy, "train_loss": train_loss}


def finetune_protocol(backbone: nn.Module, train: ImageSet, test: ImageSet, eval_cfg, augment: str,
                      device: str | torch.device = "cpu", seed: int = 0) -> dict:
    """Fine-tune on the training split minus a stratified validation split (``eval.val_fraction``), early stopping on
    it, and report the test accuracy: ``{"accuracy", "val_accuracy" (best), "best_epoch", "epochs_run", "n_train",
    "n_val", "n_test"}``."""
    import numpy as np

    from tc2ssl.eval.linear_probe import stratified_validation_split

    fit_index, val_index = stratified_validation_split(train.labels.numpy(), eval_cfg.val_fraction, seed)
    fit, val = train.subset(torch.from_numpy(fit_index)), train.subset(torch.from_numpy(val_index))
    n_classes = int(max(train.labels.max(), test.labels.max())) + 1
    outcome = finetune(backbone, fit, val if len(val_index) else None, n_classes,
                       FinetuneSettings.from_eval_config(eval_cfg, augment), device, seed)
    accuracy = classifier_accuracy(outcome["classifier"], test.images, test.labels, device=device)
    return {"accuracy": accuracy, "val_accuracy": float(np.max(outcome["val_accuracy"])) if outcome["val_accuracy"]
            else None, "best_epoch": outcome["best_epoch"], "epochs_run": outcome["epochs_run"],
            "n_train": len(fit_index), "n_val": len(val_index), "n_test": len(test)}
