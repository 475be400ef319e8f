"""The data-source registry and the embedded default (scikit-learn's bundled digits).

A source is a function ``load(cfg: DataConfig) -> DataSplits`` registered under its ``data.name``. Images come
back as uint8 [N, C, H, W] at ``cfg.resolution`` (0: the source's default) with ``cfg.channels`` channels
(0: native). Other sources live in their own files (npz and the ../shared/data sets, image folders and PACS,
torchvision's downloadable sets) and register here on import.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from tc2ssl.data.base import DataSplits, ImageSet
from tc2ssl.errors import DataError
from tc2ssl.registry import Registry

SOURCES: Registry[Callable] = Registry("data source", "data.name")

# default side length per source when data.resolution=0
DEFAULT_RESOLUTION = {"digits": 16}


def shared_data_root(root: str | None = None) -> Path:
    """Where the ../shared/data sets live: data.root, else $TC2SSL_DATA, else ../shared/data from the cwd."""
    if root:
        return Path(root)
    env = os.environ.get("TC2SSL_DATA")
    if env:
        return Path(env)
    for base in (Path.cwd(), *Path.cwd().parents):
        candidate = base / "shared" / "data"
        if candidate.is_dir():
            return candidate
        candidate = base.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return Path("../shared/data")


def resize_images(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Resize uint8 [N, C, H, W] to resolution x resolution (bilinear with antialias), staying uint8."""
    if resolution <= 0 or (images.shape[-1] == resolution and images.shape[-2] == resolution):
        return images
    out = []
    for chunk in images.split(2048):
        r = F.interpolate(chunk.float(), size=(resolution, resolution), mode="bilinear", antialias=True,
                          align_corners=False)
        out.append(r.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey -> RGB by replication, RGB -> grey by ITU-R 601 luma; 0 keeps the native channels."""
    c = images.shape[1]
    if channels in (0, c):
        return images
    if c == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    if c == 3 and channels == 1:
        w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    raise DataError(f"cannot convert {c}-channel images to {channels} channels")


def finish(images: torch.Tensor, cfg, default_resolution: int = 0) -> torch.Tensor:
    """Apply data.resolution and data.channels to uint8 [N, C, H, W] images."""
    res = cfg.resolution or default_resolution
    return convert_channels(resize_images(images, res), cfg.channels)


def stratified_split(labels: np.ndarray, test_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    train_idx, test_idx = train_test_split(idx, test_size=test_size, stratify=labels, random_state=seed)
    return np.sort(train_idx), np.sort(test_idx)


@SOURCES.register("digits")
def load_digits(cfg) -> DataSplits:
    """scikit-learn's bundled 1,797 real 8x8 digits (no download), a fixed stratified 1200/597 split (D0)."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = torch.from_numpy((bunch.images / 16.0 * 255.0).round().astype(np.uint8)).unsqueeze(1)  # [N,1,8,8]
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = stratified_split(labels, test_size=597, seed=0)
    images = finish(images, cfg, DEFAULT_RESOLUTION["digits"])
    classes = [str(i) for i in range(10)]
    labels_t = torch.from_numpy(labels)
    return DataSplits(
        train=ImageSet(images[train_idx], labels_t[train_idx], classes, "digits-train"),
        test=ImageSet(images[test_idx], labels_t[test_idx], classes, "digits-test"),
    )


def load_data(cfg) -> DataSplits:
    """Load ``cfg.name`` with the source's registered loader; apply ``cfg.max_train``."""
    loader = SOURCES.get(cfg.name)
    splits = loader(cfg)
    if not isinstance(splits, DataSplits):
        raise TypeError(f"data source {cfg.name!r} returned {type(splits)}, expected DataSplits")
    if cfg.max_train and len(splits.train) > cfg.max_train:
        g = torch.Generator().manual_seed(0)
        keep = torch.randperm(len(splits.train), generator=g)[: cfg.max_train].sort().values
        splits.train = splits.train.subset(keep)
    return splits


# Sources in their own files register on import.
for _module in ("tc2ssl.data.npz", "tc2ssl.data.folder", "tc2ssl.data.torchvision_sets", "tc2ssl.data.colored_mnist"):
    try:
        importlib.import_module(_module)
    except ModuleNotFoundError as _exc:  # pragma: no cover - a file not written yet
        if _exc.name != _module:
            raise
