"""The outer losses of GeSSL: distillation from a future state (the self-motivated target) or the one-hot optimum.

Both take log π of a task in the layout of :func:`tc2ssl.gessl.head.pair_log_probs` ([..., N, N], row i of class
i) and average over every row (every view of every image):

    L_out = mean_rows KL(π_ψ ‖ π_φ) = mean_rows Σ_j π_ψ,j (log π_ψ,j − log π_φ,j)                       # Eq. (G2)
    L_out = mean_rows KL(e_i ‖ π_φ) = mean_rows −log π_φ,i      (``target=onehot``)                     # Eq. (G2')

ψ is the look-ahead model (Λ more SSL steps from the task-adapted φ, without gradients); the target side is
detached here whatever the caller passes, so no gradient ever reaches ψ.
"""
from __future__ import annotations

import torch


def _check_log_probs(log_probs: torch.Tensor, name: str) -> None:
    if log_probs.dim() < 2 or log_probs.shape[-1] != log_probs.shape[-2]:
        raise ValueError(f"{name} must be log-probabilities [..., N, N] (row i of class i), got "
                         f"{tuple(log_probs.shape)}")


def kl_to_target(target_log_probs: torch.Tensor, current_log_probs: torch.Tensor) -> torch.Tensor:
    """Eq. (G2): the mean over rows of KL(target ‖ current); the target is detached."""
    _check_log_probs(current_log_probs, "current_log_probs")
    if target_log_probs.shape != current_log_probs.shape:
        raise ValueError(f"target {tuple(target_log_probs.shape)} and current {tuple(current_log_probs.shape)} "
                         "log-probabilities must have the same shape")
    target = target_log_probs.detach()
    return (target.exp() * (target - current_log_probs)).sum(dim=-1).mean()


def onehot_cross_entropy(log_probs: torch.Tensor) -> torch.Tensor:
    """Eq. (G2'): the mean over rows of −log π_i (row i's own class), i.e. KL(one-hot ‖ π)."""
    _check_log_probs(log_probs, "log_probs")
    return -torch.diagonal(log_probs, dim1=-2, dim2=-1).mean()
