"""The ``vit_tiny`` backbone: our small ViT encoder for MAE (a 4-block ViT of width 64 on 4-pixel patches).

Split out of ``tc2ssl.models.backbones`` (which re-exports these names) to keep each file short.
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn
from lightly.models.utils import get_2d_sine_cosine_positional_embedding, get_at_index

from tc2ssl.errors import ConfigError
from tc2ssl.models.backbones import BACKBONES, VIT_TINY_PATCH_SIZE, Backbone, GlobalPool


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
    """Our small MAE encoder (D-SSL-01): patch embedding (a stride-p convolution, any channel count), fixed 2-D
    sine-cosine positions (computed for the input's grid, so any square side divisible by p works), ``depth``
    pre-norm blocks and a final LayerNorm; no class token.

    ``forward(x)`` mean-pools the tokens of the whole image [N, width]; ``forward(x, mask)`` is
    ``encode_visible``: only the visible patches of ``mask`` (bool [N, P], True = masked) enter the blocks, which
    return their latents [N, T, width] (MAE's encoder, and the calibration point of TC² for MAE, D-TC-07).
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

    def split(self, at: str) -> tuple[nn.Module, nn.Module]:
        """``early``: patch tokens with positions through blocks 1..``at`` ([N, P, width], before the final
        LayerNorm); ``rest``: the later blocks, the final LayerNorm and the mean over tokens."""
        cut = self._tap_index(at) + 1
        early = nn.Sequential(_ViTTokens(self), *self.blocks[:cut])
        return early, nn.Sequential(*self.blocks[cut:], self.norm, GlobalPool())


class _ViTTokens(nn.Module):
    """``TinyViT.tokens`` as a module: the patch embedding (shared with the ViT) plus the fixed positions."""

    def __init__(self, vit: TinyViT):
        super().__init__()
        self.patch_embed = vit.patch_embed
        object.__setattr__(self, "vit", vit)   # for its grid and width only; its modules are registered elsewhere

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit.tokens(x)


@BACKBONES.register("vit_tiny")
def _vit_tiny(cfg, in_channels: int) -> Backbone:
    return TinyViT(in_channels, patch_size=VIT_TINY_PATCH_SIZE)
