"""Batched view augmentation on the training device (kornia), m views per image (D-SSL-02).

All views of a batch come from ONE call of a kornia pipeline on the [N*m] stacked images, so TC²'s m views cost
one batched op per transform. Asymmetric recipes (``byol``) have one pipeline per view group: view v uses
recipe v mod (number of recipes), each group in one call. Multi-crop (``swav``): views 0 and 1 are global crops and
the rest local crops, one call per group. Randomness comes from an explicit seed per call
(``torch.random.fork_rng`` + ``manual_seed``): a step's views depend only on (run seed, epoch, step), which is what
makes resumed runs bit-identical.
"""
from __future__ import annotations

import contextlib

import kornia.augmentation as K
import torch
import torch.nn as nn

from tc2ssl.errors import ConfigError

DIGIT_SOURCES = {"digits", "mnist", "usps", "mnistm", "svhn", "colored_mnist", "mnist_torchvision"}
PRESETS = ("digits", "cifar", "imagenet", "none", "byol", "swav")
#: presets whose views alternate between recipes (view v uses recipe v mod len): BYOL (Grill et al. 2020, Table 6):
#: view 1 always blurred and never solarised, view 2 blurred with p = 0.1 and solarised with p = 0.2
VIEW_RECIPES = {"byol": ("byol_view1", "byol_view2")}
#: multi-crop presets (SwAV, Caron et al. 2020, §3.2): views 0 and 1 are global crops, every further view a local
#: crop (``data.local_views`` of them for the baseline). All views have the output resolution: the view tensor has
#: one shape, so the local crops are resized to it (SwAV renders them at 96 px instead of 224 to save compute;
#: here they cost as much as a global view).
MULTI_CROP = {"swav": ("swav_global", "swav_local")}
#: crop scales of the multi-crop recipes (SwAV's defaults: global (0.14, 1), local (0.05, 0.14))
MULTI_CROP_SCALES = {"swav_global": (0.14, 1.0), "swav_local": (0.05, 0.14)}
N_GLOBAL_VIEWS = 2


def recipe_groups(preset: str, n_views: int) -> list[list[int]]:
    """The views each recipe of ``preset`` makes, recipe by recipe: one group for a single-recipe preset, view v mod
    len for an alternating one (BYOL), [0, 1] and [2, ..., m − 1] for multi-crop (SwAV)."""
    if preset in MULTI_CROP:
        return [list(range(min(N_GLOBAL_VIEWS, n_views))), list(range(N_GLOBAL_VIEWS, n_views))]
    recipes = VIEW_RECIPES.get(preset, (preset,))
    return [list(range(recipe, n_views, len(recipes))) for recipe in range(len(recipes))]
#: kornia RandomResizedCrop cropping modes (``data.crop_mode``); auto = resample on CUDA, slice elsewhere
CROP_MODES = ("auto", "slice", "resample")


def auto_preset(data_name: str, channels: int, resolution: int) -> str:
    """The augmentation preset for a data source: digits get no flips; small RGB gets the CIFAR recipe."""
    if data_name in DIGIT_SOURCES or channels == 1:
        return "digits"
    return "cifar" if resolution <= 48 else "imagenet"


def build_augmentation(preset: str, resolution: int, channels: int, crop_mode: str = "slice") -> nn.Module:
    """A kornia pipeline mapping float [B, C, H, W] in [0, 1] to augmented views in [0, 1]; ``crop_mode`` is the
    random-resized crop's ``cropping_mode`` (slice or resample, see :func:`crop_mode_for`)."""
    size = (resolution, resolution)
    colour = channels == 3
    if preset == "none":
        return nn.Identity()
    if preset == "digits":
        ops: list[nn.Module] = [
            K.RandomResizedCrop(size, scale=(0.5, 1.0), ratio=(0.8, 1.25), cropping_mode=crop_mode),
            K.RandomAffine(degrees=12.0, translate=(0.08, 0.08), p=0.7),
        ]
        if colour:
            ops.append(K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8))
            ops.append(K.RandomGrayscale(p=0.2))
        else:
            ops.append(K.ColorJitter(brightness=0.4, contrast=0.4, p=0.8))
        return nn.Sequential(*ops)
    if preset in ("cifar", "imagenet"):
        ops = [K.RandomResizedCrop(size, scale=(0.2, 1.0) if preset == "cifar" else (0.08, 1.0),
                                   cropping_mode=crop_mode),
               K.RandomHorizontalFlip()]
        if colour:
            ops += [K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8), K.RandomGrayscale(p=0.2)]
        else:
            ops.append(K.ColorJitter(brightness=0.4, contrast=0.4, p=0.8))
        if preset == "imagenet":
            kernel = max(3, (resolution // 10) | 1)
            ops.append(K.RandomGaussianBlur((kernel, kernel), (0.1, 2.0), p=0.5))
        return nn.Sequential(*ops)
    if preset in VIEW_RECIPES["byol"]:
        blur_p, solarize_p = (1.0, 0.0) if preset == "byol_view1" else (0.1, 0.2)
        kernel = max(3, (resolution // 10) | 1)
        ops = [K.RandomResizedCrop(size, scale=(0.08, 1.0), cropping_mode=crop_mode), K.RandomHorizontalFlip()]
        if colour:
            ops += [K.ColorJitter(0.4, 0.4, 0.2, 0.1, p=0.8), K.RandomGrayscale(p=0.2)]
        else:
            ops.append(K.ColorJitter(brightness=0.4, contrast=0.4, p=0.8))
        ops.append(K.RandomGaussianBlur((kernel, kernel), (0.1, 2.0), p=blur_p))
        if solarize_p:
            ops.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=solarize_p))   # threshold 0.5
        return nn.Sequential(*ops)
    if preset in MULTI_CROP_SCALES:     # SwAV's multi-crop: its SimCLR-style colour distortion on every crop
        ops = [K.RandomResizedCrop(size, scale=MULTI_CROP_SCALES[preset], cropping_mode=crop_mode),
               K.RandomHorizontalFlip()]
        if colour:
            ops += [K.ColorJitter(0.8, 0.8, 0.8, 0.2, p=0.8), K.RandomGrayscale(p=0.2)]
        else:
            ops.append(K.ColorJitter(brightness=0.4, contrast=0.4, p=0.8))
        kernel = max(3, (resolution // 10) | 1)
        ops.append(K.RandomGaussianBlur((kernel, kernel), (0.1, 2.0), p=0.5))
        return nn.Sequential(*ops)
    raise ConfigError(f"data.augment={preset!r} is not allowed; valid values: auto, {', '.join(PRESETS)}")


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | str = "cpu"):
    """Run a block under a fixed global RNG seed, restoring the previous RNG state afterwards."""
    device = torch.device(device)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def crop_mode_for(mode: str, device: torch.device | str) -> str:
    """The kornia cropping mode ``data.crop_mode`` means on ``device``.

    ``slice`` (kornia's default) crops and resizes each image in a Python loop, one interpolate call per view (512
    calls per TC² step at N·m = 512); ``resample`` warps the whole stack in one batched call. The two give the
    same views from the same random draws up to float rounding (max |Δ| ≈ 1e-5 on [0, 1] pixels, tested). On a
    GPU the loop is launch-bound, hence ``auto`` = ``resample`` on CUDA; on the CPU the loop is about as fast
    (faster at 32 px) and keeps earlier CPU runs bit-reproducible, hence ``slice`` there.
    """
    if mode not in CROP_MODES:
        raise ConfigError(f"data.crop_mode={mode!r} is not allowed; valid values: {', '.join(CROP_MODES)}")
    if mode == "auto":
        return "resample" if torch.device(device).type == "cuda" else "slice"
    return mode


class ViewMaker:
    """Makes ``n_views`` augmented views of a uint8 batch: [N, C, H, W] -> float [N, m, C, H, W] in [-1, 1]."""

    def __init__(self, preset: str, resolution: int, channels: int, crop_mode: str = "auto"):
        crop_mode_for(crop_mode, "cpu")   # validates
        self.preset, self.resolution, self.channels, self.crop_mode = preset, resolution, channels, crop_mode
        self.recipes = MULTI_CROP.get(preset) or VIEW_RECIPES.get(preset, (preset,))
        self.dtype = torch.float32
        self._pipelines: dict[tuple[str, int], nn.Module] = {}   # by (cropping mode, recipe), built on first use

    def pipeline_for(self, device: torch.device | str, recipe: int = 0) -> nn.Module:
        """The kornia pipeline of view recipe ``recipe`` this view maker runs on ``device`` (its crop mode resolved
        there)."""
        key = (crop_mode_for(self.crop_mode, device), recipe)
        if key not in self._pipelines:
            pipeline = build_augmentation(self.recipes[recipe], self.resolution, self.channels, key[0])
            self._pipelines[key] = pipeline.to(self.dtype)
        return self._pipelines[key]

    def set_dtype(self, dtype: torch.dtype) -> "ViewMaker":
        """Make views in ``dtype`` (float64 for ``train.precision=64-true``; the random parameters are then drawn in
        float64 too, a different but equally seeded stream)."""
        self.dtype = dtype
        for pipeline in self._pipelines.values():
            pipeline.to(dtype)
        return self

    def __call__(self, images: torch.Tensor, n_views: int, seed: int,
                 rows: torch.Tensor | None = None) -> torch.Tensor:
        """Views of ``images`` [N, C, H, W]; with ``rows`` (image indices), only the views of ``images[rows]``,
        bit-identical to those rows of the views of the whole batch (for multi-process training: every process
        draws the random parameters of the whole batch, a few numbers per image, and transforms only its own
        images)."""
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"expected uint8 images [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if len(self.recipes) == 1:
            return self._views(self.pipeline_for(images.device), images, n_views, seed, rows)
        n_out = images.shape[0] if rows is None else rows.numel()
        views = torch.empty(n_out, n_views, *images.shape[1:], dtype=self.dtype, device=images.device)
        for recipe, group in enumerate(recipe_groups(self.preset, n_views)):
            if group:
                group_seed = seed if recipe == 0 else step_seed(seed, 0, 0, stream=100 + recipe)
                views[:, group] = self._views(self.pipeline_for(images.device, recipe), images, len(group),
                                              group_seed, rows)
        return views

    def _views(self, pipeline: nn.Module, images: torch.Tensor, n_views: int, seed: int,
               rows: torch.Tensor | None) -> torch.Tensor:
        """``n_views`` views of ``images`` (or of ``images[rows]``) through one pipeline, in one call."""
        if rows is not None:
            return self._views_of_rows(pipeline, images, n_views, seed, rows)
        n = images.shape[0]
        x = images.to(self.dtype).div_(255.0)
        stacked = x.unsqueeze(0).expand(n_views, *x.shape).reshape(n_views * n, *x.shape[1:])
        with seeded(seed, images.device), torch.no_grad():
            views = pipeline(stacked).clamp_(0.0, 1.0)
        views = views.view(n_views, n, *x.shape[1:]).transpose(0, 1)  # [N, m, C, H, W]
        return views.mul(2.0).sub_(1.0).contiguous()

    def _views_of_rows(self, pipeline: nn.Module, images: torch.Tensor, n_views: int, seed: int,
                       rows: torch.Tensor) -> torch.Tensor:
        n = images.shape[0]
        rows = rows.to(torch.long).cpu()
        x = images[rows.to(images.device)].to(self.dtype).div_(255.0)
        k = x.shape[0]
        stacked = x.unsqueeze(0).expand(n_views, *x.shape).reshape(n_views * k, *x.shape[1:])
        # the rows of the view-major stack [m·N] of the whole batch that belong to images[rows]
        stack_rows = (torch.arange(n_views)[:, None] * n + rows[None, :]).reshape(-1)
        whole_batch_shape = torch.Size((n_views * n, *x.shape[1:]))
        with seeded(seed, images.device), torch.no_grad():
            out = stacked
            for op in _ops(pipeline):
                params = op.forward_parameters(whole_batch_shape)   # the same draws as a whole-batch call
                out = op(out, params=_params_of_rows(params, stack_rows, whole_batch_shape[0], out.shape))
            views = out.clamp_(0.0, 1.0)
        views = views.view(n_views, k, *x.shape[1:]).transpose(0, 1)  # [k, m, C, H, W]
        return views.mul(2.0).sub_(1.0).contiguous()


#: kornia parameters that are not per sample: the shape the op was called on, and ColorJitter's op order
_SHARED_PARAMS = {"order"}


def _ops(pipeline: nn.Module) -> list[nn.Module]:
    if isinstance(pipeline, nn.Identity):
        return []
    if not isinstance(pipeline, nn.Sequential):
        raise TypeError(f"views of selected rows need an nn.Sequential of kornia ops, got {type(pipeline).__name__}")
    return list(pipeline)


def _params_of_rows(params: dict, rows: torch.Tensor, batch: int, local_shape: torch.Size) -> dict:
    """The per-sample kornia parameters ``params`` of a ``batch``-row call, restricted to ``rows``."""
    selected = {}
    for key, value in params.items():
        if key == "forward_input_shape":
            selected[key] = torch.tensor(tuple(local_shape), dtype=value.dtype, device=value.device)
        elif key in _SHARED_PARAMS:
            selected[key] = value
        elif isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == batch:
            selected[key] = value[rows.to(value.device)]
        else:
            raise TypeError(f"kornia parameter {key!r} of shape {tuple(getattr(value, 'shape', ()))} is not per "
                            f"sample ({batch} rows); views of selected rows cannot be drawn for this pipeline")
    return selected


def step_seed(seed: int, epoch: int, step: int, stream: int = 0) -> int:
    """A 63-bit seed for (run seed, epoch, step, stream): independent streams, stable across resumes."""
    x = (seed * 1_000_003 + epoch) * 1_000_033 + step
    x = (x * 6364136223846793005 + 1442695040888963407 + stream * 0x9E3779B97F4A7C15) & ((1 << 64) - 1)
    x ^= x >> 33
    return x & ((1 << 63) - 1)
