"""The σ-measurement of GeSSL and the universality score U = exp(−σ).

σ is the gap between a model and the task-specific optimal model, which classifies every sample of a task with
certainty: the KL divergence from the optimum's one-hot output to the model's class probabilities, averaged over
the samples of a task and then over the tasks,

    σ(f; 𝒯) = (1/|𝒯|) Σ_τ (1/|τ|) Σ_{x∈τ} KL(one-hot(y(x)) ‖ π_f(x)) = mean −log π_f(x)_{y(x)},         # Eq. (G5)
    U = exp(−σ) ∈ (0, 1]                                                                              # Eq. (G6)

σ is in nats, lower is better (0 = every sample classified with probability 1); U is the geometric mean of the
probability given to the right class, higher is better. Two kinds of task:

- ``sigma_ssl``: held-out mini-batch tasks, each ``task_size`` images with two augmented views, π the contrastive
  classifier of Eq. (G1) on a given embedding (the evaluation uses the backbone's pooled features, which every
  method has, so that runs with and without GeSSL are measured alike). An uninformative embedding scores
  σ ≈ log(task_size).
- ``sigma_task``: a labelled downstream task, π the linear probe's softmax, y the true label: the probe's test
  cross-entropy.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from tc2ssl.data.augment import step_seed
from tc2ssl.gessl.head import pair_log_probs

#: the stream of the σ_ssl tasks' image draws and views (independent of the training streams)
_SIGMA_STREAM = 0x516A


def sigma_from_log_probs(log_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. (G5) for one task: mean over rows r of −log_probs[r, labels[r]]; log_probs [R, C], labels [R]."""
    if log_probs.dim() != 2 or labels.shape != (log_probs.shape[0],):
        raise ValueError(f"log_probs must be [R, C] and labels [R], got {tuple(log_probs.shape)} and "
                         f"{tuple(labels.shape)}")
    return -log_probs.gather(1, labels.long()[:, None]).mean()


def universality(sigma: float) -> float:
    """Eq. (G6): U = exp(−σ)."""
    if not sigma >= 0:
        raise ValueError(f"σ is a mean KL divergence and must be >= 0, got {sigma!r}")
    return math.exp(-sigma)


def sigma_task(probabilities: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
               classes: np.ndarray | list | None = None, floor: float = 1e-15) -> dict[str, float]:
    """σ and U of a labelled task from a classifier's class probabilities [M, C] (columns in the order of
    ``classes``, default 0..C−1) and the true labels [M]. A label the classifier has no column for gets
    probability 0; probabilities are clipped at ``floor`` so that σ stays finite."""
    probs = np.asarray(probabilities.detach().cpu() if isinstance(probabilities, torch.Tensor) else probabilities,
                       dtype=np.float64)
    y = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
    if probs.ndim != 2 or y.shape != (probs.shape[0],):
        raise ValueError(f"probabilities must be [M, C] and labels [M], got {probs.shape} and {y.shape}")
    columns = {int(c): i for i, c in enumerate(np.arange(probs.shape[1]) if classes is None else classes)}
    picked = np.array([probs[r, columns[int(label)]] if int(label) in columns else 0.0 for r, label in enumerate(y)])
    sigma = float(-np.log(np.clip(picked, floor, 1.0)).mean())
    return {"sigma": sigma, "U": universality(sigma)}


@torch.no_grad()
def sigma_ssl(embed: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, view_maker, n_tasks: int = 20,
              task_size: int = 128, temperature: float = 0.1, seed: int = 0) -> dict[str, float]:
    """σ and U of Eq. (G5)-(G6) over ``n_tasks`` held-out mini-batch tasks of ``task_size`` images each.

    ``embed``: float views [B, C, H, W] -> embeddings [B, d] (the caller puts its modules in eval mode).
    ``images``: uint8 [N, C, H, W] held-out images; each task draws ``min(task_size, N)`` of them and two views
    per image, all from ``seed`` (the same tasks for every model given the same seed and images). π is Eq. (G1)
    with temperature ``temperature``, both directions. Also returns ``sigma_uninformative`` = log(task_size).
    """
    if images.dim() != 4 or images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
    if n_tasks < 1 or task_size < 2 or images.shape[0] < 2:
        raise ValueError(f"σ_ssl needs n_tasks >= 1 and tasks of >= 2 images, got n_tasks={n_tasks}, "
                         f"task_size={task_size}, {images.shape[0]} images")
    size = min(task_size, images.shape[0])
    per_task = []
    for task in range(n_tasks):
        generator = torch.Generator().manual_seed(step_seed(seed, 0, task, stream=_SIGMA_STREAM))
        members = torch.randperm(images.shape[0], generator=generator)[:size]
        views = view_maker(images[members], 2, step_seed(seed, 1, task, stream=_SIGMA_STREAM))   # [n, 2, C, H, W]
        z = embed(views.flatten(0, 1)).view(size, 2, -1)
        log_probs = pair_log_probs(z.double(), temperature).flatten(0, 1)               # [2n, n]
        labels = torch.arange(size).repeat(2)
        per_task.append(float(sigma_from_log_probs(log_probs, labels)))
    sigma = sum(per_task) / len(per_task)
    return {"sigma": sigma, "U": universality(max(sigma, 0.0)), "n_tasks": n_tasks, "task_size": size,
            "temperature": temperature, "sigma_uninformative": math.log(size)}


def universality_table(rows: dict[str, dict], baseline: str | None = None) -> str:
    """A markdown table of σ and U per named evaluation result (each with a "universality" entry, see
    :func:`tc2ssl.eval.evaluate.evaluate_backbone`); with ``baseline`` (a row name) also U / U_baseline."""
    found = {name: r["universality"] for name, r in rows.items() if "universality" in r}
    if not found:
        return "(no σ measurements)\n"
    base = found.get(baseline) if baseline else None
    header = ["model", "σ_ssl", "U_ssl", "σ_task", "U_task"] + (["U_ssl / base", "U_task / base"] if base else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def cell(values: dict, key: str, fmt: str = ".4f") -> str:
        return format(values[key], fmt) if key in values else "–"

    for name, values in found.items():
        cells = [name, cell(values, "sigma_ssl"), cell(values, "U_ssl"), cell(values, "sigma_task"),
                 cell(values, "U_task")]
        if base:
            cells += [f"{values[k] / base[k]:.3f}" if k in values and k in base and base[k] > 0 else "–"
                      for k in ("U_ssl", "U_task")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
