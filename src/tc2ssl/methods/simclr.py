"""SimCLR (Chen et al., 2020, "A Simple Framework for Contrastive Learning of Visual Representations").

Head: lightly's ``SimCLRProjectionHead`` (2-layer MLP with BN). Loss: NT-Xent with temperature τ — lightly's
``NTXentLoss`` for the two-view baseline; for TC²'s per-task support sets of m' >= 2 views, the multi-positive
generalisation (mean of the pairwise NT-Xent over view pairs, D-SSL-02), which equals lightly's loss for m' = 2
(tested). Query loss (D-TC-12): the Brier score of n-way prototype classification against the support anchors,
a squared error that keeps negatives so the outer step cannot collapse.
"""
from __future__ import annotations

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead

from tc2ssl.methods.base import METHODS, LossContext, SSLMethod, check_views
from tc2ssl.tc2.losses import brier_query_loss, nt_xent_multiview


@METHODS.register("simclr")
class SimCLR(SSLMethod):
    name = "simclr"
    cosine_based = True

    def __init__(self, backbone, cfg):
        super().__init__(backbone, cfg)
        self.projector = SimCLRProjectionHead(backbone.feat_dim, cfg.proj_hidden_dim, cfg.proj_output_dim)
        self.criterion = NTXentLoss(temperature=cfg.temperature)

    def baseline_loss(self, z: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        check_views(z, 2)
        if z.shape[1] == 2:
            return self.criterion(z[:, 0], z[:, 1])
        return nt_xent_multiview(z, self.cfg.temperature)

    def support_loss(self, z: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        check_views(z, 2)
        return nt_xent_multiview(z, self.cfg.temperature)

    def query_loss(self, z_query: torch.Tensor, anchors: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        return brier_query_loss(z_query, anchors, self.cfg.temperature)
