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
"""
from __future__ import annotations

import torch
from torch import nn

from tc2ssl.errors import ConfigError


class FactorNet(nn.Module):
    """f_v: statistics matrix S [(d+1), d] -> factor matrix V [d, n_f] (columns are the factor basis vectors).

    Args:
        dim: d, the dimension of the representation at the calibration point.
        n_factors: n_f <= d, the number of factors.
        hidden: width of the MLP; the width used is max(hidden, n_factors) (D-TC-18: h = max(64, n_f)).
    """

    def __init__(self, dim: int, n_factors: int, hidden: int = 64):
        super().__init__()
        if dim < 1 or n_factors < 1 or hidden < 1:
            raise ConfigError(f"FactorNet needs dim, n_factors, hidden >= 1, got {dim}, {n_factors}, {hidden}")
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
        return self.base + self.output_scale * self.mlp(self.norm(per_feature))
