"""Image folders (``folder``) and the PACS domain-generalisation benchmark (``pacs``).

``folder``: ``data.root`` holds either class sub-folders (``root/<class>/.../<file>``, classes in sorted name
order, like torchvision's ``ImageFolder``) or images directly (unlabelled: labels None, no test split). When the
root has both ``train/`` and ``test/`` sub-folders, they are the two splits (a labelled test folder is required;
class indices come from the sorted union of both splits' class names). Every image is decoded with PIL, converted
to RGB or grey per data.channels (0: RGB unless every image is grey) and resized, without keeping the aspect
ratio, to data.resolution × data.resolution (default 64). An unreadable image is an error naming the file.

``pacs``: PACS (Li et al., ICCV 2017) with its official split lists ``splits/<domain>_{train,crossval,test}_kfold.txt``
(lines ``domain/class/file label``, labels 1..7), read from data.root when it holds ``splits/``, else from
``<shared data root>/pacs``. See :func:`load_pacs`.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tc2ssl.data.base import DataSplits, ImageSet
from tc2ssl.data.sources import SOURCES, shared_data_root
from tc2ssl.errors import ConfigError, DataError

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
FOLDER_DEFAULT_RESOLUTION = 64
#: the most pixels one image may have once decoded (JPEGs count after their reduced-scale draft): memory per image
#: stays bounded (8 decoding threads x 40 M pixels x 3 bytes < 1 GB)
MAX_DECODED_PIXELS = 40_000_000

PACS_DOMAINS = ("photo", "art_painting", "cartoon", "sketch")
PACS_CLASSES = ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")
PACS_SPLITS = ("train", "crossval", "test")
PACS_DEFAULT_RESOLUTION = 64


# ---------------------------------------------------------------------------------------------------- decoding
def decode_image(path: Path, resolution: int, channels: int) -> np.ndarray:
    """One image -> uint8 H×W (grey) or H×W×3 at resolution × resolution; channels 0 keeps grey images grey."""
    try:
        with Image.open(path) as image:
            mode = {1: "L", 3: "RGB"}.get(channels, "L" if image.mode in GREY_MODES else "RGB")
            image.draft(mode, (resolution, resolution))  # JPEG: decode at the smallest DCT scale >= resolution
            if image.size[0] * image.size[1] > MAX_DECODED_PIXELS:
                raise DataError(f"{path}: {image.size[0]}×{image.size[1]} pixels is more than this loader decodes "
                                f"({MAX_DECODED_PIXELS // 1_000_000} megapixels); shrink the image")
            image = image.convert(mode)
            if image.size != (resolution, resolution):
                image = image.resize((resolution, resolution), Image.Resampling.BILINEAR)
            return np.asarray(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot read this image ({exc}); remove or replace the file") from exc


def decode_images(paths: list[Path], resolution: int, channels: int) -> torch.Tensor:
    """Decode in parallel threads (PIL releases the GIL) -> uint8 [N, C, H, W].

    channels 0: 1 when every image is grey, else 3 (grey images are replicated to RGB).
    """
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        arrays = list(pool.map(lambda p: decode_image(p, resolution, channels), paths))
    out_channels = channels or (1 if all(a.ndim == 2 for a in arrays) else 3)
    out = np.empty((len(arrays), out_channels, resolution, resolution), dtype=np.uint8)
    for i, array in enumerate(arrays):
        out[i] = array if array.ndim == 2 else array.transpose(2, 0, 1)  # a grey H×W broadcasts over channels
    return torch.from_numpy(out)


# ---------------------------------------------------------------------------------------------------- folder
def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def scan_folder(root: Path) -> tuple[list[Path], list[str] | None]:
    """The image files of a folder and, when it has class sub-folders, each file's class name."""
    if not root.exists():
        raise DataError(f"{root}: folder not found")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; data.root must be an image folder (class/file or files directly)")
    loose = sorted(p for p in root.iterdir() if is_image(p))
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        if not loose:
            raise DataError(f"{root}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)} files directly in "
                            "it or in class sub-folders)")
        return loose, None
    if loose:
        raise DataError(f"{root}: holds both images and sub-folders; put every image in a class sub-folder "
                        f"(labelled) or none (unlabelled), e.g. {loose[0].name}")
    files, names = [], []
    for class_dir in class_dirs:
        class_files = sorted(p for p in class_dir.rglob("*") if is_image(p))
        if not class_files:
            raise DataError(f"{class_dir}: class folder without images (looked for {', '.join(IMAGE_EXTENSIONS)})")
        files += class_files
        names += [class_dir.name] * len(class_files)
    return files, names


def labels_for(names: list[str] | None, classes: list[str] | None) -> torch.Tensor | None:
    if names is None or classes is None:
        return None
    index = {name: i for i, name in enumerate(classes)}
    return torch.tensor([index[name] for name in names], dtype=torch.int64)


@SOURCES.register("folder")
def load_folder(cfg) -> DataSplits:
    """An image folder (see the module docstring); default resolution 64."""
    if not cfg.root:
        raise DataError("data.name=folder needs data.root: a folder of class sub-folders, or of images")
    root = Path(cfg.root).expanduser()
    resolution = cfg.resolution or FOLDER_DEFAULT_RESOLUTION
    has_splits = (root / "train").is_dir() and (root / "test").is_dir()
    train_files, train_names = scan_folder(root / "train" if has_splits else root)
    test_files, test_names = scan_folder(root / "test") if has_splits else ([], None)
    if has_splits and test_names is None:
        raise DataError(f"{root / 'test'}: a test split needs class sub-folders (test/<class>/<file>)")
    classes = sorted(set(train_names or []) | set(test_names or [])) or None
    images = decode_images(train_files + test_files, resolution, cfg.channels)
    n_train = len(train_files)
    train = ImageSet(images[:n_train], labels_for(train_names, classes), classes, f"{root.name}-train")
    if not has_splits:
        return DataSplits(train=train)
    test = ImageSet(images[n_train:], labels_for(test_names, classes), classes, f"{root.name}-test")
    return DataSplits(train=train, test=test)


# ---------------------------------------------------------------------------------------------------- PACS
@dataclass
class PacsDomain:
    """One PACS domain decoded once: its images and, per official split, indices into them and labels 0..6."""

    images: torch.Tensor
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]


# decoded domains per (root, domain, resolution, channels): repeated loads in one process skip decoding
_PACS_CACHE: dict[tuple[str, str, int, int], PacsDomain] = {}


def pacs_root(cfg) -> Path:
    """data.root when it holds splits/, else <shared data root>/pacs."""
    if cfg.root and (Path(cfg.root).expanduser() / "splits").is_dir():
        return Path(cfg.root).expanduser()
    root = shared_data_root(cfg.root) / "pacs"
    if not (root / "splits").is_dir():
        raise DataError(f"pacs: {root / 'splits'} not found; set data.root to the PACS folder (with splits/ and the "
                        "domain folders) or TC2SSL_DATA to the folder that holds pacs/")
    return root


def read_split_file(root: Path, domain: str, split: str) -> list[tuple[str, int]]:
    """(relative path, label 0..6) per line of the official list; every entry must resolve to a file."""
    path = root / "splits" / f"{domain}_{split}_kfold.txt"
    if not path.is_file():
        raise DataError(f"pacs: split file {path} not found")
    entries = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise DataError(f"{path}:{line_no}: expected 'domain/class/file label', got {line!r}")
        relative, file_label = parts[0], int(parts[1])
        class_name = Path(relative).parent.name
        folder_label = PACS_CLASSES.index(class_name) if class_name in PACS_CLASSES else None
        if 1 <= file_label <= len(PACS_CLASSES):
            label = file_label - 1
            if folder_label is not None and folder_label != label:
                raise DataError(f"{path}:{line_no}: label {file_label} does not match the class folder {class_name!r}")
        elif folder_label is not None:  # the official art_painting_crossval list labels one dog image 0
            label = folder_label
        else:
            raise DataError(f"{path}:{line_no}: label {file_label} is outside 1..{len(PACS_CLASSES)}")
        if not (root / relative).is_file():
            raise DataError(f"{path}:{line_no}: {root / relative} not found")
        entries.append((relative, label))
    if not entries:
        raise DataError(f"pacs: split file {path} is empty")
    return entries


def load_pacs_domain(root: Path, domain: str, resolution: int, channels: int) -> PacsDomain:
    """Decode every file named by the domain's three split lists once (cached per process)."""
    key = (str(root.resolve()), domain, resolution, channels)
    if key not in _PACS_CACHE:
        entries = {split: read_split_file(root, domain, split) for split in PACS_SPLITS}
        files = sorted({relative for split_entries in entries.values() for relative, _ in split_entries})
        position = {relative: i for i, relative in enumerate(files)}
        images = decode_images([root / relative for relative in files], resolution, channels)
        splits = {
            split: (torch.tensor([position[r] for r, _ in split_entries]),
                    torch.tensor([label for _, label in split_entries], dtype=torch.int64))
            for split, split_entries in entries.items()
        }
        _PACS_CACHE[key] = PacsDomain(images, splits)
    return _PACS_CACHE[key]


def selected_domains(names, key: str) -> list[str]:
    """Validated, de-duplicated domain names in the given order; empty -> all four."""
    chosen = list(dict.fromkeys(str(name) for name in names))
    unknown = [name for name in chosen if name not in PACS_DOMAINS]
    if unknown:
        raise ConfigError(f"{key}: unknown PACS domain {unknown[0]!r}; valid domains: {', '.join(PACS_DOMAINS)}")
    return chosen or list(PACS_DOMAINS)


@SOURCES.register("pacs")
def load_pacs(cfg) -> DataSplits:
    """PACS at data.resolution (default 64), RGB unless data.channels=1.

    train: the union of the official ``<domain>_train_kfold.txt`` lists of ``data.domains`` (empty: all four);
    test: the ``<domain>_test_kfold.txt`` lists of ``data.test_domains`` (empty: all four). ``groups`` holds the
    domain index into (photo, art_painting, cartoon, sketch), ``group_names`` those names. ``extra`` holds
    ``<domain>_train``, ``<domain>_crossval`` and ``<domain>_test`` for every domain (per-domain probes).
    """
    train_domains = selected_domains(cfg.domains, "data.domains")
    test_domains = selected_domains(cfg.test_domains, "data.test_domains")
    root = pacs_root(cfg)
    resolution = cfg.resolution or PACS_DEFAULT_RESOLUTION
    channels = cfg.channels or 3
    decoded = {domain: load_pacs_domain(root, domain, resolution, channels) for domain in PACS_DOMAINS}

    def image_set(domains: list[str], split: str, name: str) -> ImageSet:
        images, labels, groups = [], [], []
        for domain in domains:
            index, domain_labels = decoded[domain].splits[split]
            images.append(decoded[domain].images[index])
            labels.append(domain_labels)
            groups.append(torch.full((len(index),), PACS_DOMAINS.index(domain), dtype=torch.int64))
        return ImageSet(torch.cat(images), torch.cat(labels), list(PACS_CLASSES), name, torch.cat(groups),
                        list(PACS_DOMAINS))

    extra = {f"{domain}_{split}": image_set([domain], split, f"pacs-{domain}-{split}")
             for domain in PACS_DOMAINS for split in PACS_SPLITS}
    return DataSplits(train=image_set(train_domains, "train", "pacs-train"),
                      test=image_set(test_domains, "test", "pacs-test"), extra=extra)
