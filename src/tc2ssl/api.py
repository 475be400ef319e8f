"""The Python API: add TC² (or "+T") to your own PyTorch training loop.

    import tc2ssl.api as tc2ssl
    method = tc2ssl.ssl_method("simclr", my_backbone, feat_dim=512)          # your encoder, our SSL head + loss
    tc2 = tc2ssl.TC2Step(method, image_size=32, channels=3, n_tasks=4)      # every plugin.* key is a keyword
    opt = torch.optim.AdamW(method.parameters(), lr=1e-3)
    for images in loader:                                                   # uint8 [N, C, H, W]
        opt.zero_grad()
        metrics = tc2(images)                 # stage 1 updates f_v/f_w; stage 2 leaves grads on the encoder
        opt.step(); method.after_step(progress)

Downstream, use ``my_backbone`` exactly as for the baseline (D-TC-20): f_v and f_w are training-time only.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from tc2ssl import config as config_mod
from tc2ssl.data.augment import ViewMaker, step_seed
from tc2ssl.methods import SSLMethod, build_method
from tc2ssl.models.backbones import Backbone
from tc2ssl.plugins import build_plugin
from tc2ssl.plugins.base import Plugin, StepInfo


class WrappedBackbone(Backbone):
    """Any ``nn.Module`` mapping images to pooled features [N, feat_dim] used as a tc2ssl backbone."""

    def __init__(self, module: nn.Module, feat_dim: int):
        super().__init__()
        self.module = module
        self.feat_dim = feat_dim
        self.tap_names = ("last",)

    def forward(self, x):
        return self.module(x)

    def forward_features(self, x, taps=("last",)):
        return {"last": self.forward(x)}


def ssl_method(name: str, backbone: nn.Module, feat_dim: int | None = None, **method_options) -> SSLMethod:
    """A registered SSL method (``simclr``, ...) around your backbone; ``method_options`` are ``method.*`` keys."""
    if not isinstance(backbone, Backbone):
        if feat_dim is None:
            raise config_mod.ConfigError("feat_dim is required for a backbone that is not a tc2ssl Backbone")
        backbone = WrappedBackbone(backbone, feat_dim)
    overrides = [f"method.name={name}"] + [f"method.{k}={v}" for k, v in method_options.items()]
    return build_method(config_mod.load_config((), overrides).method, backbone)


class TC2Step:
    """One TC² (or ``plugin="tasks"``: "+T") training step per call, for your own loop.

    ``augment`` is a preset name (digits, cifar, imagenet, none) or any callable
    ``(uint8 images [N, C, H, W], n_views, seed) -> float views [N, m, C, H, W]``. Keyword arguments are
    ``plugin.*`` config keys (n_tasks, n_views, beta1, stage2_mode, ...), validated like the CLI's.
    """

    def __init__(self, method: SSLMethod, image_size: int, channels: int, plugin: str = "tc2",
                 augment="cifar", seed: int = 0, **plugin_options):
        overrides = [f"plugin.name={plugin}"] + [f"plugin.{k}={v}" for k, v in plugin_options.items()]
        # your loop's batch is yours (train.* is not used here): a batch of K images keeps the checks of
        # train.batch_size against plugin.n_tasks (K <= batch, plugin.remainder=error) out of the way
        k = plugin_options.get("n_tasks", config_mod.PluginConfig.n_tasks)
        overrides.append(f"train.batch_size={2 * k if isinstance(k, int) and k >= 1 else 4}")  # 2 images per task
        cfg = config_mod.load_config((), overrides)
        view_maker = ViewMaker(augment, image_size, channels) if isinstance(augment, str) else augment
        device = next(method.parameters()).device
        self.plugin: Plugin = build_plugin(cfg, method, view_maker).to(device)
        self.seed = seed
        self.step = 0
        self.epoch = 0

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        info = StepInfo(epoch=self.epoch, step=self.step, seed=step_seed(self.seed, self.epoch, self.step))
        metrics = self.plugin.training_step(images, info)
        self.step += 1
        return metrics

    def end_epoch(self) -> dict[str, float]:
        """Per-epoch summaries (gradient conflict, TC² health) and their warnings."""
        summary = self.plugin.epoch_summary(self.epoch)
        self.epoch += 1
        return summary
