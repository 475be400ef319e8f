"""SimSiam (Chen & He, 2021, "Exploring Simple Siamese Representation Learning").

Heads: lightly's ``SimSiamProjectionHead`` (its output is the calibration point, D-TC-07) and
``SimSiamPredictionHead``, applied *after* calibration with the functional parameters ``ctx.params``.

Loss (D-SSL-02, SimSiam Eq. 2): ½D(p_a, sg z_b) + ½D(p_b, sg z_a) with D = −cos, i.e. lightly's
``NegativeCosineSimilarity`` averaged over both directions; for v > 2 views, the mean over the ordered view pairs
u ≠ w. The stop-gradient branch is the (calibrated) online ẑ itself, so no view images are needed.

Query loss (D-TC-12): mean ‖n(p(ẑ_q)) − sg(n(c_i))‖², with the default anchors c_i = n(mean_u ẑ_{i,u}) of the
support views under stop-gradient.
"""
from __future__ import annotations

import torch
from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead

from tc2ssl.methods.base import METHODS, LossContext, SSLMethod, check_views
from tc2ssl.methods.byol import cross_view_cosine
from tc2ssl.tc2.losses import proto_mse_loss


@METHODS.register("simsiam")
class SimSiam(SSLMethod):
    name = "simsiam"
    cosine_based = True
    min_support_views = 2

    def __init__(self, backbone, cfg):
        super().__init__(backbone, cfg)
        self.projector = SimSiamProjectionHead(backbone.feat_dim, cfg.proj_hidden_dim, cfg.proj_output_dim)
        self.predictor = SimSiamPredictionHead(cfg.proj_output_dim, cfg.pred_hidden_dim, cfg.proj_output_dim)

    def predict(self, z: torch.Tensor, params: dict | None) -> torch.Tensor:
        """p(ẑ) [n, v, d] for ẑ [n, v, d], with the functional predictor parameters when given."""
        n, v, _ = z.shape
        return self.call_child("predictor", z.flatten(0, 1), params).view(n, v, -1)

    def support_loss(self, z: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        check_views(z, 2)
        return -cross_view_cosine(self.predict(z, ctx.params), z.detach())

    def query_loss(self, z_query: torch.Tensor, anchors: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        check_views(z_query, 1, "z_query")
        return proto_mse_loss(self.predict(z_query, ctx.params), anchors.detach())
