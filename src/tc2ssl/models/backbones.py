"""Backbones with named intermediate layers (D-SSL-01).

Every backbone maps float images [N, C, H, W] to pooled features h [N, feat_dim] (what downstream evaluation uses)
and exposes ``forward_features(x, taps)`` returning globally average-pooled features of named layers, which the
per-layer diagnostics and UMM need.

- ``small_cnn``: the CPU default, 4 conv blocks (widths ``model.widths``, default 32-64-128-128), stride 2 at blocks 2
  and 3, BN + ReLU. Taps ``block1..block4`` (``early`` = block2, ``last`` = block4).
- ``small_cnn_tiny``: widths 16-32-64-64 (our fast variant for tests and checks), fixed: config validation
  rejects other ``model.widths`` and records these.
- ``resnet18`` / ``resnet50``: torchvision models (``model.cifar_stem``: 3x3 stride-1 conv, no max-pool), taps
  ``layer1..layer4``. Parameter names are torchvision's, so exported weights load into ``torchvision.models.resnet*``.
- ``timm:NAME``: any timm model (``pip install timm``), taps from its ``feature_info`` (module names, e.g.
  ``layer1..layer4``) and ``stage_last`` (the pooled output).
- ``vit_tiny``: our small MAE encoder (D-SSL-01), a 4-block ViT of width 64 on 4-pixel patches, any channel
  count and any square side divisible by 4. Taps ``block1..block4``; ``encode_visible`` encodes only the visible
  tokens of a patch mask (MAE).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn

from tc2ssl.errors import ConfigError
from tc2ssl.registry import Registry

BACKBONES: Registry[Callable] = Registry("backbone", "model.backbone")
#: the fixed widths of ``small_cnn_tiny`` (``model.widths`` applies to ``small_cnn`` only)
SMALL_CNN_TINY_WIDTHS = (16, 32, 64, 64)
#: the patch size of ``vit_tiny`` (MAE's ``method.patch_size`` must equal it)
VIT_TINY_PATCH_SIZE = 4


def _pool(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(-2, -1)) if x.dim() == 4 else x


class GlobalPool(nn.Module):
    """Global average pooling of a feature map [N, C, H, W] (or tokens [N, T, C]) to [N, C]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1) if x.dim() == 3 else _pool(x)


class Backbone(nn.Module):
    """Base class: ``forward`` gives pooled features; ``forward_features`` gives named pooled taps;
    ``split(at=NAME)`` cuts the network into an early part and the rest."""

    feat_dim: int
    tap_names: tuple[str, ...]
    aliases: dict[str, str] = {}
    #: prefix that makes parameter names torchvision-compatible on export ("" = names as they are)
    export_prefix: str = ""

    def forward_features(self, x: torch.Tensor, taps: Sequence[str] = ("last",)) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def split(self, at: str) -> tuple[nn.Module, nn.Module]:
        """``(early, rest)``: two modules that share this backbone's parameters (no copies), with
        ``early(x)`` the unpooled output of layer ``at`` (a tap name or alias; [N, C, H, W] for CNNs, tokens
        [N, T, D] for the ViT) and ``rest(early(x))`` equal to ``self(x)``, the pooled features [N, feat_dim].

        Freezing ``early`` (``Plugin.freeze``) freezes exactly the backbone's layers up to and including ``at``.
        Example: ``early, rest = backbone.split(at="early")``.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot be split")

    def _tap_index(self, at: str) -> int:
        """The position of tap ``at`` (name or alias) in ``tap_names``."""
        return self.tap_names.index(self._resolve([at])[0])

    def _resolve(self, taps: Sequence[str]) -> list[str]:
        resolved = []
        for t in taps:
            t = self.aliases.get(t, t)
            if t not in self.tap_names:
                raise ConfigError(f"unknown layer tap {t!r}; valid taps: {', '.join(self.tap_names)} "
                                  f"(aliases: {', '.join(self.aliases)})")
            resolved.append(t)
        return resolved


class ConvBlock(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )


class SmallCNN(Backbone):
    """Four conv blocks, stride 2 at blocks 2 and 3, global average pooling (D-SSL-01)."""

    aliases = {"early": "block2", "last": "block4"}

    def __init__(self, in_channels: int = 1, widths: Sequence[int] = (32, 64, 128, 128)):
        super().__init__()
        if len(widths) != 4 or any(w < 1 for w in widths):
            raise ConfigError(f"model.widths must be 4 positive integers, got {list(widths)}")
        strides = (1, 2, 2, 1)
        chans = (in_channels, *widths)
        self.blocks = nn.ModuleList(ConvBlock(chans[i], chans[i + 1], strides[i]) for i in range(4))
        self.feat_dim = widths[-1]
        self.tap_names = ("block1", "block2", "block3", "block4")

    def forward_features(self, x, taps=("last",)):
        wanted = set(self._resolve(taps))
        out = {}
        for name, block in zip(self.tap_names, self.blocks):
            x = block(x)
            if name in wanted:
                out[name] = _pool(x)
        return out

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return _pool(x)

    def split(self, at: str) -> tuple[nn.Module, nn.Module]:
        cut = self._tap_index(at) + 1
        return nn.Sequential(*self.blocks[:cut]), nn.Sequential(*self.blocks[cut:], GlobalPool())


class TorchvisionResNet(Backbone):
    """A torchvision ResNet without its classifier; parameter names match torchvision's (prefix ``net.``)."""

    aliases = {"early": "layer2", "last": "layer4"}
    export_prefix = "net."

    def __init__(self, arch: str, in_channels: int = 3, cifar_stem: bool = True, pretrained: bool = False):
        super().__init__()
        import torchvision

        net = getattr(torchvision.models, arch)(weights=None)
        if pretrained:   # loaded hash-checked and without unpickling code (tc2ssl.models.pretrained)
            from tc2ssl.models.pretrained import load_torchvision_weights

            weights = torchvision.models.get_model_weights(arch)
            load_torchvision_weights(net, weights[{"resnet18": "IMAGENET1K_V1", "resnet50": "IMAGENET1K_V2"}[arch]])
        if cifar_stem:
            net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.feat_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net
        self.tap_names = ("layer1", "layer2", "layer3", "layer4")

    def _stem(self, x):
        n = self.net
        return n.maxpool(n.relu(n.bn1(n.conv1(x))))

    def forward_features(self, x, taps=("last",)):
        wanted = set(self._resolve(taps))
        x = self._stem(x)
        out = {}
        for name in self.tap_names:
            x = getattr(self.net, name)(x)
            if name in wanted:
                out[name] = _pool(x)
        return out

    def forward(self, x):
        return self.net(x)

    def split(self, at: str) -> tuple[nn.Module, nn.Module]:
        cut = self._tap_index(at) + 1
        net = self.net
        layers = [getattr(net, name) for name in self.tap_names]
        early = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, *layers[:cut])
        return early, nn.Sequential(*layers[cut:], net.avgpool, nn.Flatten(1))   # torchvision's forward order


class TimmBackbone(Backbone):
    """Any timm model (``model.backbone=timm:resnet34``), without its classifier.

    Taps: timm's feature stages (the model's ``feature_info``), named by their module, e.g. ``act1``,
    ``layer1..layer4`` of a ResNet or ``blocks.0..`` of a ViT, each globally average-pooled to [N, channels]
    (token outputs [N, T, C] are averaged over the tokens), and ``stage_last``, the model's own pooled output
    (``forward``). Aliases: ``last`` = ``stage_last``; ``early`` = the middle feature stage (ResNets: ``layer2``).
    The taps come from forward hooks on those modules during one forward pass.
    """

    def __init__(self, name: str, in_channels: int, pretrained: bool = False):
        super().__init__()
        try:
            import timm
        except ImportError:
            raise ConfigError(f"model.backbone=timm:{name} needs timm: pip install timm") from None
        if name not in timm.list_models():
            raise ConfigError(f"timm has no model {name!r}")
        try:   # timm (>= 1.0) reads weights as safetensors or with torch.load(weights_only=True)
            self.net = timm.create_model(name, pretrained=pretrained, num_classes=0, in_chans=in_channels)
        except OSError as exc:   # offline: Hugging Face hub and URL errors are OSErrors
            if not pretrained:
                raise
            raise ConfigError(f"could not load timm's pretrained weights for {name!r} ({type(exc).__name__}); "
                              "connect to the internet once (timm caches them) or use model.pretrained=false") from None
        self.feat_dim = self.net.num_features
        info = [dict(f) for f in (getattr(self.net, "feature_info", None) or []) if f.get("module")]
        self._stages = {f["module"]: f for f in info}
        self.tap_names = (*self._stages, "stage_last")
        self.aliases = {"last": "stage_last", **({"early": info[len(info) // 2]["module"]} if info else {})}

    def forward_features(self, x, taps=("last",)):
        wanted = self._resolve(taps)
        captured: dict[str, torch.Tensor] = {}
        handles = []
        for name in dict.fromkeys(wanted):
            if name == "stage_last":
                continue
            module = self.net.get_submodule(name)
            if self._stages[name].get("hook_type") == "forward_pre":      # timm: the feature is the module's input
                handles.append(module.register_forward_pre_hook(
                    lambda _m, args, name=name: captured.__setitem__(name, args[0])))
            else:
                handles.append(module.register_forward_hook(
                    lambda _m, _args, out, name=name: captured.__setitem__(name, out)))
        try:
            pooled = self.net(x)
        finally:
            for handle in handles:
                handle.remove()
        return {name: pooled if name == "stage_last" else _pool_stage(captured[name], self._stages[name]["num_chs"])
                for name in wanted}

    def forward(self, x):
        return self.net(x)

    def split(self, at: str) -> tuple[nn.Module, nn.Module]:
        """Supported for timm models whose feature stages are top-level children run in order by
        ``forward_features`` (ResNets, RegNets, ...): ``early`` = the children up to ``at``, ``rest`` = the later
        feature children then the model's ``forward_head``. Other models (e.g. ViTs, whose blocks are nested)
        raise a ConfigError."""
        name = self._resolve([at])[0]
        children = dict(self.net.named_children())
        stages = [s for s in self._stages if s in children]
        if name not in stages or not hasattr(self.net, "forward_head"):
            raise ConfigError(f"timm model {type(self.net).__name__} cannot be split at {name!r}: split supports "
                              f"top-level feature stages of models with forward_head; here: {', '.join(stages)}")
        names = list(children)
        end = names.index(stages[-1]) + 1                     # the children after the last stage form the head
        cut = names.index(name) + 1
        early = nn.Sequential(*(children[n] for n in names[:cut]))
        return early, _TimmRest(nn.Sequential(*(children[n] for n in names[cut:end])), self.net)


class _TimmRest(nn.Module):
    """The later feature stages of a timm model followed by its own ``forward_head`` (pooling and head)."""

    def __init__(self, stages: nn.Sequential, net: nn.Module):
        super().__init__()
        self.stages = stages
        object.__setattr__(self, "net", net)   # for forward_head only; its modules are registered elsewhere

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.stages(x))


def _pool_stage(x, channels: int) -> torch.Tensor:
    """A timm feature map pooled to [N, channels]: NCHW or NHWC maps over their spatial dims, tokens [N, T, C]
    over the tokens."""
    if isinstance(x, (tuple, list)):
        x = x[0]
    if x.dim() == 4:
        channels_last = x.shape[1] != channels and x.shape[-1] == channels
        return x.mean(dim=(1, 2)) if channels_last else x.mean(dim=(-2, -1))
    if x.dim() == 3:
        return x.mean(dim=1)
    return x


@BACKBONES.register("small_cnn")
def _small_cnn(cfg, in_channels: int) -> Backbone:
    return SmallCNN(in_channels, cfg.widths)


@BACKBONES.register("small_cnn_tiny")
def _small_cnn_tiny(cfg, in_channels: int) -> Backbone:
    return SmallCNN(in_channels, SMALL_CNN_TINY_WIDTHS)


@BACKBONES.register("resnet18")
def _resnet18(cfg, in_channels: int) -> Backbone:
    return TorchvisionResNet("resnet18", in_channels, cfg.cifar_stem, cfg.pretrained)


@BACKBONES.register("resnet50")
def _resnet50(cfg, in_channels: int) -> Backbone:
    return TorchvisionResNet("resnet50", in_channels, cfg.cifar_stem, cfg.pretrained)


def build_backbone(cfg, in_channels: int) -> Backbone:
    """Build ``cfg.backbone`` (a registered name or ``timm:NAME``) for ``in_channels``-channel inputs."""
    if cfg.backbone.startswith("timm:"):
        return TimmBackbone(cfg.backbone.split(":", 1)[1], in_channels, cfg.pretrained)
    return BACKBONES.get(cfg.backbone)(cfg, in_channels)


# the ViT lives in tc2ssl.models.vit (registered there as vit_tiny); re-exported for older imports
from tc2ssl.models.vit import (TinyViT, TransformerBlock, init_vit_weights, sincos_positions,  # noqa: E402,F401
                               visible_index)
