"""Numeric-format helpers for the training step: float32 regions under autocast, channels-last encoder inputs.

Under ``train.precision=bf16-mixed`` (or 16-mixed) the loop runs the step inside Fabric's autocast. The encoder's
convolutions and matmuls then run in bfloat16, but TC²'s statistics must not: S (mean and covariance), L_v's
orthogonality and reconstruction terms and L_w are computed in float32 (D-TC-33, half-precision statistics are a
source of NaNs). Casting the inputs up is not enough, because autocast casts a matmul's inputs down again; these
computations therefore run inside :func:`float32_region`, which switches autocast off for its block.

``train.channels_last`` (CUDA): the loop converts the model to channels-last memory; :func:`channels_last_views`
lays the views out the same way so that the convolutions see no layout conversion.
"""
from __future__ import annotations

import contextlib

import torch


def float32_region(device: torch.device | str | None = None):
    """A context in which autocast is off (for ``device``'s type), so float32 inputs stay float32.

    Outside autocast it costs nothing and changes nothing.
    """
    device_type = torch.device(device).type if device is not None else "cpu"
    if not torch.amp.is_autocast_available(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, enabled=False)


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, or in its own dtype when that is wider (float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def channels_last_views(views, enabled: bool):
    """Views [N, m, C, H, W] re-laid out so that ``views.flatten(0, 1)`` (and each [n, v, C, H, W] selection
    flattened the same way) is a channels-last [N·m, C, H, W] tensor; anything else is returned unchanged."""
    if not enabled or not isinstance(views, torch.Tensor) or views.dim() != 5:
        return views
    flat = views.flatten(0, 1).contiguous(memory_format=torch.channels_last)
    return flat.unflatten(0, views.shape[:2])


def encoder_input(x, enabled: bool):
    """A 4-D image batch in channels-last memory when ``enabled`` (a no-op when it already is)."""
    if not enabled or not isinstance(x, torch.Tensor) or x.dim() != 4:
        return x
    return x.contiguous(memory_format=torch.channels_last)
