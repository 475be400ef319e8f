"""VICReg (Bardes et al., 2022, "VICReg: Variance-Invariance-Covariance Regularization for SSL").

Head: lightly has no VICReg head; as in lightly's VICReg example, ``BarlowTwinsProjectionHead`` (3-layer MLP).
Its output is the calibration point (D-TC-07). The loss depends on the scale of z, so ``cosine_based`` is
False (TC² does not ℓ2-normalise z).

Loss (VICReg Eq. 6): λ·s(z_a, z_b) + μ·½[v(z_a) + v(z_b)] + ν·[c(z_a) + c(z_b)], lightly's ``VICRegLoss`` with
(λ, μ, ν) = (``sim_coeff``, ``std_coeff``, ``cov_coeff``) = (25, 25, 1); s is the element-wise MSE,
v(z) = mean_j ReLU(1 − √(Var z_j + 1e-4)), c(z) = (1/d)Σ_{i≠j} Cov(z)_ij². The variance term is halved as in the
authors' code and lightly (the paper writes it without the ½). For v > 2 views, the mean over the view pairs u < w.

Query loss (D-TC-12): λ·mean‖ẑ_q − c_i‖² + μ·v(ẑ_q) + ν·c(ẑ_q), with the anchors c_i = mean_u ẑ_{i,u} of the
support views (stop-gradient, not normalised: the loss is scale-dependent). The squared error is averaged over
query rows and dimensions, like the native invariance term; v and c are taken over all query rows of the task.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.loss import VICRegLoss
from lightly.loss.vicreg_loss import covariance_loss, variance_loss
from lightly.models.modules import BarlowTwinsProjectionHead

from tc2ssl.methods.base import METHODS, LossContext, WhiteningMethod, check_anchors


@METHODS.register("vicreg")
class VICReg(WhiteningMethod):
    name = "vicreg"

    def __init__(self, backbone, cfg):
        super().__init__(backbone, cfg)
        self.projector = BarlowTwinsProjectionHead(backbone.feat_dim, cfg.proj_hidden_dim, cfg.proj_output_dim)
        self.criterion = VICRegLoss(lambda_param=cfg.sim_coeff, mu_param=cfg.std_coeff, nu_param=cfg.cov_coeff)

    def query_loss(self, z_query: torch.Tensor, anchors: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        check_anchors(anchors, z_query)
        rows = z_query.flatten(0, 1)
        invariance = F.mse_loss(z_query, anchors.detach()[:, None].expand_as(z_query))
        return (self.cfg.sim_coeff * invariance + self.cfg.std_coeff * variance_loss(rows)
                + self.cfg.cov_coeff * covariance_loss(rows))
