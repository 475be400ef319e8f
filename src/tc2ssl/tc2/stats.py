"""The batch statistics matrix S that conditions the factor network f_v (D-TC-30).

TC² [P] §Task Conflict Calibration (i): the factors are extracted from "the statistics of all sample
representations in the training batch". S stacks the batch mean μ (row 0) on the biased covariance Σ (rows 1..d),
computed over all views of all images, Z_f [N·m, d].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tc2ssl.precision import at_least_float32, float32_region


def normalize_rows(z: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """ℓ2-normalise every row of ``z`` [R, d] (``input_norm="l2"``, D-TC-07); zero rows stay zero."""
    if z.dim() != 2:
        raise ValueError(f"z must be [rows, dim], got shape {tuple(z.shape)}")
    return F.normalize(z, dim=-1, eps=eps)


def batch_statistics(zf: torch.Tensor) -> torch.Tensor:
    """S = concat(μᵀ, Σ) [(d+1), d] of the rows of ``zf`` [R, d].

    μ = mean of the rows, Σ = (Z_f − μ)ᵀ(Z_f − μ) / R (the biased estimator, D-TC-30 [CHOICE]).
    Computed in at least float32 (D-TC-33: half-precision statistics are a source of NaNs), autocast off.
    """
    if zf.dim() != 2 or zf.shape[0] < 1 or zf.shape[1] < 1:
        raise ValueError(f"Zf must be [rows, dim] with rows, dim >= 1, got shape {tuple(zf.shape)}")
    with float32_region(zf.device):
        zf = at_least_float32(zf)
        mean = zf.mean(dim=0)                                  # [d]
        centred = zf - mean
        covariance = centred.T @ centred / zf.shape[0]         # [d, d]
        return torch.cat([mean[None, :], covariance], dim=0)   # [(d+1), d]
