"""Time-to-accuracy of a benchmark run: frozen-backbone kNN accuracy during pretraining, against the training
wall-clock and the images seen.

Every ``suite.curve_every`` epochs (and after the last one) the run's backbone, frozen, is scored by a weighted
kNN (k = eval.knn_k) on the pretraining data's own labelled splits: at most ``suite.curve_images`` images of its
train split as the kNN memory and as many of its test split as queries (fixed seed-0 subsets, the same for every
row). Point 0 is the seeded initialisation, before any step (for a post-hoc run, ``train.init_from``'s
finished backbone; its seconds and images count the post-hoc training only). The points go to ``curve.jsonl``
in the run folder (one line per epoch; a resumed run rewrites the epochs it replays), and are joined with the
epoch records of ``metrics.jsonl``: the cumulative training seconds (the kNN's own time is not counted) and the
images seen (optimiser steps × global batch). The suite's linear probe at the end is the last point's headline metric.

The hook is a small per-epoch callback (:data:`tc2ssl.train.loop.EPOCH_END_HOOKS`); an online kNN monitor of the
training loop could serve it later.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from tc2ssl.data.base import ImageSet
from tc2ssl.eval.features import extract_features
from tc2ssl.eval.knn import knn_accuracy

CURVE_FILE = "curve.jsonl"
INIT_EPOCH = -1       # the point of the initialisation (seeded, or a post-hoc run's starting weights)


class KnnCurve:
    """The per-epoch hook: kNN accuracy of the frozen backbone every ``every`` epochs (and at ``last_epoch``),
    appended to ``run_dir/curve.jsonl``."""

    def __init__(self, run_dir: Path, memory: ImageSet, queries: ImageSet, every: int, last_epoch: int,
                 knn_k: int, temperature: float, batch_size: int, device: torch.device):
        if every < 1:
            raise ValueError(f"every must be >= 1 epoch, got {every}")
        if memory.labels is None or queries.labels is None:
            raise ValueError("the kNN curve needs labelled train and test splits")
        self.path = Path(run_dir) / CURVE_FILE
        self.memory, self.queries = memory, queries
        self.every, self.last_epoch = every, last_epoch
        self.knn_k, self.temperature, self.batch_size, self.device = knn_k, temperature, batch_size, device
        self.pending: list[dict] = []   # points measured before the run folder exists (the initialisation)

    def accuracy(self, backbone: torch.nn.Module) -> float:
        """kNN top-1 accuracy in [0, 1] of ``backbone``'s features (extract_features restores its mode)."""
        memory_x = extract_features(backbone, self.memory.images, self.batch_size, self.device)
        query_x = extract_features(backbone, self.queries.images, self.batch_size, self.device)
        return knn_accuracy(memory_x, self.memory.labels, query_x, self.queries.labels, self.knn_k,
                            self.temperature)

    def record(self, epoch: int, backbone: torch.nn.Module, defer: bool = False) -> None:
        """Measure the point of ``epoch``; ``defer``: keep it until the first epoch's call writes the file (a run
        folder must hold only the run's own files when its training starts)."""
        self.pending.append({"epoch": epoch, "knn": self.accuracy(backbone)})
        if not defer:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.writelines(json.dumps(point) + "\n" for point in self.pending)
            self.pending = []

    def __call__(self, epoch: int, backbone: torch.nn.Module, epoch_record: dict, run_dir: Path) -> None:
        if (epoch + 1) % self.every == 0 or epoch == self.last_epoch:
            self.record(epoch, backbone)


def read_curve(run_dir: Path, batch_size: int) -> list[dict]:
    """The run's points ``{epoch, knn, seconds, images}``, epoch 0 = initialisation; ``[]`` without curve.jsonl.
    ``epoch`` counts finished epochs; ``seconds`` is the cumulative training time of metrics.jsonl's epoch
    records; ``images`` = steps × ``batch_size``."""
    run_dir = Path(run_dir)
    curve_path = run_dir / CURVE_FILE
    if not curve_path.is_file():
        return []
    knn = {}
    for line in curve_path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            point = json.loads(line)
            knn[int(point["epoch"])] = float(point["knn"])   # a replayed epoch: the later line wins
    seconds, steps, elapsed = {INIT_EPOCH: 0.0}, {INIT_EPOCH: 0}, 0.0
    for record in epoch_records(run_dir):
        elapsed += float(record["seconds"])
        seconds[int(record["epoch"])], steps[int(record["epoch"])] = elapsed, int(record["step"])
    return [{"epoch": epoch + 1, "knn": knn[epoch], "seconds": seconds[epoch], "images": steps[epoch] * batch_size}
            for epoch in sorted(knn) if epoch in seconds]


def reset_curve(run_dir: Path) -> None:
    """Forget the points of an earlier run in ``run_dir`` (a run that starts from scratch)."""
    path = Path(run_dir) / CURVE_FILE
    if path.exists():
        path.unlink()


def epoch_records(run_dir: Path) -> list[dict]:
    """The epoch records of ``run_dir/metrics.jsonl`` (``[]`` without one)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    records = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return [record for record in records if record.get("kind") == "epoch"]


def training_seconds(run_dir: Path) -> tuple[float, int]:
    """(cumulative training seconds, epochs) from the epoch records of ``run_dir/metrics.jsonl``."""
    records = epoch_records(run_dir)
    return sum(float(record["seconds"]) for record in records), len(records)


def time_to_reach(curve: list[dict], target: float) -> dict | None:
    """Where a time-to-accuracy curve (points ``{epoch, knn, seconds, images}`` in epoch order) first reaches kNN
    accuracy ``target``: ``{"seconds", "images"}`` interpolated linearly between the two points around the crossing
    (the point itself when one equals it), or None when no point reaches it."""
    previous = None
    for point in curve:
        if point["knn"] >= target:
            if previous is None or point["knn"] == previous["knn"]:
                return {"seconds": float(point["seconds"]), "images": float(point["images"])}
            share = (target - previous["knn"]) / (point["knn"] - previous["knn"])
            return {key: float(previous[key] + share * (point[key] - previous[key])) for key in ("seconds", "images")}
        previous = point
    return None
