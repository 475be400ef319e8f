"""Backbones with named intermediate layers (SPEC §2.1).

Every backbone maps float images [N, C, H, W] to pooled features h [N, feat_dim] (what downstream evaluation uses)
and exposes ``forward_features(x, taps)`` returning globally average-pooled features of named layers, which the
per-layer diagnostics and UMM need.

- ``small_cnn``: the CPU default, 4 conv blocks (widths ``model.widths``, default 32-64-128-128), stride 2 at blocks 2
  and 3, BN + ReLU. Taps ``block1..block4`` (``early`` = block2, ``last`` = block4).
- ``small_cnn_tiny``: widths 16-32-64-64 (the spec's fast variant for the §9 checks), fixed: config validation
  rejects other ``model.widths`` and records these.
- ``resnet18`` / ``resnet50``: torchvision models (``model.cifar_stem``: 3x3 stride-1 conv, no max-pool), taps
  ``layer1..layer4``. Parameter names are torchvision's, so exported weights load into ``torchvision.models.resnet*``
  (``tc2ssl.models.export``).
- ``timm:NAME``: any timm model (``pip install timm``), taps from its ``feature_info`` (module names, e.g.
  ``layer1..layer4``) and ``stage_last`` (the pooled output).

Input normalisation: tc2ssl feeds every backbone x/127.5 - 1 (pixels in [-1, 1]; mean 0.5, std 0.5 on [0, 1]
pixels). With ``model.pretrained=true`` the weights were trained on ImageNet-normalised RGB, so the backbone starts
with an :class:`InputAdapter` that turns [-1, 1] pixels into what the weights expect (grey replicated to RGB, then
the weights' mean/std); the pretrained conv1 is then kept whenever its shape fits the stem (always for
``cifar_stem=false`` and timm; the 3x3 CIFAR stem has no pretrained counterpart and starts from random init).
- ``vit_tiny``: the spec's TinyViTMAE encoder (§2.1), a 4-block ViT of width 64 on 4-pixel patches, any channel
  count and any square side divisible by 4. Taps ``block1..block4``; ``encode_visible`` encodes only the visible
  tokens of a patch mask (MAE).
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import torch
import torch.nn as nn
from lightly.models.utils import get_2d_sine_cosine_positional_embedding, get_at_index

from tc2ssl.errors import ConfigError
from tc2ssl.registry import Registry

BACKBONES: Registry[Callable] = Registry("backbone", "model.backbone")
#: per-channel mean and std, on [0, 1] pixels, of tc2ssl's own input normalisation x/127.5 - 1
UNIT_MEAN, UNIT_STD = 0.5, 0.5
#: torchvision's ImageNet normalisation, which its pretrained weights expect
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: the fixed widths of ``small_cnn_tiny`` (``model.widths`` applies to ``small_cnn`` only)
SMALL_CNN_TINY_WIDTHS = (16, 32, 64, 64)
#: the patch size of ``vit_tiny`` (MAE's ``method.patch_size`` must equal it)
VIT_TINY_PATCH_SIZE = 4


def _pool(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(-2, -1)) if x.dim() == 4 else x


class Backbone(nn.Module):
    """Base class: ``forward`` gives pooled features; ``forward_features`` gives named pooled taps."""

    feat_dim: int
    tap_names: tuple[str, ...]
    aliases: dict[str, str] = {}
    #: prefix that makes parameter names torchvision-/timm-compatible on export ("" = names as they are)
    export_prefix: str = ""
    #: the stem as built: "cifar" (3x3 stride-1 conv, no max-pool), "imagenet" (7x7 stride-2 conv + max-pool),
    #: "timm" (the timm model's own) or "none" (tc2ssl's own modules)
    stem: str = "none"
    #: what the exported module itself expects: channels and per-channel (mean, std) on [0, 1] pixels; None = the
    #: backbone's input channels and tc2ssl's own normalisation (mean = std = 0.5, i.e. x/127.5 - 1)
    module_in_channels: int | None = None
    module_normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    def forward_features(self, x: torch.Tensor, taps: Sequence[str] = ("last",)) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _resolve(self, taps: Sequence[str]) -> list[str]:
        resolved = []
        for t in taps:
            t = self.aliases.get(t, t)
            if t not in self.tap_names:
                raise ConfigError(f"unknown layer tap {t!r}; valid taps: {', '.join(self.tap_names)} "
                                  f"(aliases: {', '.join(self.aliases)})")
            resolved.append(t)
        return resolved


class InputAdapter(nn.Module):
    """Maps tc2ssl's inputs (x/127.5 - 1, ``in_channels`` channels) to what pretrained weights expect: grey
    replicated to ``out_channels``, then ``(pixel - mean) / std`` per channel on [0, 1] pixels."""

    def __init__(self, in_channels: int, out_channels: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if in_channels not in (1, out_channels) or len(mean) != out_channels or len(std) != out_channels:
            raise ConfigError(f"cannot adapt {in_channels}-channel inputs to weights trained on {out_channels} "
                              f"channels (mean {list(mean)}, std {list(std)})")
        self.out_channels = out_channels
        # non-persistent: the adapter is fixed, so it never enters a state_dict or an exported file
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = (x + 1.0) * 0.5                                   # [-1, 1] -> [0, 1]
        pixels = pixels.expand(-1, self.out_channels, -1, -1)
        return (pixels - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class ConvBlock(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )


class SmallCNN(Backbone):
    """Four conv blocks, stride 2 at blocks 2 and 3, global average pooling (SPEC §2.1)."""

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


class TorchvisionResNet(Backbone):
    """A torchvision ResNet without its classifier; parameter names match torchvision's (prefix ``net.``).

    ``pretrained=True`` loads torchvision's ImageNet weights and puts an :class:`InputAdapter` in front (ImageNet
    mean/std, grey replicated to RGB), so conv1 keeps its 3 pretrained input channels; with ``cifar_stem=True`` conv1
    is the new 3x3 stride-1 conv (random init) and every later layer stays pretrained.
    """

    aliases = {"early": "layer2", "last": "layer4"}
    export_prefix = "net."

    def __init__(self, arch: str, in_channels: int = 3, cifar_stem: bool = True, pretrained: bool = False):
        super().__init__()
        import torchvision

        weights = None
        if pretrained:
            weights = {"resnet18": "IMAGENET1K_V1", "resnet50": "IMAGENET1K_V2"}[arch]
        try:
            net = getattr(torchvision.models, arch)(weights=weights)
        except (OSError, RuntimeError) as exc:  # offline download of pretrained weights
            raise ConfigError(f"could not load pretrained {arch} weights ({exc}); use model.pretrained=false "
                              "or put the torchvision weights in $TORCH_HOME/hub/checkpoints") from None
        self.stem = "cifar" if cifar_stem else "imagenet"
        self.module_in_channels = 3 if pretrained else in_channels
        self.input_adapter: nn.Module = nn.Identity()
        if pretrained:
            self.module_normalization = (IMAGENET_MEAN, IMAGENET_STD)
            self.input_adapter = InputAdapter(in_channels, 3, IMAGENET_MEAN, IMAGENET_STD)
        if cifar_stem:
            net.conv1 = nn.Conv2d(self.module_in_channels, 64, 3, 1, 1, bias=False)
            net.maxpool = nn.Identity()
        elif self.module_in_channels != 3:
            net.conv1 = nn.Conv2d(self.module_in_channels, 64, 7, 2, 3, bias=False)
        self.feat_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net
        self.tap_names = ("layer1", "layer2", "layer3", "layer4")

    def _stem(self, x):
        n = self.net
        return n.maxpool(n.relu(n.bn1(n.conv1(self.input_adapter(x)))))

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
        return self.net(self.input_adapter(x))


class TimmBackbone(Backbone):
    """Any timm model (``model.backbone=timm:resnet34``), without its classifier.

    Taps: timm's feature stages (the model's ``feature_info``), named by their module, e.g. ``act1``,
    ``layer1..layer4`` of a ResNet or ``blocks.0..`` of a ViT, each globally average-pooled to [N, channels]
    (token outputs [N, T, C] are averaged over the tokens), and ``stage_last``, the model's own pooled output
    (``forward``). Aliases: ``last`` = ``stage_last``; ``early`` = the middle feature stage (ResNets: ``layer2``).
    The taps come from forward hooks on those modules during one forward pass.

    ``pretrained=True`` builds the model for 3 input channels (timm's own pretrained stem) behind an
    :class:`InputAdapter` with the mean/std of the weights' ``pretrained_cfg``.
    """

    export_prefix = "net."
    stem = "timm"

    def __init__(self, name: str, in_channels: int, pretrained: bool = False):
        super().__init__()
        try:
            import timm
        except ImportError:
            raise ConfigError(f"model.backbone=timm:{name} needs timm: pip install timm") from None
        if name not in timm.list_models():
            raise ConfigError(f"timm has no model {name!r}")
        self.module_in_channels = 3 if pretrained else in_channels
        self.net = timm.create_model(name, pretrained=pretrained, num_classes=0, in_chans=self.module_in_channels)
        self.input_adapter: nn.Module = nn.Identity()
        if pretrained:
            data_cfg = self.net.pretrained_cfg
            mean, std = tuple(data_cfg.get("mean", IMAGENET_MEAN)), tuple(data_cfg.get("std", IMAGENET_STD))
            self.module_normalization = (mean, std)
            self.input_adapter = InputAdapter(in_channels, 3, mean, std)
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
            pooled = self.net(self.input_adapter(x))
        finally:
            for handle in handles:
                handle.remove()
        return {name: pooled if name == "stage_last" else _pool_stage(captured[name], self._stages[name]["num_chs"])
                for name in wanted}

    def forward(self, x):
        return self.net(self.input_adapter(x))


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


# ---------------------------------------------------------------------------------------------- tiny ViT (MAE)
@functools.lru_cache(maxsize=16)
def _sincos_table(grid: int, dim: int) -> torch.Tensor:
    return torch.from_numpy(get_2d_sine_cosine_positional_embedding(dim, grid, cls_token=False)).float()


def sincos_positions(grid: int, dim: int, like: torch.Tensor) -> torch.Tensor:
    """The fixed 2-D sine-cosine position code of a grid x grid patch grid (MAE, He et al. 2022) [1, grid², dim],
    on the device and dtype of ``like``; patches in row-major order, as ``lightly.models.utils.patchify``."""
    return _sincos_table(grid, dim).to(device=like.device, dtype=like.dtype)[None]


def visible_index(mask: torch.Tensor) -> torch.Tensor:
    """Indices of the visible (False) patches of a patch mask bool [N, P] (True = masked): [N, T], ascending.

    Every row must hide the same number of patches (``tc2ssl.data.tasks.make_masks`` guarantees it).
    """
    if mask.dim() != 2 or mask.dtype != torch.bool or mask.shape[0] == 0:
        raise ValueError(f"mask must be bool [N >= 1, n_patches], got {mask.dtype} {tuple(mask.shape)}")
    n_visible = (~mask).sum(dim=1)
    low, high = int(n_visible.min()), int(n_visible.max())
    if low != high or low == 0:
        raise ValueError(f"every mask row must leave the same number (>= 1) of patches visible, got {low}..{high}")
    return torch.argsort(mask.to(torch.uint8), dim=1, stable=True)[:, :low]


class TransformerBlock(nn.Module):
    """Pre-norm ViT block: x + MSA(LN(x)), then x + MLP(LN(x)) (Dosovitskiy et al., 2021).

    The attention is written out (softmax(QKᵀ/√d_h)V) rather than taken from ``nn.MultiheadAttention``: PyTorch's
    fused CPU attention kernel has no second derivative, which TC²'s exact bi-level mode (``stage2_mode=exact``)
    needs.
    """

    def __init__(self, dim: int, n_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        if dim % n_heads:
            raise ConfigError(f"the ViT width {dim} is not divisible by its {n_heads} heads")
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(n, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        attention = (q @ k.transpose(-2, -1) * (d // self.n_heads) ** -0.5).softmax(dim=-1)
        x = x + self.proj((attention @ v).transpose(1, 2).reshape(n, t, d))
        return x + self.mlp(self.norm2(x))


def init_vit_weights(module: nn.Module) -> None:
    """MAE's initialisation: Xavier-uniform linear layers (and the patch projection, seen as one), zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class TinyViT(Backbone):
    """SPEC §2.1 ``TinyViTMAE`` encoder: patch embedding (a stride-p convolution, any channel count), fixed 2-D
    sine-cosine positions (computed for the input's grid, so any square side divisible by p works), ``depth``
    pre-norm blocks and a final LayerNorm; no class token.

    ``forward(x)`` mean-pools the tokens of the whole image [N, width]; ``forward(x, mask)`` is
    ``encode_visible``: only the visible patches of ``mask`` (bool [N, P], True = masked) enter the blocks, which
    return their latents [N, T, width] (MAE's encoder, and the calibration point of TC² for MAE, SPEC §3.5.3).
    Taps ``block1..block4`` are the mean-pooled outputs of the blocks, ``block4`` after the final LayerNorm
    (``early`` = block2, ``last`` = block4 = ``forward``).
    """

    aliases = {"early": "block2", "last": "block4"}

    def __init__(self, in_channels: int = 1, patch_size: int = 4, width: int = 64, depth: int = 4,
                 n_heads: int = 4, mlp_ratio: float = 4.0):
        super().__init__()
        if patch_size < 1 or width % 4:
            raise ConfigError(f"TinyViT needs patch_size >= 1 and a width divisible by 4, got {patch_size}, {width}")
        self.patch_size = patch_size
        self.feat_dim = width
        self.patch_embed = nn.Conv2d(in_channels, width, patch_size, stride=patch_size)
        self.blocks = nn.ModuleList(TransformerBlock(width, n_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.tap_names = tuple(f"block{i + 1}" for i in range(depth))
        init_vit_weights(self)

    def grid_size(self, x: torch.Tensor) -> int:
        """Patches per side of images x [N, C, H, W] (square, side divisible by the patch size)."""
        h, w = x.shape[-2:]
        if h != w or h % self.patch_size:
            raise ConfigError(f"model.backbone=vit_tiny needs square images with a side divisible by its patch size "
                              f"{self.patch_size}, got {h}x{w}; set data.resolution accordingly")
        return h // self.patch_size

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens with positions [N, P, width], patches in row-major order."""
        grid = self.grid_size(x)
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        return t + sincos_positions(grid, self.feat_dim, t)

    def encode_visible(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Latents of the visible patches [N, T, width] (ascending patch order); masked patches are never seen."""
        t = self.tokens(x)
        if mask.shape != t.shape[:2]:
            raise ValueError(f"mask must be [N, n_patches] = {tuple(t.shape[:2])}, got {tuple(mask.shape)}")
        t = get_at_index(t, visible_index(mask))
        for block in self.blocks:
            t = block(t)
        return self.norm(t)

    def forward_features(self, x, taps=("last",)):
        wanted = set(self._resolve(taps))
        t = self.tokens(x)
        out = {}
        for name, block in zip(self.tap_names, self.blocks):
            t = block(t)
            if name in wanted:
                out[name] = (self.norm(t) if name == self.tap_names[-1] else t).mean(dim=1)
        return out

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is not None:
            return self.encode_visible(x, mask)
        t = self.tokens(x)
        for block in self.blocks:
            t = block(t)
        return self.norm(t).mean(dim=1)


@BACKBONES.register("vit_tiny")
def _vit_tiny(cfg, in_channels: int) -> Backbone:
    return TinyViT(in_channels, patch_size=VIT_TINY_PATCH_SIZE)
