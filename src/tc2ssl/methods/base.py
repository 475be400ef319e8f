"""The SSL-method contract (D-SSL-02, D-TC-12), solo-learn style: a method is a head, a loss and a few hooks.

A method owns the backbone and its heads. Everything a plug-in needs is a hook:

- ``embed(x, params)``: the representation at the **calibration point** z (projector output, before any predictor),
  functional when ``params`` (a dict named as in ``self.named_parameters()``) is given, so that the bi-level engine
  can evaluate adapted parameters θ^k without touching the module.
- ``support_loss(z, ctx)``: the method's own loss over the views of each image, ``z`` [n, v, d] (v >= 2). With
  ``ctx.calibrate`` set, ``z`` has already been calibrated (TC²); methods with a target branch calibrate their
  target embeddings with the same function.
- ``anchors(z_support, ctx)``: per-image anchors [n, d] from the support views (stop-gradient), for the query loss.
- ``query_loss(z_query, anchors, ctx)``: L_sse^q of Eq. 5/7, "the sum of squared errors on the query set" (D-TC-12).
- ``after_step(progress)``: momentum updates and the like, once per outer step.

The plain baseline trains with ``training_loss(views)`` on two views per image.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from tc2ssl.meta.functional import functional_forward
from tc2ssl.models.backbones import Backbone
from tc2ssl.registry import Registry

METHODS: Registry[type] = Registry("SSL method", "method.name")


def _identity(z: torch.Tensor) -> torch.Tensor:
    return z


@dataclass
class LossContext:
    """What a loss hook may need besides the embeddings.

    params:    functional parameters (θ or θ^k) for heads applied after calibration (e.g. BYOL's predictor);
               None = the module's own parameters.
    views:     the raw input views [n, v, C, H, W] the embeddings came from (for target branches).
    calibrate: z -> ẑ at the calibration point (identity when calibration is off).
    update_state: whether the loss may update method state (memory banks, queues); False for diagnostic
               re-evaluations and for the inner/outer passes of a bi-level step.
    """

    params: dict[str, torch.Tensor] | None = None
    views: torch.Tensor | None = None
    calibrate: Callable[[torch.Tensor], torch.Tensor] = field(default=_identity)
    update_state: bool = False


def sub_params(params: dict[str, torch.Tensor] | None, prefix: str) -> dict[str, torch.Tensor] | None:
    """The entries of ``params`` under ``prefix.`` with the prefix stripped (for functional_call on a child)."""
    if params is None:
        return None
    p = prefix + "."
    return {k[len(p):]: v for k, v in params.items() if k.startswith(p)}


class SSLMethod(nn.Module):
    """Base class of all SSL methods. Subclasses set ``projector`` (and optional heads) and the loss hooks."""

    name: str = "base"
    #: cosine-based losses are invariant to the norm of z: TC²'s input_norm="auto" ℓ2-normalises z for them
    cosine_based: bool = True
    #: the smallest support set the support loss accepts (2 for pair losses, 1 for MAE)
    min_support_views: int = 2
    #: generative (masked-reconstruction) methods build TC² tasks from masks: see ``task_views`` (D-TC-28)
    generative: bool = False
    #: the loss whitens a d-dim embedding over the images it sees (Barlow Twins' cross-correlation, VICReg's
    #: covariance): rank <= images, so a TC² task of n <= d images cannot reach its optimum (docs/results.md §5)
    needs_more_images_than_dims: bool = False
    #: support_loss and query_loss are means of per-view terms, each depending on one view (and its own image's
    #: anchor) only, with equal weight per view: the mean of K equal-size tasks' losses is then the loss of all
    #: their rows in one call, which TC²'s stage 1 uses (one decoder call per objective instead of K for MAE)
    per_view_losses: bool = False

    def __init__(self, backbone: Backbone, cfg):
        super().__init__()
        self.backbone = backbone
        self.cfg = cfg

    # ---------------------------------------------------------------- representation
    @property
    def embed_dim(self) -> int:
        return self.cfg.proj_output_dim

    def call_child(self, child: str, x: torch.Tensor, params: dict | None = None) -> torch.Tensor:
        """Apply the child module ``child`` to x, with functional parameters when given."""
        module = getattr(self, child)
        sub = sub_params(params, child)
        if not sub:
            return module(x)
        return functional_forward(module, sub, (x,))

    def embed(self, x: torch.Tensor, params: dict | None = None) -> torch.Tensor:
        """z at the calibration point: projector(backbone(x)) [B, d]."""
        return self.call_child("projector", self.call_child("backbone", x, params), params)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)

    def online_parameters(self) -> dict[str, torch.Tensor]:
        """θ: every trainable parameter of the online network (target networks are excluded: no grad)."""
        return {k: p for k, p in self.named_parameters() if p.requires_grad}

    def backbone_parameter_names(self) -> list[str]:
        return [k for k in self.online_parameters() if k.startswith("backbone.")]

    # ---------------------------------------------------------------- losses (hooks)
    def support_loss(self, z: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        raise NotImplementedError

    def anchors(self, z_support: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        """Default anchor: c_i = n(mean_u ẑ_{i,u}) under stop-gradient (D-TC-12)."""
        return F.normalize(z_support.detach().mean(dim=1), dim=-1)

    def query_loss(self, z_query: torch.Tensor, anchors: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        raise NotImplementedError

    def native_query_loss(self, z_query: torch.Tensor, z_support: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        """``plugin.query_loss=native``: the method's own loss over support and query views together."""
        return self.support_loss(torch.cat([z_support.detach(), z_query], dim=1), ctx)

    def training_loss(self, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The plain baseline: ``views`` [N, 2, C, H, W] -> (loss, z [N, 2, d])."""
        n, v = views.shape[:2]
        z = self.embed(views.flatten(0, 1)).view(n, v, -1)
        return self.baseline_loss(z, LossContext(views=views, update_state=True)), z

    def baseline_loss(self, z: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        """The baseline's loss on [N, 2, d] embeddings (default: the support loss)."""
        return self.support_loss(z, ctx)

    def after_step(self, progress: float) -> None:
        """Called once after every outer optimiser step; ``progress`` in [0, 1] is the fraction of training done."""


class WhiteningMethod(SSLMethod):
    """Base of the methods whose loss whitens the embedding over the batch (Barlow Twins, VICReg): the loss depends
    on the scale of z, a task needs more images than dimensions, the support loss is the mean over view pairs of
    ``self.criterion`` and the anchors are the plain (unnormalised) means of the support embeddings."""

    cosine_based = False
    needs_more_images_than_dims = True
    min_support_views = 2

    def support_loss(self, z: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        return mean_over_view_pairs(self.criterion, z)

    def anchors(self, z_support: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        """c_i = mean_u ẑ_{i,u} under stop-gradient (no ℓ2 normalisation: the loss depends on the scale)."""
        check_views(z_support, 1, "z_support")
        return z_support.detach().mean(dim=1)


def check_views(z: torch.Tensor, min_views: int = 2, name: str = "z") -> None:
    if z.dim() != 3:
        raise ValueError(f"{name} must be [n_images, n_views, dim], got shape {tuple(z.shape)}")
    if z.shape[1] < min_views:
        raise ValueError(f"{name} needs at least {min_views} views per image, got {z.shape[1]}")
    if z.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 images, got {z.shape[0]}")


def check_anchors(anchors: torch.Tensor, z_query: torch.Tensor) -> None:
    """A query loss's anchors: one [d] vector per image of z_query [n, q, d]."""
    check_views(z_query, 1, "z_query")
    if anchors.shape != (z_query.shape[0], z_query.shape[2]):
        raise ValueError(f"anchors must be [n, d] = {(z_query.shape[0], z_query.shape[2])}, "
                         f"got {tuple(anchors.shape)}")


def mean_over_view_pairs(pair_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                         z: torch.Tensor) -> torch.Tensor:
    """A two-view loss extended to m views (D-SSL-02, multi-view generalisation): its mean over the m(m−1)/2 pairs
    of views of z [n, m, d]."""
    check_views(z, 2)
    pairs = [pair_loss(z[:, u], z[:, w]) for u, w in itertools.combinations(range(z.shape[1]), 2)]
    return torch.stack(pairs).mean()


def build_method(cfg, backbone: Backbone) -> SSLMethod:
    return METHODS.get(cfg.name)(backbone, cfg)
