"""``.npz`` image arrays: a user's own file (``npz``) and the ../shared/data sets by name.

Format (../shared/data/README.md): ``images`` uint8, N×H×W (grey) or N×H×W×3 (RGB); ``labels`` integer N,
optional. ``data.name=npz`` reads ``data.root``: a .npz file (train only) or a folder with ``train.npz`` and an
optional labelled ``test.npz``.

The shared sets are read from :func:`shared_data_root` (data.root, else $TC2SSL_DATA, else ../shared/data):

* ``mnist``: digits/mnist_{train,test}.npz (14,262 / 10,000, 28×28 grey). Without those files it falls back to
  torchvision's MNIST (downloaded when data.download=true).
* ``usps``: digits/usps_{train,test}.npz (7,291 / 2,007, 16×16 grey). At data.resolution 0 or 28 each digit is
  framed like MNIST (D-BM-01 D3): resized to 20×20 and zero-padded by 4 pixels to 28×28, so USPS digits sit in
  the same central box as MNIST digits. Any other resolution is a plain resize of the 16×16 image.
* ``mnistm``: digits/mnistm_test.npz, the only MNIST-M split available (9,001, 32×32 RGB). It is split into a
  fixed stratified train/test of 7,000 / 2,001 (scikit-learn ``train_test_split``, random_state=0). Default
  resolution 28, so MNIST -> MNIST-M runs at 28×28 with data.channels=3.
* ``cifar10_subset``: cifar10_subset/{train,test}.npz (4,660 / 846 genuine CIFAR-10 images, 32×32 RGB).
"""
from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tc2ssl.data.base import DataSplits, ImageSet
from tc2ssl.data.sources import SOURCES, convert_channels, finish, resize_images, shared_data_root, stratified_split
from tc2ssl.data.torchvision_sets import mnist_torchvision
from tc2ssl.errors import DataError

DIGIT_CLASSES = [str(i) for i in range(10)]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
NPZ_FORMAT = "save it with numpy.savez(path, images=uint8 N×H×W or N×H×W×3, labels=int N)"

USPS_BOX, MNIST_SIZE = 20, 28  # MNIST digits sit in a 20×20 box centred in 28×28
MNISTM_TEST_SIZE, MNISTM_SPLIT_SEED = 2001, 0

Arrays = tuple[torch.Tensor, torch.Tensor | None]


def read_npz(path: Path) -> Arrays:
    """Read one .npz and validate it: ``images`` -> uint8 [N, C, H, W]; ``labels`` -> int64 [N] or None."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file; {NPZ_FORMAT}")
    try:
        check_declared_sizes(path)
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DataError(f"{path}: a single .npy array, not an .npz archive; {NPZ_FORMAT}")
        with archive:
            if "images" not in archive.files:
                raise DataError(f"{path}: no 'images' array (found {', '.join(archive.files) or 'none'}); {NPZ_FORMAT}")
            images = archive["images"]
            labels = archive["labels"] if "labels" in archive.files else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc}); {NPZ_FORMAT}") from exc
    return validate_images(path, images), validate_labels(path, labels, len(images))


#: the largest image side (pixels) an .npz may hold
MAX_IMAGE_SIDE = 4096
#: class indices must be below max(number of images, this): a larger index means a class list longer than the data
MIN_CLASS_LIMIT = 1000


def check_declared_sizes(path: Path) -> None:
    """Refuse an archive member whose .npy header declares more bytes than the member holds, before numpy
    allocates the declared shape (a small file could otherwise claim terabytes)."""
    if not zipfile.is_zipfile(path):
        return   # np.load reports what it is
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(member)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(member)
                else:
                    raise DataError(f"{path}: {info.filename} uses .npy format version {version}; save it with "
                                    "numpy.savez (version 1.0)")
            declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if declared > info.file_size:
                raise DataError(f"{path}: {info.filename} declares shape {tuple(shape)} ({declared} bytes) but holds "
                                f"only {info.file_size} bytes; the file is damaged or crafted")


def validate_images(path: Path, images: np.ndarray) -> torch.Tensor:
    if images.dtype != np.uint8:
        raise DataError(f"{path}: 'images' must be uint8 (0..255), got {images.dtype}; convert e.g. with "
                        "(x * 255).round().astype(numpy.uint8) for floats in [0, 1]")
    if images.ndim == 3:
        tensor = torch.from_numpy(images).unsqueeze(1)
    elif images.ndim == 4 and images.shape[-1] in (1, 3):
        tensor = torch.from_numpy(images).permute(0, 3, 1, 2)
    else:
        raise DataError(f"{path}: 'images' must be N×H×W (grey) or N×H×W×3 (RGB), got shape {images.shape}")
    if tensor.shape[0] == 0:
        raise DataError(f"{path}: 'images' holds no images")
    if not all(1 <= side <= MAX_IMAGE_SIDE for side in tensor.shape[-2:]):
        raise DataError(f"{path}: images of {tensor.shape[-2]}×{tensor.shape[-1]} pixels; each side must lie in "
                        f"1..{MAX_IMAGE_SIDE}")
    return tensor.contiguous()


def validate_labels(path: Path, labels: np.ndarray | None, n_images: int) -> torch.Tensor | None:
    if labels is None:
        return None
    if not np.issubdtype(labels.dtype, np.integer) or labels.ndim != 1:
        raise DataError(f"{path}: 'labels' must be a 1-D integer array, got {labels.dtype} with shape {labels.shape}")
    if len(labels) != n_images:
        raise DataError(f"{path}: {n_images} images but {len(labels)} labels")
    if labels.size == 0:
        return torch.from_numpy(labels.astype(np.int64))
    low, high = int(labels.min()), int(labels.max())   # Python ints: exact for uint64 too
    if low < 0:
        raise DataError(f"{path}: 'labels' must be class indices >= 0, found {low}")
    limit = max(n_images, MIN_CLASS_LIMIT)
    if high >= limit:
        raise DataError(f"{path}: class index {high} is too large for {n_images} images; class indices must be "
                        f"below max(number of images, {MIN_CLASS_LIMIT}) = {limit} (number the classes 0, 1, 2, ...)")
    return torch.from_numpy(labels.astype(np.int64))


def build_splits(name: str, train: Arrays, test: Arrays | None, cfg, default_resolution: int,
                 classes: list[str] | None) -> DataSplits:
    """Apply data.resolution / data.channels; the test split gets the training split's channel count."""
    train_images = finish(train[0], cfg, default_resolution)
    train_set = ImageSet(train_images, train[1], classes if train[1] is not None else None, f"{name}-train")
    if test is None:
        return DataSplits(train=train_set)
    test_images = convert_channels(finish(test[0], cfg, default_resolution), train_images.shape[1])
    return DataSplits(train=train_set, test=ImageSet(test_images, test[1], classes, f"{name}-test"))


@SOURCES.register("npz")
def load_npz(cfg) -> DataSplits:
    """A .npz file (train only) or a folder with train.npz and optional test.npz; default resolution: native."""
    if not cfg.root:
        raise DataError("data.name=npz needs data.root: a .npz file, or a folder with train.npz (and test.npz)")
    root = Path(cfg.root).expanduser()
    if root.is_dir():
        if not (root / "train.npz").exists():
            raise DataError(f"{root}: no train.npz in this folder; data.root must be a .npz file or a folder with "
                            "train.npz (and optionally test.npz)")
        train_path, test_path = root / "train.npz", root / "test.npz"
    elif root.exists():
        train_path, test_path = root, None
    else:
        raise DataError(f"{root}: not found; data.root must be a .npz file or a folder with train.npz")
    train = read_npz(train_path)
    test = read_npz(test_path) if test_path is not None and test_path.exists() else None
    if test is not None and test[1] is None:
        raise DataError(f"{test_path}: a test split needs 'labels'")
    labelled = [split[1] for split in (train, test) if split is not None and split[1] is not None]
    classes = [str(i) for i in range(max(int(y.max()) for y in labelled) + 1)] if labelled else None
    return build_splits(root.stem, train, test, cfg, train[0].shape[-2], classes)


def read_shared(cfg, name: str, relative: str) -> Arrays:
    """Read ``relative`` under the shared data root, with a 'where to put the files' error when it is absent."""
    path = shared_data_root(cfg.root) / relative
    if not path.exists():
        raise DataError(f"{name}: {path} not found; set data.root or TC2SSL_DATA to the folder that holds "
                        f"{relative} (the ../shared/data layout)")
    return read_npz(path)


@SOURCES.register("mnist")
def load_mnist(cfg) -> DataSplits:
    """MNIST from digits/mnist_{train,test}.npz; torchvision's MNIST when those files are absent."""
    root = shared_data_root(cfg.root)
    if not (root / "digits" / "mnist_train.npz").exists():
        try:
            return mnist_torchvision(cfg)
        except DataError as exc:
            raise DataError(f"mnist: {root / 'digits' / 'mnist_train.npz'} not found and torchvision's MNIST is "
                            f"unavailable ({exc}); set data.root or TC2SSL_DATA to the folder that holds "
                            "digits/mnist_train.npz") from exc
    train = read_shared(cfg, "mnist", "digits/mnist_train.npz")
    test = read_shared(cfg, "mnist", "digits/mnist_test.npz")
    return build_splits("mnist", train, test, cfg, MNIST_SIZE, DIGIT_CLASSES)


def frame_like_mnist(images: torch.Tensor) -> torch.Tensor:
    """Resize digits to 20×20 and zero-pad to 28×28: the MNIST framing (D-BM-01 D3)."""
    border = (MNIST_SIZE - USPS_BOX) // 2
    return F.pad(resize_images(images, USPS_BOX), (border, border, border, border))


@SOURCES.register("usps")
def load_usps(cfg) -> DataSplits:
    """USPS, framed like MNIST at resolution 0/28 (see the module docstring)."""
    train_images, train_labels = read_shared(cfg, "usps", "digits/usps_train.npz")
    test_images, test_labels = read_shared(cfg, "usps", "digits/usps_test.npz")
    if cfg.resolution in (0, MNIST_SIZE):
        train_images, test_images = frame_like_mnist(train_images), frame_like_mnist(test_images)
    return build_splits("usps", (train_images, train_labels), (test_images, test_labels), cfg, MNIST_SIZE,
                        DIGIT_CLASSES)


@SOURCES.register("mnistm")
def load_mnistm(cfg) -> DataSplits:
    """MNIST-M's test split, divided into a fixed stratified 7,000 / 2,001 train/test (random_state=0)."""
    images, labels = read_shared(cfg, "mnistm", "digits/mnistm_test.npz")
    if labels is None:
        raise DataError("mnistm: digits/mnistm_test.npz has no 'labels'")
    train_idx, test_idx = stratified_split(labels.numpy(), MNISTM_TEST_SIZE, MNISTM_SPLIT_SEED)
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return build_splits("mnistm", (images[train_idx], labels[train_idx]), (images[test_idx], labels[test_idx]),
                        cfg, MNIST_SIZE, DIGIT_CLASSES)


@SOURCES.register("cifar10_subset")
def load_cifar10_subset(cfg) -> DataSplits:
    """The genuine CIFAR-10 subset (4,660 train / 846 test, 32×32 RGB)."""
    train = read_shared(cfg, "cifar10_subset", "cifar10_subset/train.npz")
    test = read_shared(cfg, "cifar10_subset", "cifar10_subset/test.npz")
    return build_splits("cifar10_subset", train, test, cfg, 32, CIFAR10_CLASSES)
