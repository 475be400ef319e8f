"""Barlow Twins (Zbontar et al., 2021, "Barlow Twins: Self-Supervised Learning via Redundancy Reduction").

Head: lightly's ``BarlowTwinsProjectionHead`` (3-layer MLP); its output is the calibration point (D-TC-07).
Loss (D-SSL-02, Barlow Twins Eq. 1): C = BN(z_a)ᵀBN(z_b)/n, Σ_i(1 − C_ii)² + λ Σ_{i≠j} C_ij², lightly's
``BarlowTwinsLoss`` with λ = ``cfg.lambda_bt`` (0 = 1/d); for v > 2 views, the mean over the view pairs u < w.
BN standardises dimensions, not rows, so the loss is not invariant to ℓ2-normalising z: ``cosine_based`` is False
(TC² does not ℓ2-normalise z).

Query loss (D-TC-12): the native loss between BN(query view v) and BN(anchors), averaged over the query views,
with the anchors c_i = mean_u ẑ_{i,u} of the support views (stop-gradient, not normalised: BN standardises them).
"""
from __future__ import annotations

import torch
from lightly.loss import BarlowTwinsLoss
from lightly.models.modules import BarlowTwinsProjectionHead

from tc2ssl.methods.base import METHODS, LossContext, WhiteningMethod, check_anchors


@METHODS.register("barlow_twins")
class BarlowTwins(WhiteningMethod):
    name = "barlow_twins"

    def __init__(self, backbone, cfg):
        super().__init__(backbone, cfg)
        self.projector = BarlowTwinsProjectionHead(backbone.feat_dim, cfg.proj_hidden_dim, cfg.proj_output_dim)
        self.criterion = BarlowTwinsLoss(lambda_param=cfg.lambda_bt or 1.0 / cfg.proj_output_dim)

    def query_loss(self, z_query: torch.Tensor, anchors: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        check_anchors(anchors, z_query)
        anchors = anchors.detach()
        return torch.stack([self.criterion(z_query[:, v], anchors) for v in range(z_query.shape[1])]).mean()
