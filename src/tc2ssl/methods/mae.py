"""MAE (He et al., 2022, "Masked Autoencoders Are Scalable Vision Learners"), the G-SSL method of TC² (D-SSL-02).

Encoder: the ``vit_tiny`` backbone (:class:`~tc2ssl.models.backbones.TinyViT`), which encodes only the visible
patches of a mask. Decoder (:class:`MAEDecoder`, 2 blocks): the visible latents at their patch positions among copies
of a learned mask token, fixed sine-cosine positions, transformer blocks, a linear pixel head.

Loss (D-SSL-02): the mean over masked patches p of ‖x̂_p − x_p‖² (the squared error summed over the patch's pixels;
He et al. average over pixels instead, i.e. divide by C·p²). Optional per-patch target normalisation
(``norm_pix_loss``, off by default): x_p ← (x_p − mean(x_p)) / sqrt(var(x_p) + 1e-6).

A *view* of MAE is a masked image: :class:`MaskedViews` pairs images with patch masks (True = masked) and indexes
like the [N, m, ...] view tensors of D-SSL methods, so TC²'s task split applies to it unchanged.

- TC² (D-TC-28, ``generative = True``): ``task_views`` gives each image m random masks of one view; the
  support of a task is m' masked views plus the unmasked image (the reconstruction target), the query the other
  m − m' masked views. The calibration point is the per-token latents of the visible patches, before the decoder
  (D-TC-07): ``embed`` returns [B, T, d]. ``anchors`` are the unmasked images' patches and ``query_loss`` is the
  same masked-patch squared error of the query views against them (D-TC-12).
- Baseline (``plugin.name=none``): the loop's two augmented views are two masked samples, each with its own random
  mask (drawn from torch's global RNG, which the run seeds) and itself as the target.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from lightly.models.utils import patchify, set_at_index

from tc2ssl.data.tasks import make_masks
from tc2ssl.errors import ConfigError
from tc2ssl.meta.functional import functional_forward
from tc2ssl.methods.base import METHODS, LossContext, SSLMethod, sub_params
from tc2ssl.models.backbones import TinyViT, TransformerBlock, init_vit_weights, sincos_positions, visible_index


@dataclass(frozen=True)
class MaskedViews:
    """Masked views: ``images`` [*lead, C, H, W] (each view's unmasked image, the reconstruction target) and
    ``masks`` bool [*lead, P] (True = masked patch), with the same leading dims (e.g. [N, m] images x views).

    Indexing, ``flatten`` and ``cat`` act on the leading dims of both, like on a [N, m, C, H, W] view tensor.
    """

    images: torch.Tensor
    masks: torch.Tensor

    def __post_init__(self):
        if self.masks.dtype != torch.bool:
            raise ValueError(f"masks must be bool, got {self.masks.dtype}")
        if self.images.dim() != self.masks.dim() + 2 or self.images.shape[:-3] != self.masks.shape[:-1]:
            raise ValueError(f"images {tuple(self.images.shape)} and masks {tuple(self.masks.shape)} must share "
                             "their leading dims: images [*lead, C, H, W], masks [*lead, P]")

    @property
    def shape(self) -> torch.Size:
        """The leading dims (e.g. [n_images, n_views])."""
        return self.masks.shape[:-1]

    def __getitem__(self, index) -> MaskedViews:
        return MaskedViews(self.images[index], self.masks[index])

    def flatten(self, start_dim: int, end_dim: int) -> MaskedViews:
        lead = len(self.shape)
        if not 0 <= start_dim <= end_dim < lead:
            raise ValueError(f"flatten acts on the {lead} leading dims, got {start_dim}..{end_dim}")
        return MaskedViews(self.images.flatten(start_dim, end_dim), self.masks.flatten(start_dim, end_dim))

    def cat(self, other: MaskedViews, dim: int = 1) -> MaskedViews:
        return MaskedViews(torch.cat([self.images, other.images], dim=dim),
                           torch.cat([self.masks, other.masks], dim=dim))


def patch_targets(images: torch.Tensor, patch_size: int, normalize: bool = False) -> torch.Tensor:
    """The reconstruction targets of images [B, C, H, W]: their patches [B, P, C·p²] (lightly's ``patchify``
    order), normalised per patch when ``normalize`` (MAE's ``norm_pix_loss``)."""
    target = patchify(images, patch_size)
    if normalize:
        target = (target - target.mean(dim=-1, keepdim=True)) / (target.var(dim=-1, keepdim=True) + 1e-6).sqrt()
    return target


def masked_patch_errors(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per view, the mean over its masked patches of ‖x̂_p − x_p‖²: prediction, target [B, P, K], mask bool
    [B, P] (True = masked) -> [B]."""
    if prediction.shape != target.shape or prediction.shape[:2] != mask.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)}, target {tuple(target.shape)} and mask "
                         f"{tuple(mask.shape)} must be [B, P, K], [B, P, K] and [B, P]")
    n_masked = mask.sum(dim=1)
    if bool((n_masked == 0).any()):
        raise ValueError("every view needs at least one masked patch")
    squared = (prediction - target).pow(2).sum(dim=-1)                     # ‖x̂_p − x_p‖² [B, P]
    return (squared * mask).sum(dim=1) / n_masked


class MAEDecoder(nn.Module):
    """MAE's lightweight decoder (He et al., 2022, §3), laid out like lightly's ``MAEDecoder`` (embed -> decode ->
    predict): visible latents [B, T, in_dim] and the mask [B, P] -> predicted patches [B, P, out_dim].

    The visible latents go to their patch positions among copies of a learned mask token, fixed sine-cosine
    positions of the (square) patch grid are added, then ``depth`` transformer blocks, a LayerNorm and a linear
    pixel head. Positions are computed per grid, so one decoder serves every image size.
    """

    def __init__(self, in_dim: int, out_dim: int, width: int = 64, depth: int = 2, n_heads: int = 4):
        super().__init__()
        self.width = width
        self.embed = nn.Linear(in_dim, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.blocks = nn.ModuleList(TransformerBlock(width, n_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.predict = nn.Linear(width, out_dim)
        init_vit_weights(self)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, latents: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n, n_patches = mask.shape
        grid = round(n_patches ** 0.5)
        if grid * grid != n_patches:
            raise ValueError(f"the decoder needs a square patch grid, got {n_patches} patches")
        index = visible_index(mask)
        if latents.shape[:2] != index.shape:
            raise ValueError(f"latents {tuple(latents.shape)} must hold the {index.shape[1]} visible tokens of "
                             f"each of the {n} masks")
        tokens = self.embed(latents)
        x = set_at_index(self.mask_token.to(tokens.dtype).expand(n, n_patches, self.width), index, tokens)
        x = x + sincos_positions(grid, self.width, x)
        for block in self.blocks:
            x = block(x)
        return self.predict(self.norm(x))


@METHODS.register("mae")
class MAE(SSLMethod):
    name = "mae"
    cosine_based = False
    min_support_views = 1
    #: TC² builds masked-view tasks for it: one view per image, m masks, the unmasked image as target (D-TC-13)
    generative = True
    #: every view's masked-patch error depends on that view only (the decoder's norms are LayerNorms)
    per_view_losses = True

    def __init__(self, backbone, cfg, decoder_width: int = 64, decoder_depth: int = 2, decoder_heads: int = 4,
                 norm_pix_loss: bool = False):
        super().__init__(backbone, cfg)
        if not isinstance(backbone, TinyViT):
            raise ConfigError(f"method.name=mae needs a ViT encoder that can skip masked patches: use "
                              f"model.backbone=vit_tiny (the preset `-p mae` sets it), not {type(backbone).__name__}")
        if backbone.patch_size != cfg.patch_size:
            raise ConfigError(f"method.patch_size={cfg.patch_size} differs from the backbone's patch size "
                              f"{backbone.patch_size}; vit_tiny uses {backbone.patch_size}")
        self.patch_size = cfg.patch_size
        self.norm_pix_loss = norm_pix_loss
        pixels = backbone.patch_embed.in_channels * cfg.patch_size ** 2
        self.decoder = MAEDecoder(backbone.feat_dim, pixels, decoder_width, decoder_depth, decoder_heads)

    @property
    def embed_dim(self) -> int:
        return self.backbone.feat_dim

    # ---------------------------------------------------------------- views and representation
    def task_views(self, images: torch.Tensor, n_views: int, generator: torch.Generator) -> MaskedViews:
        """m masked views of each image [N, C, H, W]: the image with ``n_views`` random masks of exactly
        round(ρ·P) patches each (``make_masks``) -> MaskedViews [N, m]."""
        n = images.shape[0]
        n_patches = self.backbone.grid_size(images) ** 2
        masks = make_masks(n, n_views, n_patches, self.cfg.mask_ratio, generator).to(images.device)
        return MaskedViews(images[:, None].expand(n, n_views, *images.shape[1:]), masks)

    def embed(self, x: MaskedViews, params: dict | None = None) -> torch.Tensor:
        """Latents of the visible patches of masked views [B] -> [B, T, d] (the calibration point, D-TC-07)."""
        if not isinstance(x, MaskedViews) or x.masks.dim() != 2:
            raise ValueError(f"MAE embeds masked views MaskedViews[B] (see MAE.task_views), got {type(x).__name__}")
        return self._call("backbone", x.images, x.masks, params=params)

    def reconstruct(self, z: torch.Tensor, masks: torch.Tensor, params: dict | None = None) -> torch.Tensor:
        """Decoded patches [B, P, C·p²] of visible latents z [B, T, d] under masks [B, P]."""
        return self._call("decoder", z, masks, params=params)

    def _call(self, child: str, *args: torch.Tensor, params: dict | None) -> torch.Tensor:
        sub = sub_params(params, child)
        if not sub:
            return getattr(self, child)(*args)
        return functional_forward(getattr(self, child), sub, args)

    def view_errors(self, z: torch.Tensor, views: MaskedViews, targets: torch.Tensor,
                    params: dict | None = None) -> torch.Tensor:
        """Per view, the masked-patch squared error of decoding z [n, v, T, d] against targets [n, v, P, K]:
        [n, v]."""
        if z.dim() != 4 or not isinstance(views, MaskedViews) or tuple(views.shape) != tuple(z.shape[:2]):
            raise ValueError(f"MAE losses need token latents z [n, v, T, d] and the MaskedViews [n, v] they came "
                             f"from in ctx.views; got z {tuple(z.shape)} and {type(views).__name__}"
                             + (f" {tuple(views.shape)}" if isinstance(views, MaskedViews) else ""))
        n, v = z.shape[:2]
        masks = views.masks.flatten(0, 1)
        prediction = self.reconstruct(z.flatten(0, 1), masks, params)
        return masked_patch_errors(prediction, targets.flatten(0, 1), masks).view(n, v)

    def targets(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstruction targets [B, P, C·p²] of unmasked images [B, C, H, W]."""
        return patch_targets(images, self.patch_size, self.norm_pix_loss)

    # ---------------------------------------------------------------- losses (hooks)
    def support_loss(self, z: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        """Mean masked-patch error of the views ``ctx.views`` [n, v] against their own unmasked images."""
        views = ctx.views
        if not isinstance(views, MaskedViews):
            raise ValueError("MAE's support loss needs the masked views of z in ctx.views")
        targets = self.targets(views.images.flatten(0, 1)).unflatten(0, tuple(views.shape))
        return self.view_errors(z, views, targets, ctx.params).mean()

    def anchors(self, z_support: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        """The unmasked image of each support image, as reconstruction targets [n, P, C·p²] (D-TC-12)."""
        if not isinstance(ctx.views, MaskedViews):
            raise ValueError("MAE's anchors are the unmasked images of the support views: pass them in ctx.views")
        return self.targets(ctx.views.images[:, 0])

    def query_loss(self, z_query: torch.Tensor, anchors: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        """L_sse^q: mean masked-patch error of the query views ``ctx.views`` against the anchors (D-TC-12)."""
        n, v = z_query.shape[:2]
        targets = anchors.detach()[:, None].expand(n, v, *anchors.shape[1:])
        return self.view_errors(z_query, ctx.views, targets, ctx.params).mean()

    def training_loss(self, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The baseline: each of the two augmented views [N, 2, C, H, W] is one masked sample with its own mask.

        Returns (loss, per-view errors [N, 2]). MAE has no mask-free embedding to return; ``baseline_loss``
        reduces these errors for any subset of images (the baseline's conflict metric).
        """
        n, v = views.shape[:2]
        generator = torch.Generator().manual_seed(int(torch.randint(2 ** 62, ())))
        n_patches = self.backbone.grid_size(views.flatten(0, 1)) ** 2
        masked = MaskedViews(views, make_masks(n, v, n_patches, self.cfg.mask_ratio, generator).to(views.device))
        z = self.embed(masked.flatten(0, 1)).unflatten(0, (n, v))
        errors = self.view_errors(z, masked, self.targets(views.flatten(0, 1)).unflatten(0, (n, v)))
        return errors.mean(), errors

    def baseline_loss(self, z: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        """The baseline loss of the per-view errors [n, 2] that ``training_loss`` returned: their mean (each view
        has the same number of masked patches, so this is the mean over all masked patches)."""
        if z.dim() != 2:
            raise ValueError(f"MAE's baseline loss takes the per-view errors [n, v] of training_loss, got "
                             f"{tuple(z.shape)}")
        return z.mean()
