"""``plugin.name=umm``: UMM, the Undoing Memorization Mechanism, on any method of the zoo (docs/umm.md).

The backbone is split by layer name (``plugin.umm.early``, default the ``early`` tap: small_cnn block2, ResNet
layer2): the early part f_e is frozen (weights and BatchNorm statistics: :meth:`Plugin.freeze`), the late part
f_{e-l} and the method's heads (projection head, predictor, prototypes, MAE's decoder) are tuned.

Per step, on two augmented views of every image:

1. H_e = f_e(views) under no_grad (frozen; eval-mode BatchNorm);
2. the hypergradient of the bi-level problem (:mod:`tc2ssl.umm.bilevel`): inner objective L_ssl + β·JS(p ‖ u), p
   from the per-sample gradient norms at H_e; outer objective L_ssl − λ·ΔR(z | instances) on the projection-head
   outputs; one inner SGD step of size α and the DARTS finite-difference Hessian term;
3. the gradient is written to ``.grad`` of the tuned parameters; the loop's optimiser steps them.

(An alternative one-level reading, a k-means prior with a ridge alignment, was built, measured worse, and removed:
docs/umm.md.)

When UMM runs (``interleave_every``): 0 = post hoc — ``tc2ssl posthoc RUN_DIR plugin.name=umm`` (or ``tc2ssl umm
RUN_DIR``) fine-tunes a finished run with f_e frozen for the whole fit; k > 0 = during pretraining, every k-th epoch
is a UMM epoch (f_e held fixed, in eval mode, for that epoch's steps) and the others are plain SSL steps of the
whole encoder.

The SSL loss is the method's own two-view loss (``baseline_loss``) with ``update_state=False``: memory banks and
queues are read, not refreshed, during UMM steps (the finite-difference probes must see the same loss).
"""
from __future__ import annotations

import contextlib
import itertools

import torch
import torch.nn as nn

from tc2ssl.data.tasks import make_masks
from tc2ssl.errors import ConfigError
from tc2ssl.meta.functional import assign_grads, functional_forward
from tc2ssl.methods.base import LossContext, sub_params
from tc2ssl.plugins.base import PLUGINS, Plugin, StepInfo
from tc2ssl.umm.bilevel import BilevelSettings, UMMObjectives, bilevel_step


@contextlib.contextmanager
def eval_mode(module: nn.Module):
    """``module`` in eval mode inside the block, its previous mode restored afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


class LateEncoder:
    """The tuned part of a method as a function of parameter dicts named like the method's parameters: the late
    backbone layers (``rest`` of ``Backbone.split``, without its final pooling for MAE) and the projection head."""

    def __init__(self, method: nn.Module, rest: nn.Module, tokens: bool):
        self.method = method
        self.rest = nn.Sequential(*list(rest)[:-1]) if tokens else rest      # MAE: token latents, no pooling
        self.tokens = tokens
        name_of = {id(t): n for n, t in itertools.chain(method.named_parameters(), method.named_buffers())}
        self.rest_names = {local: name_of[id(t)]
                           for local, t in itertools.chain(self.rest.named_parameters(), self.rest.named_buffers())}

    def __call__(self, params: dict, buffers: dict | None, early: torch.Tensor) -> torch.Tensor:
        tensors = {**params, **(buffers or {})}
        local = {k: tensors[name] for k, name in self.rest_names.items() if name in tensors}
        features = functional_forward(self.rest, local, (early,))
        if self.tokens:
            return features                                                  # [B, T, d] MAE latents
        head = sub_params(tensors, "projector")
        return functional_forward(self.method.projector, head, (features,)) if head else self.method.projector(
            features)


@PLUGINS.register("umm")
class UMM(Plugin):
    n_views = 2
    config_block = "umm"

    @classmethod
    def check_config(cls, cfg) -> None:
        block = cfg.plugin.umm
        if block.interleave_every == 0 and not cfg.train.init_from:
            raise ConfigError("plugin.name=umm fine-tunes a pretrained encoder: start it from a finished run with "
                              "`tc2ssl posthoc RUN_DIR plugin.name=umm` (or `tc2ssl umm RUN_DIR`), or set "
                              "plugin.umm.interleave_every=K (>= 1) to interleave it with pretraining")

    def __init__(self, cfg, method, view_maker):
        super().__init__(cfg, method, view_maker)
        self.settings = BilevelSettings(beta=self.block.beta, lam=self.block.lam, eps2=self.block.eps2,
                                        gamma=self.block.gamma, inner_lr=self.block.inner_lr,
                                        mode=self.block.hypergradient, fd_radius=self.block.fd_radius)
        self.generative = bool(getattr(method, "generative", False))
        object.__setattr__(self, "early", None)
        object.__setattr__(self, "late", None)
        self.early_names: set[str] = set()

    # ------------------------------------------------------------------ split and freeze
    def on_fit_start(self, run) -> None:
        early, rest = self.method.backbone.split(at=self.block.early)
        if not any(True for _ in rest.parameters()):
            raise ConfigError(f"plugin.umm.early={self.block.early} leaves no backbone layer to tune; choose an "
                              f"earlier tap of {', '.join(self.method.backbone.tap_names[:-1])}")
        object.__setattr__(self, "early", early)
        object.__setattr__(self, "late", LateEncoder(self.method, rest, tokens=self.generative))
        early_ids = {id(p) for p in early.parameters()}
        self.early_names = {n for n, p in self.method.named_parameters() if id(p) in early_ids}
        if self.block.interleave_every == 0:
            self.freeze(early)                  # post hoc: f_e fixed (weights and BN statistics) for the whole fit

    def is_umm_epoch(self, epoch: int) -> bool:
        every = self.block.interleave_every
        return every == 0 or (epoch + 1) % every == 0

    def tuned_parameters(self) -> dict[str, torch.Tensor]:
        """θ: the method's online parameters outside f_e (late layers and heads)."""
        return {n: p for n, p in self.method.online_parameters().items() if n not in self.early_names}

    # ------------------------------------------------------------------ the step
    def training_step(self, images: torch.Tensor, info: StepInfo) -> dict[str, torch.Tensor]:
        views = self.augmented_views(images, 2, info.seed)
        if not self.is_umm_epoch(info.epoch):
            loss, _ = self.method.training_loss(views)                      # interleaved: a plain SSL step
            self.backward(loss)
            return {"loss": loss.detach()}
        n = views.shape[0]
        if self.generative:
            generator = torch.Generator().manual_seed(info.seed ^ 0x3A5C)
            n_patches = self.method.backbone.grid_size(views.flatten(0, 1)) ** 2
            masks = make_masks(n, 2, n_patches, self.method.cfg.mask_ratio, generator).to(views.device)
        with torch.no_grad(), eval_mode(self.early):
            early = self._early_features(views, masks if self.generative else None)     # H_e [2N, ...]
        return self._bilevel_step(views, early, masks if self.generative else None)

    def _early_features(self, views: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
        x = views.flatten(0, 1)
        if masks is None:
            return self.early(x)
        from lightly.models.utils import get_at_index

        from tc2ssl.models.backbones import visible_index

        tokens = self.early[0](x)                                            # patch tokens with positions
        tokens = get_at_index(tokens, visible_index(masks.flatten(0, 1)))     # the visible patches only
        for block in list(self.early)[1:]:
            tokens = block(tokens)
        return tokens

    def _ssl_loss_fn(self, views: torch.Tensor, masks: torch.Tensor | None):
        method = self.method
        if masks is None:
            def ssl_loss(z: torch.Tensor, params: dict) -> torch.Tensor:
                return method.baseline_loss(z, LossContext(params=params, views=views, update_state=False))
            return ssl_loss
        from tc2ssl.methods.mae import MaskedViews

        masked = MaskedViews(views, masks)
        targets = method.targets(views.flatten(0, 1)).unflatten(0, tuple(views.shape[:2]))

        def reconstruction_loss(z: torch.Tensor, params: dict) -> torch.Tensor:
            return method.view_errors(z, masked, targets, params).mean()
        return reconstruction_loss

    def _bilevel_step(self, views: torch.Tensor, early: torch.Tensor, masks: torch.Tensor | None) -> dict:
        objectives = UMMObjectives(self.late, self._ssl_loss_fn(views, masks), early, 2, self.settings,
                                   rate_rows=(lambda z: z.mean(dim=1)) if masks is not None else None)
        result = bilevel_step(objectives, self.tuned_parameters(), self.method)
        assign_grads(self.method, result.grads)
        last = objectives.last
        return {"loss": result.outer_loss, "umm/inner_loss": result.inner_losses[0], "umm/js": last["js"],
                "umm/dR_instance": last["dR_instance"], "umm/ssl": last["outer_ssl"]}

