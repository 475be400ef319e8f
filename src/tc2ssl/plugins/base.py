"""The plug-in contract: a plug-in turns one batch of images into gradients on the method's online parameters.

The training loop owns the outer optimiser (β₂ of Eq. 7 is "whatever optimiser the baseline uses"). Per step it
zeroes the gradients, calls ``training_step`` (which leaves ``.grad`` set on ``method.online_parameters()``,
and may update the plug-in's own networks, e.g. TC²'s f_v and f_w in stage 1), then steps the optimiser and calls
``method.after_step``. A plug-in is an ``nn.Module`` so that its own networks are checkpointed with the run.

Under ``train.precision=16-mixed`` the loop sets ``loss_scaler`` (a ``torch.amp.GradScaler``); a plug-in that
back-propagates a loss does so with :meth:`Plugin.backward`, which scales it, and the loop unscales the gradients
before clipping and the optimiser step. Plug-ins whose gradients are functional (TC², +T: ``torch.autograd.grad``
and ``assign_grads``) cannot be scaled that way, and config validation rejects 16-mixed for them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from tc2ssl.distributed import SINGLE_PROCESS, DistributedContext
from tc2ssl.precision import channels_last_views, float32_region
from tc2ssl.registry import Registry

PLUGINS: Registry[Callable] = Registry("plug-in", "plugin.name")


@dataclass
class StepInfo:
    epoch: int
    step: int  # global step, 0-based
    seed: int  # the step's seed: views, task split and masks all derive from it


class Plugin(nn.Module):
    #: views per image the plug-in needs from the augmentation
    n_views: int = 2
    #: the processes a step is spread over (set by the training loop when train.devices > 1); a plug-in takes
    #: the whole batch in ``training_step`` and works on this process's share of it (tc2ssl.distributed)
    distributed: DistributedContext = SINGLE_PROCESS
    #: the loss scaler of train.precision=16-mixed (set by the training loop; None = no scaling)
    loss_scaler: torch.amp.GradScaler | None = None
    #: whether every gradient of ``training_step`` goes through ``backward`` (and so can be loss-scaled)
    supports_loss_scaling: bool = False

    def __init__(self, cfg, method, view_maker):
        super().__init__()
        self.run_cfg = cfg
        self.cfg = cfg.plugin
        # the method is owned by the training loop: keep it out of this module's state_dict
        object.__setattr__(self, "method", method)
        self.view_maker = view_maker
        # train.channels_last: the loop lays a CUDA model out channels-last; the encoder inputs follow (CUDA only)
        self.channels_last = bool(getattr(getattr(cfg, "train", None), "channels_last", False))

    def augmented_views(self, images: torch.Tensor, n_views: int, seed: int,
                        rows: torch.Tensor | None = None) -> torch.Tensor:
        """``n_views`` augmented views [N, m, C, H, W] of uint8 ``images`` (``rows``: only those images' views, see
        ``ViewMaker``). Augmentation runs in float32 even under autocast; under ``train.channels_last`` on CUDA the
        views are laid out so that every flattened encoder input is channels-last."""
        with float32_region(images.device):
            views = self.view_maker(images, n_views, seed, rows=rows)
        return channels_last_views(views, self.channels_last and images.is_cuda)

    def training_step(self, images: torch.Tensor, info: StepInfo) -> dict[str, torch.Tensor]:
        """Set ``.grad`` on ``method.online_parameters()``; return metrics (0-dim tensors, ``loss`` required).

        With several processes (``self.distributed.active``) every process gets the whole batch, works on its
        share and leaves its share of the whole-batch gradient in ``.grad``; the loop sums the shares."""
        raise NotImplementedError

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, the loss scaled by ``loss_scaler`` when the loop set one (16-mixed)."""
        (loss if self.loss_scaler is None else self.loss_scaler.scale(loss)).backward()

    def extra_state(self) -> dict:
        """Optimiser states etc. of the plug-in's own networks, for checkpoints (tensors and plain values)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def epoch_summary(self, epoch: int) -> dict[str, float]:
        """Per-epoch metrics (e.g. conflict summaries) and a chance to emit warnings."""
        return {}


def build_plugin(cfg, method, view_maker) -> Plugin:
    return PLUGINS.get(cfg.plugin.name)(cfg, method, view_maker)
