"""ImageNet weights for ``model.pretrained=true``, loaded by tc2ssl itself and never executed.

torchvision's own path (``weights.get_state_dict()``) unpickles an already cached file with
``torch.load(weights_only=False)`` and no hash check, so a crafted file in ``$TORCH_HOME/hub/checkpoints`` would
run code. Here the cached file (torchvision's file name, in the same folder) is used only after its sha256 starts
with the hash prefix that torchvision's file name carries (``resnet18-f37072fd.pth``: ``f37072fd``), as
``torch.hub``'s ``check_hash`` does, and it is read with ``torch.load(weights_only=True)``: tensors and plain
containers only. A missing file is downloaded with ``torch.hub.download_url_to_file`` (which checks the same
hash); without internet the error says which file to put where.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from tc2ssl.errors import ConfigError
from tc2ssl.train.run_folder import file_sha256

#: torchvision's ``HASH_REGEX``: the hash prefix between the last '-' and the extension of a weights file name
_HASH_PREFIX_SEPARATOR = "-"


def hash_prefix(file_name: str) -> str:
    """The sha256 prefix a torchvision weights file name carries (``resnet50-11ad3fa6.pth`` -> ``11ad3fa6``)."""
    stem = file_name.split(".", 1)[0]
    prefix = stem.rsplit(_HASH_PREFIX_SEPARATOR, 1)[-1] if _HASH_PREFIX_SEPARATOR in stem else ""
    if len(prefix) < 8 or any(c not in "0123456789abcdef" for c in prefix):
        raise ConfigError(f"the weights file name {file_name!r} carries no sha256 prefix to check it against")
    return prefix


def weights_cache_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` (torch.hub's folder, shared with torchvision)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def cached_weights_file(url: str) -> Path:
    """Download ``url`` into the cache unless it is there; then check its hash. Returns the verified file."""
    name = url.rsplit("/", 1)[-1]
    expected = hash_prefix(name)
    path = weights_cache_dir() / name
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(path), hash_prefix=expected, progress=False)
        except Exception as exc:  # noqa: BLE001 - URLError, timeouts, a hash mismatch: all mean "no weights"
            if path.exists():
                os.unlink(path)
            reason = " ".join(str(exc).split())[:160]
            raise ConfigError(f"could not download the pretrained weights {url} ({type(exc).__name__}: {reason}); "
                              f"offline, download that file elsewhere and copy it to {path}, or use "
                              "model.pretrained=false") from None
    actual = file_sha256(path)
    if not actual.startswith(expected):
        raise ConfigError(f"{path} is not the published file (its sha256 starts {actual[:len(expected)]}, the name "
                          f"promises {expected}); delete it (it is re-downloaded) or replace it with the file from "
                          f"{url}")
    return path


def load_verified_state_dict(url: str) -> dict[str, torch.Tensor]:
    """The state dict at ``url`` from its hash-checked cached copy, unpickling tensors only."""
    path = cached_weights_file(url)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a file that passed the hash check but does not load
        raise ConfigError(f"{path} could not be read as weights ({type(exc).__name__}); delete it to re-download "
                          "it") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path} does not hold a state dict of tensors")
    return state


def load_torchvision_weights(net: torch.nn.Module, weights) -> None:
    """Load torchvision ``weights`` (a ``WeightsEnum`` member) into ``net``, built with ``weights=None``."""
    state = load_verified_state_dict(weights.url)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(f"the pretrained weights {weights.url} do not fit the model "
                          f"({str(exc).splitlines()[0][:200]})") from None
