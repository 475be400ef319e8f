"""BYOL (Grill et al., 2020, "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning").

Heads: lightly's ``BYOLProjectionHead`` (its output is the calibration point, D-TC-07) and
``BYOLPredictionHead``, which is applied *after* calibration with the functional parameters ``ctx.params`` so that
an adapted θ^k reaches it. Target: an EMA copy of backbone + projector (:class:`TargetNetwork`), never adapted by an
inner step and updated once per outer step in ``after_step``, its momentum cosine-scheduled from ``cfg.momentum``
to 1 (D-TC-22).

Loss (D-SSL-02): ‖n(q(ẑ_u)) − sg(n(ẑ′_w))‖² = 2 − 2cos, averaged over the ordered view pairs u ≠ w (for two
views: the symmetric loss averaged over both directions, i.e. 2 + 2·lightly's ``NegativeCosineSimilarity``).
ẑ′ is the target network's embedding of ``ctx.views`` passed through ``ctx.calibrate`` (the same V and f_w, under
stop-gradient). Without views (stage 1 of TC² works on fixed embeddings) the stop-gradient of the online ẑ stands
in for the target.

Query loss (D-TC-12): mean ‖n(q(ẑ_q)) − sg(n(c_i^tgt))‖², with c_i^tgt the normalised mean of the calibrated
target embeddings of image i's support views.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule

from tc2ssl.meta.functional import functional_forward
from tc2ssl.methods.base import METHODS, LossContext, SSLMethod, check_views
from tc2ssl.tc2.losses import proto_mse_loss


def momentum_at(progress: float, base: float) -> float:
    """The EMA momentum at ``progress`` ∈ [0, 1] of training: a half cosine from ``base`` to 1 (BYOL §3.2)."""
    # with max_steps=2, lightly's schedule evaluates its cosine at step / (max_steps - 1) = progress
    return cosine_schedule(min(max(progress, 0.0), 1.0), 2, base, 1.0)


def cross_view_cosine(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """mean over images i and ordered view pairs u ≠ w of cos(p_{i,u}, t_{i,w}); both [n, v, d]."""
    cos = torch.einsum("iud,iwd->iuw", F.normalize(predictions, dim=-1), F.normalize(targets, dim=-1))
    other_view = ~torch.eye(cos.shape[1], dtype=torch.bool, device=cos.device)
    return cos[:, other_view].mean()


class TargetNetwork(nn.Module):
    """The momentum (EMA) copy of an online backbone + projector (BYOL, MoCo); it never receives gradients."""

    def __init__(self, backbone: nn.Module, projector: nn.Module):
        super().__init__()
        self.backbone = copy.deepcopy(backbone)
        self.projector = copy.deepcopy(projector)
        deactivate_requires_grad(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))

    @torch.no_grad()
    def embed_views(self, views: torch.Tensor, update_stats: bool = False) -> torch.Tensor:
        """z′ [n, v, d] of views [n, v, C, H, W]; BN running statistics change only when ``update_stats``."""
        n, v = views.shape[:2]
        x = views.flatten(0, 1)
        if update_stats:
            z = self(x)
        else:  # batch statistics as usual, but on copies of the running buffers
            z = functional_forward(self, {k: b.clone() for k, b in self.named_buffers()}, (x,))
        return z.view(n, v, -1)

    @torch.no_grad()
    def update(self, backbone: nn.Module, projector: nn.Module, momentum: float) -> None:
        """target ← m·target + (1 − m)·online, parameter by parameter."""
        update_momentum(backbone, self.backbone, momentum)
        update_momentum(projector, self.projector, momentum)


def target_embeddings(target: TargetNetwork, z: torch.Tensor, ctx: LossContext) -> torch.Tensor:
    """sg(ẑ′) [n, v, d]: ``ctx.calibrate`` of the target network's embedding of ``ctx.views``, which must be the
    views ``z`` [n, v, d] came from; without views, the stop-gradient of ``z`` itself."""
    if ctx.views is None:
        return z.detach()
    if tuple(ctx.views.shape[:2]) != tuple(z.shape[:2]):
        raise ValueError(f"ctx.views holds {tuple(ctx.views.shape[:2])} (images, views) but the embeddings "
                         f"hold {tuple(z.shape[:2])}: the target branch needs the views the embeddings came from")
    target_z = target.embed_views(ctx.views, update_stats=ctx.update_state)
    with torch.no_grad():
        return ctx.calibrate(target_z)                                   # [n, v, d]: the calibration sees the views


@METHODS.register("byol")
class BYOL(SSLMethod):
    name = "byol"
    cosine_based = True
    min_support_views = 2

    def __init__(self, backbone, cfg):
        super().__init__(backbone, cfg)
        self.projector = BYOLProjectionHead(backbone.feat_dim, cfg.proj_hidden_dim, cfg.proj_output_dim)
        self.predictor = BYOLPredictionHead(cfg.proj_output_dim, cfg.pred_hidden_dim, cfg.proj_output_dim)
        self.target = TargetNetwork(self.backbone, self.projector)

    def predict(self, z: torch.Tensor, params: dict | None) -> torch.Tensor:
        """q(ẑ) [n, v, d] for ẑ [n, v, d], with the functional predictor parameters when given."""
        n, v, _ = z.shape
        return self.call_child("predictor", z.flatten(0, 1), params).view(n, v, -1)

    def support_loss(self, z: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        check_views(z, 2)
        targets = target_embeddings(self.target, z, ctx)
        return 2 - 2 * cross_view_cosine(self.predict(z, ctx.params), targets)  # ‖n(p) − n(t)‖² = 2 − 2cos

    def anchors(self, z_support: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        """c_i^tgt = n(mean_u ẑ′_{i,u}) over the calibrated target embeddings of the support views (D-TC-12)."""
        check_views(z_support, 1, "z_support")
        return F.normalize(target_embeddings(self.target, z_support, ctx).mean(dim=1), dim=-1)

    def query_loss(self, z_query: torch.Tensor, anchors: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        check_views(z_query, 1, "z_query")
        return proto_mse_loss(self.predict(z_query, ctx.params), anchors.detach())

    def after_step(self, progress: float) -> None:
        self.target.update(self.backbone, self.projector, momentum_at(progress, self.cfg.momentum))
