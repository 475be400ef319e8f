"""TC²'s calibration and Eqs. 1-2 written out for the plug-in tests, independently of ``tc2ssl.tc2.calibrator``
(which the references would otherwise share with the code under test). Only the learned parts are read from the
calibrator: f_w's MLP (``weight_net.mlp``), its threshold scale, and the batch scale s of ``input_norm=rms``."""
from __future__ import annotations

import torch


def _prepped_and_scale(calibrator, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """z' = z/‖z‖ (l2), z/s (rms) or z, and s (1 unless rms)."""
    norm = calibrator.input_norm
    scale = calibrator.scale if norm == "rms" else torch.ones((), dtype=z.dtype)
    if norm == "l2":
        return z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12), scale
    return (z / scale if norm == "rms" else z), scale


def reference_weights(calibrator, prepped: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """W = f_w(z') for already prepped rows: σ(MLP[z', c]) ⊙ c (gated) or sign(c)·max(|c| − t₀·exp(MLP[z', c]), 0)
    (shrink), c = z'V. No task context, no view agreement."""
    cfg, net = calibrator.cfg, calibrator.weight_net
    assert not cfg.task_context and not cfg.view_agreement, "the reference covers neither"
    coords = prepped @ basis
    logits = net.mlp(torch.cat([prepped, coords], dim=-1))
    if net.mode == "gated":
        weights = torch.sigmoid(logits) * coords
    elif net.mode == "shrink":
        threshold = net.threshold_scale * logits.clamp(-6.0, 6.0).exp()
        weights = coords.sign() * (coords.abs() - threshold).clamp(min=0)
    else:
        raise AssertionError(f"no reference for weight_mode={net.mode}")
    return weights


def reference_calibrated(calibrator, z: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """ẑ = s·f_w(z')Vᵀ for rows z [R, d] (D-TC-01/03)."""
    prepped, scale = _prepped_and_scale(calibrator, z)
    return scale * (reference_weights(calibrator, prepped, basis) @ basis.T)


def reference_loss_v(basis: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Eq. 1, per-row mean: ‖VᵀV − I‖²_F + (1/R)Σ_j ‖z_j − VVᵀz_j‖²."""
    gram = basis.T @ basis
    orthogonality = (gram - torch.eye(gram.shape[0], dtype=gram.dtype)).square().sum()
    return orthogonality + (rows - rows @ basis @ basis.T).square().sum(-1).mean()


def reference_loss_w(rows: torch.Tensor, weights: torch.Tensor, basis: torch.Tensor, l1: float) -> torch.Tensor:
    """Eq. 2, per-row mean: (1/R)Σ_j ‖z_j − W_j Vᵀ‖² + λ₁‖W_j‖₁."""
    return ((rows - weights @ basis.T).square().sum(-1) + l1 * weights.abs().sum(-1)).mean()
