"""Frozen-backbone feature extraction: the input to every evaluation protocol (linear probe, kNN, few-shot, per-layer
probes).

Images are mapped with :func:`tc2ssl.data.base.to_unit` (the one input normalisation, the same as in training)
and passed through ``backbone.forward`` in eval mode (BatchNorm uses its running statistics, so a feature does
not depend on the batch it was computed in) without autograd. The backbone is left as it was found: same
train/eval mode, same device.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from tc2ssl.data.base import to_unit


def _module_device(module: nn.Module) -> torch.device | None:
    """The device of the module's first parameter or buffer (None for a module without tensors)."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return None


@torch.no_grad()
def extract_features(backbone: nn.Module, images: torch.Tensor, batch_size: int = 512,
                     device: str | torch.device = "cpu", taps: Sequence[str] | None = None
                     ) -> torch.Tensor | dict[str, torch.Tensor]:
    """Pooled backbone features of uint8 images [N, C, H, W], as a float32 CPU tensor [N, D]; with ``taps``, a dict
    of the named layers' pooled features (``backbone.forward_features(x, taps)``) {tap: [N, D_tap]}.

    The backbone runs in eval mode on ``device`` in batches of ``batch_size``; its previous train/eval mode and
    device are restored afterwards (also when the forward pass raises).
    """
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"images must be a uint8 tensor [N, C, H, W], got {getattr(images, 'dtype', type(images))} "
                         f"with shape {tuple(getattr(images, 'shape', ()))}")
    if images.shape[0] == 0:
        raise ValueError("no images to extract features from")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    was_training = backbone.training
    original_device = _module_device(backbone)
    dtype = next((p.dtype for p in backbone.parameters() if p.is_floating_point()), torch.float32)
    backbone.eval()
    if original_device is not None and original_device != device:
        backbone.to(device)
    try:
        chunks: dict[str, list[torch.Tensor]] = {}
        for start in range(0, images.shape[0], batch_size):
            batch = to_unit(images[start:start + batch_size].to(device)).to(dtype)   # float64 backbones too
            outputs = {"": backbone(batch)} if taps is None else backbone.forward_features(batch, taps)
            for name, feats in outputs.items():
                if feats.dim() != 2 or feats.shape[0] != batch.shape[0]:
                    raise ValueError(f"backbone must return pooled features [N, D]; for a batch of {batch.shape[0]} "
                                     f"images {name or 'forward'} returned shape {tuple(feats.shape)}")
                chunks.setdefault(name, []).append(feats.float().cpu())
    finally:
        backbone.train(was_training)
        if original_device is not None and original_device != device:
            backbone.to(original_device)
    features = {name: torch.cat(parts) for name, parts in chunks.items()}
    return features[""] if taps is None else features
