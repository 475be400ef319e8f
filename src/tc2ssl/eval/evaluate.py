"""Evaluate a frozen backbone on a labelled dataset: linear probe + weighted kNN on the same features, per-group
accuracies for out-of-distribution suites (ColoredMNIST's worst group, PACS domains), and the files a run keeps:
``<stem>.json`` (everything) and ``<stem>.md`` (a table).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

from tc2ssl.config import EvalConfig
from tc2ssl.data.base import ImageSet
from tc2ssl.errors import DataError
from tc2ssl.eval.features import extract_features
from tc2ssl.eval.knn import knn_predict
from tc2ssl.eval.linear_probe import linear_probe
from tc2ssl.train.checkpoint import atomic_write_text


def group_accuracies(predictions: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor,
                     group_names: list[str] | None = None) -> dict[str, float]:
    """Accuracy of ``predictions`` within each group id present in ``groups``, keyed by the group's name (its id
    as a string when there are no names), in increasing id order."""
    if not predictions.shape == labels.shape == groups.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)}, labels {tuple(labels.shape)} and groups "
                         f"{tuple(groups.shape)} must have the same shape")
    correct = predictions.long() == labels.long()
    accuracies = {}
    for group_id in torch.unique(groups).tolist():
        if group_names is None:
            name = str(group_id)
        elif 0 <= group_id < len(group_names):
            name = group_names[group_id]
        else:
            raise DataError(f"group id {group_id} has no name in group_names ({len(group_names)} names)")
        accuracies[name] = float(correct[groups == group_id].double().mean())
    return accuracies


def probe_training_subset(train: ImageSet, max_train: int, seed: int) -> ImageSet:
    """The probe's training images: a seeded random subset of at most ``max_train`` (0 = all), in order."""
    if 0 < max_train < len(train):
        generator = torch.Generator().manual_seed(seed)
        return train.subset(torch.randperm(len(train), generator=generator)[:max_train].sort().values)
    return train


def evaluate_backbone(backbone: nn.Module, train: ImageSet, test: ImageSet, cfg: EvalConfig,
                      device: str | torch.device = "cpu", seed: int = 0) -> dict:
    """Linear probe and kNN accuracy of ``backbone``'s pooled features, trained on ``train``, tested on ``test``.

    Features are extracted once per set (eval mode, no augmentation). With ``cfg.max_train`` > 0 a seeded random
    subset of at most that many training images is used. Returns::

        {"linear_probe": {"accuracy", "best_c", "val_accuracy", "n_train", "n_test"},
         "knn": {"accuracy", "k", "temperature"[, "groups", "worst_group"]},
         "n_train", "n_test", "feature_dim", "dataset"[, "groups", "worst_group"]}

    where "groups" ({group name: accuracy}) and "worst_group" (the lowest of them) appear when ``test.groups`` is
    set; the top-level ones are the linear probe's, the kNN's sit under "knn". ``knn.k`` is the k actually used
    (at most the number of training images).
    """
    for split, name in ((train, "training"), (test, "test")):
        if split.labels is None:
            raise DataError(f"evaluation needs labels; the {name} set {split.name!r} has none")
    if test.groups is not None and test.groups.shape != (len(test),):
        raise DataError(f"test set {test.name!r}: {len(test)} images but groups of shape {tuple(test.groups.shape)}")
    train = probe_training_subset(train, cfg.max_train, seed)

    train_x = extract_features(backbone, train.images, cfg.batch_size, device)
    test_x = extract_features(backbone, test.images, cfg.batch_size, device)
    probe = linear_probe(train_x, train.labels, test_x, test.labels, cfg.probe_cs, val_fraction=cfg.val_fraction,
                         max_iter=cfg.probe_max_iter, seed=seed, return_predictions=True)
    probe_predictions = torch.from_numpy(probe.pop("predictions"))
    knn_predictions = knn_predict(train_x.to(device), train.labels.to(device), test_x.to(device), k=cfg.knn_k,
                                  temperature=cfg.knn_temperature).cpu()
    knn = {
        "accuracy": float((knn_predictions == test.labels).double().mean()),
        "k": min(cfg.knn_k, len(train)),
        "temperature": float(cfg.knn_temperature),
    }
    results = {
        "linear_probe": probe,
        "knn": knn,
        "n_train": len(train),
        "n_test": len(test),
        "feature_dim": int(train_x.shape[1]),
        "dataset": test.name or train.name,
    }
    if test.groups is not None:
        results["groups"] = group_accuracies(probe_predictions, test.labels, test.groups, test.group_names)
        results["worst_group"] = min(results["groups"].values())
        knn["groups"] = group_accuracies(knn_predictions, test.labels, test.groups, test.group_names)
        knn["worst_group"] = min(knn["groups"].values())
    return results


def named_results(results: dict) -> dict[str, dict]:
    """A single result of :func:`evaluate_backbone`, or a dict of them by name, as a dict by name."""
    return {"backbone": results} if "linear_probe" in results else results


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100.0 * value:.2f}"


def results_table(rows: dict[str, dict]) -> str:
    """One markdown table comparing named results of :func:`evaluate_backbone` (e.g. "pretrained" against
    "random_init"; underscores in names show as spaces). Accuracies are in percent; when any result has
    per-group accuracies, a column per group (linear probe) and the worst group are added."""
    if not rows:
        raise ValueError("results_table needs at least one named result")
    group_names: list[str] = []
    for result in rows.values():
        group_names.extend(g for g in result.get("groups", {}) if g not in group_names)
    header = ["model", "dataset", "linear probe", "best C", "kNN", "train / test"]
    if group_names:
        header[5:5] = [f"probe {g}" for g in group_names] + ["probe worst group"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, result in rows.items():
        probe, knn = result["linear_probe"], result["knn"]
        cells = [name.replace("_", " "), result.get("dataset") or "–", _percent(probe["accuracy"]),
                 f"{probe['best_c']:g}", f"{_percent(knn['accuracy'])} (k={knn['k']})",
                 f"{result['n_train']} / {result['n_test']}"]
        if group_names:
            groups = result.get("groups", {})
            cells[5:5] = [_percent(groups.get(g)) for g in group_names] + [_percent(result.get("worst_group"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(results: dict, out_dir: str | Path, stem: str = "eval") -> Path:
    """Write ``<stem>.json`` (the full results) and ``<stem>.md`` (their table) into ``out_dir``, each atomically.

    ``results`` is one result of :func:`evaluate_backbone` or a dict of them by name. Returns the JSON path.
    """
    out_dir = Path(out_dir)
    json_path = out_dir / f"{stem}.json"
    atomic_write_text(json_path, json.dumps(results, indent=2) + "\n")
    atomic_write_text(out_dir / f"{stem}.md", f"# Evaluation ({stem})\n\n{results_table(named_results(results))}")
    return json_path
