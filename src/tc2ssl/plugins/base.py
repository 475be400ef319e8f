"""The plug-in contract: a plug-in turns one batch of images into gradients, and may own networks of its own.

The training loop (``tc2ssl.train.loop``) owns the outer optimiser (β₂ of TC²'s Eq. 7 is "whatever optimiser the
baseline uses"). What it calls, in order (``docs/architecture.md`` walks through writing a plug-in):

1. ``check_config(cfg)`` (a classmethod, from ``tc2ssl.config.validate``): the plug-in's own cross-field checks
   (e.g. ``plugin.n_support_views < plugin.n_views`` for task plug-ins); raise ``ConfigError``.
2. ``__init__(cfg, method, view_maker)``: build the plug-in's own networks (they are module attributes, so they are
   checkpointed with the run and moved to the device with it).
3. ``on_fit_start(run)``: after the method and plug-in are built (and a post-hoc run's weights are loaded), before
   the optimiser is built and before a checkpoint is resumed. The place to load weights into the method, or to
   :meth:`freeze` a part of the encoder (the optimiser is then built without the frozen parameters).
4. per epoch: ``method.train()``, ``plugin.train()``, then ``on_epoch_start(epoch)`` (the base class puts the
   modules given to :meth:`freeze` back in eval mode, so their BatchNorm statistics stay as they are).
5. per step: zero the gradients; ``training_step(images, info)`` leaves ``.grad`` on the method's online parameters
   and on :meth:`outer_parameters` (or on some of them); the loop sums the processes' shares (several processes),
   clips, steps the optimiser over both, and calls ``method.after_step``.
6. per epoch end: ``epoch_summary(epoch)`` (metrics for ``metrics.jsonl``), then the checkpoint
   (``state_dict()`` of method and plug-in, ``extra_state()``, the optimiser, which holds the outer parameters'
   moments too).
7. ``on_fit_end(out)``: after the last epoch, before the encoder is exported to ``out/encoder.safetensors``.

Under ``train.precision=16-mixed`` the loop sets ``loss_scaler`` (a ``torch.amp.GradScaler``); a plug-in that
back-propagates a loss does so with :meth:`Plugin.backward`, which scales it, and declares
``supports_loss_scaling = True``. Plug-ins whose gradients are functional (``torch.autograd.grad`` and
``assign_grads``, e.g. the bi-level task plug-ins) cannot be scaled that way, and config validation rejects
16-mixed for them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn as nn

from tc2ssl.distributed import SINGLE_PROCESS, DistributedContext
from tc2ssl.precision import channels_last_views, float32_region
from tc2ssl.registry import Registry

if TYPE_CHECKING:
    from pathlib import Path

PLUGINS: Registry[Callable] = Registry("plug-in", "plugin.name")


@dataclass
class StepInfo:
    epoch: int
    step: int  # global step, 0-based
    seed: int  # the step's seed: views, task split and masks all derive from it


class Plugin(nn.Module):
    """Base class of every ``plugin.name``; see the module docstring for when the loop calls what.

    Example (a plug-in training its own head with the outer optimiser; ``tests/plugins/test_contract.py`` has a
    complete one)::

        @PLUGINS.register("my_plugin")
        class MyPlugin(Plugin):
            def __init__(self, cfg, method, view_maker):
                super().__init__(cfg, method, view_maker)
                self.head = nn.Linear(method.embed_dim, 8)

            def outer_parameters(self):
                return {f"head.{n}": p for n, p in self.head.named_parameters()}

            def training_step(self, images, info):
                views = self.augmented_views(images, 2, info.seed)
                loss = my_loss(self.head(self.method.embed(views.flatten(0, 1))))
                self.backward(loss)
                return {"loss": loss.detach()}
    """

    #: views per image the plug-in needs from the augmentation
    n_views: int = 2
    #: the processes a step is spread over (set by the training loop when train.devices > 1); a plug-in takes
    #: the whole batch in ``training_step`` and works on this process's share of it (tc2ssl.distributed)
    distributed: DistributedContext = SINGLE_PROCESS
    #: the loss scaler of train.precision=16-mixed (set by the training loop; None = no scaling)
    loss_scaler: torch.amp.GradScaler | None = None
    #: whether every gradient of ``training_step`` goes through ``backward`` (and so can be loss-scaled)
    supports_loss_scaling: bool = False
    #: whether the plug-in splits each batch into tasks (support and query views): the ``plugin.n_tasks``,
    #: ``plugin.n_views`` and ``plugin.n_support_views`` keys apply to it and are validated for it
    uses_tasks: bool = False
    #: whether ``training_step`` works on this process's share of the batch when train.devices > 1
    supports_distributed: bool = False
    #: the name of the plug-in's own config block ``plugin.<config_block>.*`` (a dataclass field of
    #: ``tc2ssl.config.PluginConfig``), or None when the plug-in reads only shared ``plugin.*`` keys
    config_block: str | None = None

    def __init__(self, cfg, method, view_maker):
        super().__init__()
        self.run_cfg = cfg
        self.cfg = cfg.plugin
        # the method is owned by the training loop: keep it out of this module's state_dict
        object.__setattr__(self, "method", method)
        self.view_maker = view_maker
        # train.channels_last: the loop lays a CUDA model out channels-last; the encoder inputs follow (CUDA only)
        self.channels_last = bool(getattr(getattr(cfg, "train", None), "channels_last", False))
        # modules held fixed for the whole fit (see ``freeze``); a plain list: they are not this module's children
        object.__setattr__(self, "frozen_modules", [])

    @property
    def block(self):
        """This plug-in's own config block ``plugin.<config_block>`` (None when it has none)."""
        return None if self.config_block is None else getattr(self.cfg, self.config_block)

    # ------------------------------------------------------------------ configuration
    @classmethod
    def check_config(cls, cfg) -> None:
        """Cross-field checks of the run config ``cfg`` for this plug-in (single fields are checked by their
        declared choices and bounds); raise ``ConfigError`` naming the key and the allowed values."""

    # ------------------------------------------------------------------ parameters of the plug-in
    def outer_parameters(self) -> dict[str, nn.Parameter]:
        """The plug-in's own parameters that the loop's outer optimiser steps together with the method's online
        parameters (same learning rate, schedule, weight decay rule and gradient clipping), by name.

        ``training_step`` leaves their gradients in ``.grad``; they are checkpointed as part of ``state_dict()``
        and the optimiser state. Networks the plug-in updates itself (e.g. TC²'s calibrator, stepped inside the
        step) are not returned here."""
        return {}

    def freeze(self, module: nn.Module) -> None:
        """Hold ``module`` (a part of the method, e.g. the early part of ``Backbone.split``) fixed for the fit:
        its parameters stop requiring grad (call this in ``on_fit_start``, before the optimiser is built) and it is
        put in eval mode at every epoch start, after the loop's ``method.train()``, so a BatchNorm in it keeps its
        running statistics and normalises with them."""
        for parameter in module.parameters():
            parameter.requires_grad_(False)
        module.eval()
        self.frozen_modules.append(module)

    # ------------------------------------------------------------------ lifecycle hooks
    def on_fit_start(self, run) -> None:
        """Called once per process with the ``Run`` (cfg, data, method, plug-in, ...) before the optimiser is built
        and before a checkpoint is resumed (a resumed checkpoint then overrides weights loaded here)."""

    def on_epoch_start(self, epoch: int) -> None:
        """Called at the start of every epoch, after the loop's ``method.train()`` and ``plugin.train()``.
        Overrides must call ``super().on_epoch_start(epoch)`` (it keeps frozen modules in eval mode)."""
        for module in self.frozen_modules:
            module.eval()

    def on_fit_end(self, out: "Path") -> None:
        """Called once per process after the last epoch, before the encoder is exported to ``out``."""

    # ------------------------------------------------------------------ the step
    def augmented_views(self, images: torch.Tensor, n_views: int, seed: int,
                        rows: torch.Tensor | None = None) -> torch.Tensor:
        """``n_views`` augmented views [N, m, C, H, W] of uint8 ``images`` (``rows``: only those images' views, see
        ``ViewMaker``). Augmentation runs in float32 even under autocast; under ``train.channels_last`` on CUDA the
        views are laid out so that every flattened encoder input is channels-last."""
        with float32_region(images.device):
            views = self.view_maker(images, n_views, seed, rows=rows)
        return channels_last_views(views, self.channels_last and images.is_cuda)

    def training_step(self, images: torch.Tensor, info: StepInfo) -> dict[str, torch.Tensor]:
        """Set ``.grad`` on ``method.online_parameters()`` (and :meth:`outer_parameters`); return metrics (0-dim
        tensors, ``loss`` required).

        With several processes (``self.distributed.active``) every process gets the whole batch, works on its
        share and leaves its share of the whole-batch gradient in ``.grad``; the loop sums the shares."""
        raise NotImplementedError

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, the loss scaled by ``loss_scaler`` when the loop set one (16-mixed)."""
        (loss if self.loss_scaler is None else self.loss_scaler.scale(loss)).backward()

    # ------------------------------------------------------------------ bookkeeping
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


def trainable_parameters(method: nn.Module, plugin: Plugin) -> list[torch.Tensor]:
    """What the outer optimiser steps: the method's online parameters (those that require grad), then the
    plug-in's :meth:`Plugin.outer_parameters`."""
    return [*method.online_parameters().values(), *plugin.outer_parameters().values()]
