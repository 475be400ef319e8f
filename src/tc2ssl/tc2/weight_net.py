"""The weight extraction network f_w and the calibration ẑ = f_w(z) Vᵀ (D-TC-01, D-TC-01/02/03).

f_w maps a representation z_j to its factor weights W_j ∈ ℝ^{n_f}; the calibrated representation is ẑ_j = W_j Vᵀ,
a weighted combination of a few shared factors. (The paper's "W_j = f_w(z_j)Vᵀ" conflates the two; D-TC-01.)

Modes:

* ``"gated"`` (default): W = σ(MLP[z, c]) ⊙ c with c = zV, the coordinates of z on the factor basis. The weights
  follow the batch-dependent V, and for orthonormal V the per-sample optimum of Eq. 2 (soft-thresholding
  sign(c)·max(|c| − λ₁/2, 0)) is reachable with gates g = max(0, 1 − λ₁/(2|c|)) ∈ [0, 1]. With n_f = d and all
  gates open, ẑ = z exactly.
* ``"shrink"``: W = sign(c)·max(|c| − t, 0), a soft threshold of c = zV with a per-row, per-factor threshold
  t = t₀·exp(MLP[z, c]) (the exponent clamped to ±6), t₀ = ``threshold_scale`` (λ₁/2, set by the calibrator per
  batch). The MLP's last layer starts at zero, so at initialisation W is exactly the per-sample LASSO optimum of
  Eq. 2 for orthonormal V, and a gate g = W/c = max(0, 1 − t/|c|) can be exactly 0 (a sigmoid gate only tends to it).
* ``"free"``: W = MLP(z), the literal f_w(z_j) of the paper (input z only).

``task_context=True`` appends the task mean z̄_k of each row's task to the MLP input (D-TC-03).

``penalty`` (shrink mode, ``plugin.view_agreement``): a per-row, per-factor weight ω ≥ 0 of the ℓ1 term, so that
Eq. 2 becomes a weighted LASSO Σ_r ω_r λ₁|W_r| whose optimum for orthonormal V is the soft threshold at ω_r λ₁/2;
the threshold becomes t = ω·t₀·exp(MLP[...]). The calibrator sets ω from how consistent each factor is across the
views of the task's images (:meth:`tc2ssl.tc2.calibrator.Calibrator.view_penalty`).
"""
from __future__ import annotations

import torch
from torch import nn

from tc2ssl.errors import ConfigError

WEIGHT_MODES = ("gated", "shrink", "free")
#: the bound on the shrink threshold's log-multiplier exp(±6)
MAX_LOG_THRESHOLD = 6.0


class WeightNet(nn.Module):
    """f_w: (z [R, d], V [d, n_f]) -> factor weights W [R, n_f].

    Args:
        dim: d, the dimension of z.
        n_factors: n_f, the number of factors (columns of V).
        hidden: width of the MLP.
        mode: ``"gated"`` (W = σ(MLP[z, zV]) ⊙ zV), ``"shrink"`` (W = soft-threshold of zV) or ``"free"`` (MLP(z)).
        gate_bias_init: initial bias of the gate logits (gated mode); +2.0 opens the gates to σ(2) ≈ 0.88.
        task_context: whether the MLP also sees the task mean of each row (``context`` in :meth:`forward`).
    """

    def __init__(self, dim: int, n_factors: int, hidden: int = 64, mode: str = "gated",
                 gate_bias_init: float = 2.0, task_context: bool = False):
        super().__init__()
        if dim < 1 or n_factors < 1 or hidden < 1:
            raise ConfigError(f"WeightNet needs dim, n_factors, hidden >= 1, got {dim}, {n_factors}, {hidden}")
        if mode not in WEIGHT_MODES:
            raise ConfigError(f"weight_mode must be one of {WEIGHT_MODES}, got {mode!r}")
        self.dim = dim
        self.n_factors = n_factors
        self.mode = mode
        self.task_context = task_context
        in_features = dim + (n_factors if mode != "free" else 0) + (dim if task_context else 0)
        self.mlp = nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, n_factors))
        if mode == "gated":
            nn.init.constant_(self.mlp[-1].bias, gate_bias_init)
        if mode == "shrink":                     # t = t₀ at init: W is the LASSO optimum of Eq. 2
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)
        #: t₀ of shrink mode (λ₁/2; the calibrator sets it per batch when λ₁ is relative to the coordinates)
        self.threshold_scale: torch.Tensor | float = 0.025

    def _check(self, z: torch.Tensor, basis: torch.Tensor, context: torch.Tensor | None) -> None:
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(f"z must be [rows, d] = [R, {self.dim}], got shape {tuple(z.shape)}")
        if basis.shape != (self.dim, self.n_factors):
            raise ValueError(f"V must be [d, n_f] = [{self.dim}, {self.n_factors}], got shape {tuple(basis.shape)}")
        if self.task_context and context is None:
            raise ValueError("this WeightNet was built with task_context=True: pass context, the task mean of each "
                             f"row, as [R, d] = [{z.shape[0]}, {self.dim}]")
        if not self.task_context and context is not None:
            raise ValueError("context was given but this WeightNet was built with task_context=False")
        if context is not None and context.shape != z.shape:
            raise ValueError(f"context must be [R, d] = {tuple(z.shape)} like z, got shape {tuple(context.shape)}")

    def _mlp_input(self, z: torch.Tensor, coords: torch.Tensor | None, context: torch.Tensor | None) -> torch.Tensor:
        parts = [z] + ([coords] if coords is not None else []) + ([context] if context is not None else [])
        return torch.cat(parts, dim=-1) if len(parts) > 1 else z

    def _check_penalty(self, z: torch.Tensor, penalty: torch.Tensor | None) -> None:
        if penalty is None:
            return
        if self.mode != "shrink":
            raise ValueError(f"a per-factor penalty needs weight_mode='shrink'; this WeightNet is {self.mode!r}")
        if penalty.shape != (z.shape[0], self.n_factors):
            raise ValueError(f"penalty must be [R, n_f] = [{z.shape[0]}, {self.n_factors}], got shape "
                             f"{tuple(penalty.shape)}")

    def gates(self, z: torch.Tensor, basis: torch.Tensor, context: torch.Tensor | None = None,
              penalty: torch.Tensor | None = None) -> torch.Tensor:
        """The gates W/c [R, n_f]: σ(MLP[z, zV]) in (0, 1) (gated) or max(0, 1 − t/|c|) in [0, 1] (shrink)."""
        if self.mode == "free":
            raise ValueError(f"gates exist only in weight_mode='gated' or 'shrink'; this WeightNet is {self.mode!r}")
        self._check(z, basis, context)
        self._check_penalty(z, penalty)
        coords = z @ basis
        if self.mode == "shrink":
            return torch.relu(1 - self.thresholds(z, coords, context, penalty) / coords.abs().clamp_min(1e-12))
        return torch.sigmoid(self.mlp(self._mlp_input(z, coords, context)))

    def thresholds(self, z: torch.Tensor, coords: torch.Tensor, context: torch.Tensor | None,
                   penalty: torch.Tensor | None = None) -> torch.Tensor:
        """t = ω·t₀·exp(MLP[z, c(, context)]) [R, n_f] of shrink mode (ω = 1 without a penalty)."""
        log_multiplier = self.mlp(self._mlp_input(z, coords, context)).clamp(-MAX_LOG_THRESHOLD, MAX_LOG_THRESHOLD)
        thresholds = self.threshold_scale * log_multiplier.exp()
        return thresholds if penalty is None else penalty * thresholds

    def forward(self, z: torch.Tensor, basis: torch.Tensor, context: torch.Tensor | None = None,
                penalty: torch.Tensor | None = None) -> torch.Tensor:
        """W = f_w(z) [R, n_f] for z [R, d] and the factor basis V = ``basis`` [d, n_f] (``penalty`` ω [R, n_f]:
        the weights of the weighted LASSO, shrink mode only)."""
        self._check(z, basis, context)
        self._check_penalty(z, penalty)
        if self.mode == "free":
            return self.mlp(self._mlp_input(z, None, context))
        coords = z @ basis                                              # c = zV [R, n_f]
        if self.mode == "shrink":                                       # soft threshold: the LASSO form of Eq. 2
            return coords.sign() * torch.relu(coords.abs() - self.thresholds(z, coords, context, penalty))
        return torch.sigmoid(self.mlp(self._mlp_input(z, coords, context))) * coords


def calibrate(z: torch.Tensor, basis: torch.Tensor, weight_net: WeightNet,
              context: torch.Tensor | None = None) -> torch.Tensor:
    """The calibrated representation ẑ = f_w(z) Vᵀ [R, d] (D-TC-01, the paper's question (iii))."""
    return weight_net(z, basis, context) @ basis.T
