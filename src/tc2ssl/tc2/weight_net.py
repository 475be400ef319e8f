"""The weight extraction network f_w and the calibration ẑ = f_w(z) Vᵀ (D-TC-01, D-TC-01/02/03).

f_w maps a representation z_j to its factor weights W_j ∈ ℝ^{n_f}; the calibrated representation is ẑ_j = W_j Vᵀ,
a weighted combination of a few shared factors. (The paper's "W_j = f_w(z_j)Vᵀ" conflates the two; D-TC-01.)

Modes:

* ``"gated"`` (default): W = σ(MLP[z, c]) ⊙ c with c = zV, the coordinates of z on the factor basis. The weights
  follow the batch-dependent V, and for orthonormal V the per-sample optimum of Eq. 2 (soft-thresholding
  sign(c)·max(|c| − λ₁/2, 0)) is reachable with gates g = max(0, 1 − λ₁/(2|c|)) ∈ [0, 1]. With n_f = d and all
  gates open, ẑ = z exactly.
* ``"free"``: W = MLP(z), the literal f_w(z_j) of the paper (input z only).

``task_context=True`` appends the task mean z̄_k of each row's task to the MLP input (D-TC-03).
"""
from __future__ import annotations

import torch
from torch import nn

from tc2ssl.errors import ConfigError

WEIGHT_MODES = ("gated", "free")


class WeightNet(nn.Module):
    """f_w: (z [R, d], V [d, n_f]) -> factor weights W [R, n_f].

    Args:
        dim: d, the dimension of z.
        n_factors: n_f, the number of factors (columns of V).
        hidden: width of the MLP.
        mode: ``"gated"`` (W = σ(MLP[z, zV]) ⊙ zV) or ``"free"`` (W = MLP(z)).
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
        in_features = dim + (n_factors if mode == "gated" else 0) + (dim if task_context else 0)
        self.mlp = nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, n_factors))
        if mode == "gated":
            nn.init.constant_(self.mlp[-1].bias, gate_bias_init)

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

    def gates(self, z: torch.Tensor, basis: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """The gates σ(MLP[z, zV]) [R, n_f] of gated mode, each in (0, 1)."""
        if self.mode != "gated":
            raise ValueError(f"gates exist only in weight_mode='gated'; this WeightNet is {self.mode!r}")
        self._check(z, basis, context)
        return torch.sigmoid(self.mlp(self._mlp_input(z, z @ basis, context)))

    def forward(self, z: torch.Tensor, basis: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """W = f_w(z) [R, n_f] for z [R, d] and the factor basis V = ``basis`` [d, n_f]."""
        self._check(z, basis, context)
        if self.mode == "free":
            return self.mlp(self._mlp_input(z, None, context))
        coords = z @ basis                                              # c = zV [R, n_f]
        return torch.sigmoid(self.mlp(self._mlp_input(z, coords, context))) * coords


def calibrate(z: torch.Tensor, basis: torch.Tensor, weight_net: WeightNet,
              context: torch.Tensor | None = None) -> torch.Tensor:
    """The calibrated representation ẑ = f_w(z) Vᵀ [R, d] (D-TC-01, the paper's question (iii))."""
    return weight_net(z, basis, context) @ basis.T
