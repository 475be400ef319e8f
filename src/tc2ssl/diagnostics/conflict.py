"""Inter-task gradient conflict: pairwise cosines of per-task gradients (D-DG-01, TC² Figure 1(b)(c)).

"We compute the cosine similarity of gradients between tasks at each epoch. A negative value indicates
conflicting gradients (angle > 90°)" [TC² §Motivation]. For K task gradients g_1..g_K (flattened over the
encoder parameters) the per-step metrics are the mean and the minimum of cos(g_i, g_j) over the pairs i < j,
and the fraction of those pairs with a negative cosine. :class:`ConflictTracker` turns the per-step values into
per-epoch summaries and the rows of ``conflict.csv``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

NORM_GUARD = 1e-12


def flatten_grads(grads: dict[str, torch.Tensor], names: list[str] | None = None) -> torch.Tensor:
    """Concatenate the gradients named ``names`` (default: all, in dict order) into one vector [P]."""
    names = list(grads) if names is None else names
    if not names:
        raise ValueError("no gradients to flatten")
    missing = [n for n in names if n not in grads]
    if missing:
        raise ValueError(f"gradients missing for parameters {missing}")
    return torch.cat([grads[n].reshape(-1) for n in names])


def _stack_task_grads(task_grads: list[dict[str, torch.Tensor]] | torch.Tensor) -> torch.Tensor:
    if isinstance(task_grads, torch.Tensor):
        if task_grads.dim() != 2:
            raise ValueError(f"task gradients must be [K, P], got shape {tuple(task_grads.shape)}")
        return task_grads
    names = list(task_grads[0]) if task_grads else []
    for k, grads in enumerate(task_grads):
        if set(grads) != set(names):
            raise ValueError(f"task {k} has gradients for different parameters than task 0")
    return torch.stack([flatten_grads(grads, names) for grads in task_grads])


def task_gradient_cosines(task_grads: list[dict[str, torch.Tensor]] | torch.Tensor) -> dict[str, torch.Tensor]:
    """Pairwise cosines of K >= 2 task gradients (a list of per-task dicts, or a [K, P] tensor).

    Returns tensors (no host synchronisation): ``mean``, ``min`` and ``frac_negative`` over the off-diagonal
    upper triangle, and the full [K, K] cosine ``matrix``. A zero gradient has cosine 0 with everything.
    """
    grads = _stack_task_grads(task_grads)
    k = grads.shape[0]
    if k < 2:
        raise ValueError(f"gradient conflict needs at least 2 tasks, got {k}")
    unit = grads / (grads.norm(dim=1, keepdim=True) + NORM_GUARD)
    matrix = unit @ unit.T                                                          # [K, K]
    rows, cols = torch.triu_indices(k, k, offset=1, device=grads.device)
    pairs = matrix[rows, cols]                                                      # [K(K-1)/2]
    return {
        "mean": pairs.mean(),
        "min": pairs.min(),
        "frac_negative": (pairs < 0).to(grads.dtype).mean(),
        "matrix": matrix,
    }


@dataclass(frozen=True)
class ConflictRow:
    """One measured step (a row of ``conflict.csv`` before the run-level columns)."""

    epoch: int
    step: int
    mean: float
    min: float
    frac_negative: float


@dataclass(frozen=True)
class ConflictSummary:
    """One epoch: the mean of the per-step means, the minimum cosine, the mean negative fraction."""

    epoch: int
    n_steps: int
    mean: float
    min: float
    frac_negative: float


class ConflictTracker:
    """Collects per-step conflict metrics and summarises them per epoch (D-DG-01).

    ``update`` only stores tensors; ``end_epoch`` does one host transfer for the whole epoch, appends the
    epoch's per-step :class:`ConflictRow` s to ``rows`` and its :class:`ConflictSummary` to ``summaries``.
    """

    def __init__(self) -> None:
        self.rows: list[ConflictRow] = []
        self.summaries: list[ConflictSummary] = []
        self._epoch: int | None = None
        self._steps: list[int] = []
        self._values: list[torch.Tensor] = []

    def update(self, epoch: int, step: int, cosines: dict[str, torch.Tensor]) -> None:
        """Record the output of :func:`task_gradient_cosines` for ``step`` of ``epoch``."""
        if self._epoch is not None and epoch != self._epoch:
            raise ValueError(f"epoch {self._epoch} has unsummarised steps; call end_epoch() before epoch {epoch}")
        self._epoch = epoch
        self._steps.append(step)
        values = [cosines[key].detach().to(torch.float64) for key in ("mean", "min", "frac_negative")]
        self._values.append(torch.stack(values))

    def end_epoch(self) -> ConflictSummary:
        """Summarise the steps recorded since the last call; raises if there are none."""
        if self._epoch is None:
            raise ValueError("no conflict measurements recorded for this epoch")
        values = torch.stack(self._values).cpu()                                    # [steps, 3], one transfer
        rows = [ConflictRow(self._epoch, s, *v) for s, v in zip(self._steps, values.tolist())]
        summary = ConflictSummary(
            epoch=self._epoch,
            n_steps=len(rows),
            mean=values[:, 0].mean().item(),
            min=values[:, 1].min().item(),
            frac_negative=values[:, 2].mean().item(),
        )
        self.rows.extend(rows)
        self.summaries.append(summary)
        self._epoch, self._steps, self._values = None, [], []
        return summary


def epoch_summary_dict(tracker: "ConflictTracker") -> dict[str, float]:
    """The tracker's epoch summary under the stable metric names (empty when nothing was measured)."""
    if tracker._epoch is None:
        return {}
    summary = tracker.end_epoch()
    return {"conflict/cos_mean": summary.mean, "conflict/cos_min": summary.min,
            "conflict/frac_negative": summary.frac_negative, "conflict/steps": float(summary.n_steps)}
