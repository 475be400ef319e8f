"""Per-layer diagnostics of a pretraining run: accuracy and coding rate reduction of every backbone tap per epoch.

This is the measurement behind the UMM paper's Observations 1–2 (its Figures 1–2: test accuracy and ΔR against
the training epoch, early-layer and last-layer outputs). With ``diag.layers_every`` = k > 0 the training loop
calls :meth:`LayerDiagnostics.measure` before training (``diag.at_init``, epoch 0), after every k-th epoch and
after the last one. For each named tap of the backbone (``small_cnn``: block1..block4; ResNets: layer1..layer4):

- features: the tap's globally average-pooled output, ℓ2-normalised, BatchNorm in eval mode, no autograd;
- ``knn_acc``: weighted kNN (k = ``diag.knn_k``, temperature ``diag.knn_temperature``) of a fixed labelled test
  subset (``diag.eval_size`` images) against a fixed labelled training bank (``diag.bank_size`` images);
- ``linear_acc``: with ``diag.linear_probe=true``, a logistic-regression probe (C chosen on a validation split
  from ``eval.probe_cs``, ``diag.probe_max_iter`` L-BFGS iterations); empty otherwise;
- ``R``, ``Rc``, ``dR``: coding rate, class coding rate and their difference on the test subset with the ground-truth
  labels as the partition (ε² = ``diag.eps2``, float64); ``dR_per_dim`` = dR / (tap width), comparable across taps
  of different widths;
- ``dR_instance``: ΔR of a fixed training batch (``diag.instance_images`` images, two augmented views each, fixed
  seed) with the instance partition (an image's two views form one group): label-free.

Rows go to ``layers.csv`` in the run folder (columns :data:`LAYER_COLUMNS`; ``epoch`` counts completed epochs,
0 = before training). ``plot_layers`` draws the Figure 1–2 analogue, one curve per tap (mean ± std over seeds
when the rows hold several).
"""
from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

from tc2ssl.data.base import DataSplits, to_unit
from tc2ssl.diagnostics.coding_rate import coding_rate_reduction, instance_labels
from tc2ssl.errors import ConfigError
from tc2ssl.eval.knn import knn_accuracy

LAYER_COLUMNS = ("epoch", "layer", "knn_acc", "linear_acc", "R", "Rc", "dR", "dR_per_dim", "dR_instance")
LAYERS_CSV = "layers.csv"
LAYERS_PNG = "layers.png"


@torch.no_grad()
def tap_features(backbone, inputs: torch.Tensor, taps: tuple[str, ...], batch_size: int = 512,
                 device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """ℓ2-normalised pooled features {tap: [N, d_tap]} (float32, CPU) of ``inputs``: uint8 images [N, C, H, W] (mapped
    to [-1, 1] as in training) or float views already in [-1, 1]. The backbone runs in eval mode; its mode is
    restored afterwards."""
    was_training = backbone.training
    dtype = next(backbone.parameters()).dtype
    backbone.eval()
    try:
        chunks: dict[str, list[torch.Tensor]] = defaultdict(list)
        for start in range(0, inputs.shape[0], batch_size):
            batch = inputs[start:start + batch_size].to(device)
            batch = (to_unit(batch) if batch.dtype == torch.uint8 else batch).to(dtype)
            for tap, feats in backbone.forward_features(batch, taps).items():
                chunks[tap].append(F.normalize(feats.float(), dim=1).cpu())
    finally:
        backbone.train(was_training)
    return {tap: torch.cat(parts) for tap, parts in chunks.items()}


def _fixed_subset(n_total: int, size: int, seed: int) -> torch.Tensor:
    order = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))
    return order[:min(size, n_total)]


class LayerDiagnostics:
    """The fixed subsets of a run's per-layer diagnostics and the ``layers.csv`` they are written to."""

    def __init__(self, cfg, data: DataSplits, view_maker, out: str | Path, device: torch.device | str = "cpu"):
        self.diag = cfg.diag
        self.probe_cs = list(cfg.eval.probe_cs)
        self.total_epochs = cfg.train.epochs
        self.device = torch.device(device)
        self.path = Path(out) / LAYERS_CSV
        test, train = data.test, data.train
        if test is None or test.labels is None or train.labels is None:
            raise ConfigError(f"diag.layers_every={self.diag.layers_every} needs labelled data with a test split; "
                              f"data.name={cfg.data.name!r} has none (set diag.layers_every=0)")
        eval_rows = _fixed_subset(len(test), self.diag.eval_size, seed=cfg.seed)
        bank_rows = _fixed_subset(len(train), self.diag.bank_size, seed=cfg.seed + 1)
        self.eval_images, self.eval_labels = test.images[eval_rows], test.labels[eval_rows]
        self.bank_images, self.bank_labels = train.images[bank_rows], train.labels[bank_rows]
        instance_rows = _fixed_subset(len(train), self.diag.instance_images, seed=cfg.seed + 2)
        views = view_maker(train.images[instance_rows], 2, seed=cfg.seed ^ 0xD1A6)        # [N, 2, C, H, W]
        self.instance_views = views.flatten(0, 1)                                         # image-major rows
        self.instance_groups = instance_labels(views.shape[0], 2)

    def due(self, epochs_completed: int) -> bool:
        """Whether to measure after ``epochs_completed`` epochs (0 = before training)."""
        if epochs_completed == 0:
            return self.diag.at_init
        return epochs_completed % self.diag.layers_every == 0 or epochs_completed == self.total_epochs

    def start(self, epochs_completed: int) -> None:
        """Prepare ``layers.csv`` for a run starting after ``epochs_completed`` epochs: a fresh run removes a stale
        file; a resumed one keeps only the rows it has not yet to rewrite."""
        if epochs_completed == 0 or not self.path.exists():
            self.path.unlink(missing_ok=True)
            return
        kept = [r for r in read_layers_csv(self.path) if r["epoch"] <= epochs_completed]
        self.path.unlink()
        self._append(kept)

    def measure(self, backbone, epochs_completed: int) -> list[dict]:
        """Measure every tap of ``backbone``, append the rows to ``layers.csv`` and return them."""
        taps = tuple(backbone.tap_names)
        size, device = self.diag.batch_size, self.device
        eval_feats = tap_features(backbone, self.eval_images, taps, size, device)
        bank_feats = tap_features(backbone, self.bank_images, taps, size, device)
        instance_feats = tap_features(backbone, self.instance_views, taps, size, device)
        rows = []
        for tap in taps:
            x_eval, x_bank = eval_feats[tap], bank_feats[tap]
            labelled = coding_rate_reduction(x_eval.double(), self.eval_labels, self.diag.eps2)
            instance = coding_rate_reduction(instance_feats[tap].double(), self.instance_groups, self.diag.eps2)
            linear = math.nan
            if self.diag.linear_probe:
                from tc2ssl.eval.linear_probe import linear_probe

                linear = linear_probe(x_bank, self.bank_labels, x_eval, self.eval_labels, self.probe_cs,
                                      max_iter=self.diag.probe_max_iter)["accuracy"]
            rows.append({
                "epoch": epochs_completed, "layer": tap,
                "knn_acc": knn_accuracy(x_bank, self.bank_labels, x_eval, self.eval_labels, self.diag.knn_k,
                                        self.diag.knn_temperature),
                "linear_acc": linear, "R": float(labelled.R), "Rc": float(labelled.Rc), "dR": float(labelled.dR),
                "dR_per_dim": float(labelled.dR) / x_eval.shape[1], "dR_instance": float(instance.dR),
            })
        self._append(rows)
        return rows

    def _append(self, rows: list[dict]) -> None:
        new = not self.path.exists()
        with self.path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=LAYER_COLUMNS)
            if new:
                writer.writeheader()
            for row in rows:
                writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})


def read_layers_csv(path: str | Path) -> list[dict]:
    """The rows of a ``layers.csv``: ``epoch`` as int, ``layer`` as str, the rest as float (NaN where empty)."""
    with Path(path).open(newline="") as fh:
        return [{k: (int(v) if k == "epoch" else v if k == "layer" else float(v) if v != "" else math.nan)
                 for k, v in row.items()} for row in csv.DictReader(fh)]


def layer_curves(rows: list[dict], column: str) -> dict[str, tuple[list[int], list[float], list[float]]]:
    """{layer: (epochs, mean, std)} of ``column`` over the rows of each (layer, epoch): several seeds give a mean
    and a sample standard deviation (0 for one seed)."""
    grouped: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if not math.isnan(row[column]):
            grouped[row["layer"]][row["epoch"]].append(row[column])
    curves = {}
    for layer, by_epoch in grouped.items():
        epochs = sorted(by_epoch)
        means = [sum(by_epoch[e]) / len(by_epoch[e]) for e in epochs]
        stds = [math.sqrt(sum((v - m) ** 2 for v in by_epoch[e]) / (len(by_epoch[e]) - 1)) if len(by_epoch[e]) > 1
                else 0.0 for e, m in zip(epochs, means)]
        curves[layer] = (epochs, means, stds)
    return curves


def plot_layers(rows: list[dict], png_path: str | Path, title: str = "") -> Path:
    """The Figure 1–2 analogue: kNN accuracy (and the linear probe when measured), ΔR/d with the label partition
    and ΔR with the instance partition against the epoch, one curve per tap (mean ± std band over seeds)."""
    from matplotlib.figure import Figure

    from tc2ssl.train.checkpoint import atomic_write_bytes

    panels = [("knn_acc", "kNN accuracy"), ("dR_per_dim", "ΔR / d (label partition, test)"),
              ("dR_instance", "ΔR (instance partition, train)")]
    if any(not math.isnan(r["linear_acc"]) for r in rows):
        panels.insert(1, ("linear_acc", "linear-probe accuracy"))
    fig = Figure(figsize=(4.2 * len(panels), 3.6), dpi=100)
    axes = fig.subplots(1, len(panels))
    for ax, (column, label) in zip(axes, panels):
        for i, (layer, (epochs, means, stds)) in enumerate(layer_curves(rows, column).items()):
            ax.plot(epochs, means, "-", color=f"C{i % 10}", label=layer, linewidth=1.4)
            ax.fill_between(epochs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                            color=f"C{i % 10}", alpha=0.2, linewidth=0)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    png_path = Path(png_path)
    atomic_write_bytes(png_path, lambda fh: fig.savefig(fh, format="png"))
    return png_path


def peak_and_final(rows: list[dict], column: str = "knn_acc") -> dict[str, dict[str, float]]:
    """Per tap: the best epoch-mean of ``column``, its epoch, the final value and the drop best − final."""
    summary = {}
    for layer, (epochs, means, _) in layer_curves(rows, column).items():
        best = max(range(len(means)), key=lambda i: means[i])
        summary[layer] = {"best": means[best], "best_epoch": epochs[best], "final": means[-1],
                          "drop": means[best] - means[-1]}
    return summary


def report_section(run_dir: str | Path) -> dict[str, str]:
    """The report.md section of a run's per-layer diagnostics ({} when the run has no ``layers.csv``)."""
    run_dir = Path(run_dir)
    path = run_dir / LAYERS_CSV
    if not path.exists():
        return {}
    rows = read_layers_csv(path)
    if not rows:
        return {}
    plot_layers(rows, run_dir / LAYERS_PNG, title=f"{run_dir.name}: per-layer diagnostics")
    lines = [f"Per tap, from [{LAYERS_CSV}]({LAYERS_CSV}) (epoch 0 = before training); kNN accuracy in %:", "",
             "| tap | best kNN | at epoch | final kNN | drop (pt) | final ΔR/d | final ΔR instance |",
             "|---|---|---|---|---|---|---|"]
    last_epoch = max(r["epoch"] for r in rows)
    final = {r["layer"]: r for r in rows if r["epoch"] == last_epoch}
    for layer, s in peak_and_final(rows).items():
        lines.append(f"| {layer} | {100 * s['best']:.2f} | {s['best_epoch']} | {100 * s['final']:.2f} | "
                     f"{100 * s['drop']:.2f} | {final[layer]['dR_per_dim']:.4f} | {final[layer]['dR_instance']:.3f} |")
    lines += ["", f"![per-layer diagnostics]({LAYERS_PNG})"]
    return {"Per-layer diagnostics": "\n".join(lines)}
