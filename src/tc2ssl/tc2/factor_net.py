"""The factor extraction network f_v : ℝ^{(d+1)×d} → ℝ^{d×n_f} (D-TC-18, D-TC-18).

The paper gives no architecture. Here f_v is a column-wise shared MLP on Sᵀ with an orthonormal residual base:
row j of Sᵀ is (μ_j, Σ[:, j]), the statistics of feature j, and the MLP maps it to the loadings of feature j on the
n_f factors. V = V0 + MLP(LayerNorm(Sᵀ)), with V0 orthonormal and the MLP's last layer zero-initialised, so
V = V0 at init and the orthogonality term of Eq. 1 starts at 0. No hard orthonormalisation (QR/polar) is applied:
it would make that term vacuous. The minimiser of Eq. 1 for a fixed batch is the orthonormal basis of the top-n_f
eigenvectors of Z_fᵀZ_f (a batch-adaptive PCA), which is what the tests check f_v can learn.

Step-size invariance (our departure from D-TC-18, see docs/tc2.md): the MLP is shared by all d rows, so the
gradient on its weights is a sum over d rows and a plain SGD step of size α moves V by O(d·α) — with d = 64 the
spec's α = 1e-2 diverged within three steps. The MLP output is therefore scaled by 1/√d (and its input rows are
LayerNorm-ed), which makes the change of V per SGD step independent of d, like a per-row step; V0 is a plain
per-entry parameter and needs no scaling.

``mode="subspace"`` (``plugin.factor_mode=subspace``): the MLP output B = V0 + MLP(S)/√d is the start of a few steps
of subspace iteration on the batch's uncentred second moment M = Σ + μμᵀ (read from S), Q = orth(M^q B), and V is
B projected onto span(Q) and orthonormalised column by column, V = orth(QQᵀB) (QR, differentiable). So
span(V) follows each batch's top-n_f subspace while the orientation of the columns inside it (which factor is
"factor r", what the gates of f_w refer to) is learned and persists across batches. V is orthonormal by
construction: the orthogonality term of Eq. 1 is then 0 and only the reconstruction term trains B.
"""
from __future__ import annotations

import torch
from torch import nn

from tc2ssl.errors import ConfigError

FACTOR_MODES = ("mlp", "subspace")


def orthonormal_columns(matrix: torch.Tensor) -> torch.Tensor:
    """Q of the reduced QR of ``matrix`` [d, n], columns signed so that diag(R) >= 0 (a unique, differentiable Q)."""
    q, r = torch.linalg.qr(matrix)
    signs = torch.where(torch.diagonal(r) < 0, -1.0, 1.0).to(q.dtype)
    return q * signs


class FactorNet(nn.Module):
    """f_v: statistics matrix S [(d+1), d] -> factor matrix V [d, n_f] (columns are the factor basis vectors).

    Args:
        dim: d, the dimension of the representation at the calibration point.
        n_factors: n_f <= d, the number of factors.
        hidden: width of the MLP; the width used is max(hidden, n_factors) (D-TC-18: h = max(64, n_f)).
        mode: ``"mlp"`` (V = V0 + MLP(S)/√d, the paper's learned map) or ``"subspace"`` (that as the start of
            ``power_steps`` subspace iterations on M = Σ + μμᵀ, see the module docstring).
    """

    def __init__(self, dim: int, n_factors: int, hidden: int = 64, mode: str = "mlp", power_steps: int = 4):
        super().__init__()
        if dim < 1 or n_factors < 1 or hidden < 1:
            raise ConfigError(f"FactorNet needs dim, n_factors, hidden >= 1, got {dim}, {n_factors}, {hidden}")
        if mode not in FACTOR_MODES:
            raise ConfigError(f"plugin.factor_mode must be one of {FACTOR_MODES}, got {mode!r}")
        if power_steps < 1 and mode == "subspace":
            raise ConfigError(f"plugin.factor_power_steps must be >= 1 with factor_mode=subspace, got {power_steps}")
        self.mode = mode
        self.power_steps = power_steps
        if n_factors > dim:
            raise ConfigError(f"n_factors={n_factors} exceeds the representation dimension {dim}: VᵀV then has "
                              f"rank <= {dim} and the orthogonality term of Eq. 1 cannot reach 0")
        self.dim = dim
        self.n_factors = n_factors
        self.base = nn.Parameter(nn.init.orthogonal_(torch.empty(dim, n_factors)))   # V0, V0ᵀV0 = I
        width = max(hidden, n_factors)
        self.norm = nn.LayerNorm(dim + 1)
        self.mlp = nn.Sequential(nn.Linear(dim + 1, width), nn.GELU(), nn.Linear(width, n_factors))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)
        self.output_scale = dim ** -0.5

    @torch.no_grad()
    def init_base_from(self, zf: torch.Tensor) -> None:
        """V0 ← the top-n_f right singular vectors of Z_f [R, d] (eigenvectors of Z_fᵀZ_f): with the MLP's zero
        output at init, V = V0 is then the minimiser of Eq. 1 for this batch (``plugin.factor_init=pca``)."""
        if zf.dim() != 2 or zf.shape[1] != self.dim:
            raise ValueError(f"Z_f must be [rows, d] = [R, {self.dim}], got shape {tuple(zf.shape)}")
        top = torch.linalg.svd(zf.to(self.base.dtype), full_matrices=False).Vh[: self.n_factors].T   # [d, ≤ n_f]
        if top.shape[1] < self.n_factors:      # fewer rows than factors: complete with an orthonormal rest
            rest = torch.linalg.qr(torch.cat([top, self.base], dim=1)).Q[:, top.shape[1]: self.n_factors]
            top = torch.cat([top, rest], dim=1)
        self.base.copy_(top)

    def forward(self, stats: torch.Tensor) -> torch.Tensor:
        """V = V0 + MLP(LayerNorm(Sᵀ))/√d [d, n_f] for S = ``stats`` [(d+1), d]."""
        if stats.shape != (self.dim + 1, self.dim):
            raise ValueError(f"S must be [(d+1), d] = [{self.dim + 1}, {self.dim}], got shape {tuple(stats.shape)}")
        per_feature = stats.T.to(self.base.dtype)              # [d, d+1]: row j = (μ_j, Σ[:, j])
        start = self.base + self.output_scale * self.mlp(self.norm(per_feature))
        if self.mode == "mlp":
            return start
        mean, covariance = per_feature[:, 0], per_feature[:, 1:]
        second_moment = covariance + torch.outer(mean, mean)                   # M = Z_fᵀZ_f / R
        second_moment = second_moment / second_moment.diagonal().sum().clamp_min(1e-12)
        subspace = orthonormal_columns(start)
        for _ in range(self.power_steps):                                      # Q ← orth(M Q)
            subspace = orthonormal_columns(second_moment @ subspace)
        return orthonormal_columns(subspace @ (subspace.T @ start))           # B projected on span(Q), orthonormal
