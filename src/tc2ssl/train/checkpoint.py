"""Atomic, pickle-free checkpoints and the safetensors encoder export.

A checkpoint is a ``torch.save`` of plain containers (dicts, lists, numbers, strings, tensors) written to a temporary
file in the same folder and moved over the old one with ``os.replace``, so a crash mid-write never leaves a broken
checkpoint. It is loaded with ``torch.load(weights_only=True)``: nothing but tensors and plain containers is
unpickled, so a checkpoint from elsewhere cannot run code.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from tc2ssl.errors import CheckpointError

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(file_object)`` on a temporary file next to ``path``, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _refused_write(exc, path) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _refused_write(exc, path) from None
        raise


def _refused_write(exc: OSError, path: Path) -> BaseException:
    """A full or read-only disk as a one-line RunFolderError (the old file at ``path`` is untouched); any other
    OSError as it is."""
    from tc2ssl.train.run_folder import DISK_ERRNOS, disk_error

    return disk_error(exc, path) if exc.errno in DISK_ERRNOS else exc


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda fh: fh.write(text.encode("utf-8")))


def save_checkpoint(path: Path, state: dict) -> None:
    state = {"format_version": FORMAT_VERSION, **state}
    atomic_write_bytes(Path(path), lambda fh: torch.save(state, fh))


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise CheckpointError(f"checkpoint {path} is corrupt or not a tc2ssl checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has an unknown format")
    for key, kind in RUN_STATE_TYPES.items():
        if key in state and not isinstance(state[key], kind):
            raise CheckpointError(f"checkpoint {path} is not a tc2ssl checkpoint: {key!r} is a "
                                  f"{type(state[key]).__name__}, expected {kind.__name__}")
    return state


#: the entries of a pretraining checkpoint and their types (checked on load; tensors by ``load_run_state``)
RUN_STATE_TYPES = {"config": dict, "epoch": int, "global_step": int, "method": dict, "plugin": dict,
                   "optimizer": dict, "scheduler": dict}


def require_run_state(state: dict, path: Path) -> None:
    """A pretraining checkpoint holds every entry of :data:`RUN_STATE_TYPES` and finite weights."""
    missing = [key for key in RUN_STATE_TYPES if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is not a tc2ssl pretraining checkpoint (missing "
                              f"{', '.join(missing)})")
    bad = first_non_finite(state["method"])
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} holds non-finite weights ({bad}); it cannot be resumed")


def first_non_finite(tensors: dict) -> str | None:
    """The name of the first floating-point tensor in ``tensors`` holding NaN or inf, else None."""
    for name, value in tensors.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
            return str(name)
    return None


def export_encoder(path: Path, backbone, metadata: dict) -> None:
    """Write the backbone's weights as safetensors, with torchvision parameter names for torchvision models."""
    from safetensors.torch import save

    prefix = getattr(backbone, "export_prefix", "")
    tensors = {}
    for name, tensor in backbone.state_dict().items():
        if prefix and name.startswith(prefix):
            name = name[len(prefix):]
        tensors[name] = tensor.detach().cpu().contiguous()
    meta = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in metadata.items()}
    blob = save(tensors, metadata=meta)
    atomic_write_bytes(Path(path), lambda fh: fh.write(blob))


def load_encoder_weights(path: Path) -> tuple[dict, dict]:
    """(tensors, metadata) of an exported encoder."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no encoder weights at {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None
    bad = first_non_finite(tensors)
    if bad is not None:
        raise CheckpointError(f"{path} holds non-finite weights ({bad}); it cannot be evaluated")
    return tensors, meta


def encoder_input_format(meta: dict, path: Path) -> tuple[int, int]:
    """(in_channels, resolution) from an encoder export's metadata, validated."""
    missing = [key for key in ENCODER_METADATA if key not in meta]
    if missing:
        raise CheckpointError(f"{path} is not a tc2ssl encoder export: its metadata lacks {', '.join(missing)}")
    try:
        channels, resolution = int(meta["in_channels"]), int(meta["resolution"])
    except ValueError:
        raise CheckpointError(f"{path}: metadata in_channels / resolution are not integers") from None
    if channels not in (1, 3) or not 1 <= resolution <= 4096:
        raise CheckpointError(f"{path}: metadata in_channels={channels} / resolution={resolution} are out of range "
                              "(1 or 3 channels, 1..4096 pixels)")
    return channels, resolution


#: the metadata every encoder export carries (written by :func:`export_encoder`)
ENCODER_METADATA = ("backbone", "in_channels", "resolution")
