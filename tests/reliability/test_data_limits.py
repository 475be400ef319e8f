"""Every input gets bounded work and memory, and every data precondition of the requested evaluation is checked
when the data is loaded, before pretraining: one line, exit status 2, nothing written."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from reliability_helpers import TINY, TINY_EVAL, assert_one_line_error


def write_npz(path: Path, **arrays) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def images(n: int, side: int = 8) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (n, side, side), dtype=np.uint8)


def npz_with_declared_shape(path: Path, shape: tuple) -> Path:
    """An .npz whose images.npy header declares ``shape`` but holds 64 bytes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("images.npy", header.getvalue() + bytes(64))
    return path


def pretrain_npz(cli, root: Path, out: Path, *extra: str):
    return cli("pretrain", *TINY, "train.batch_size=4", "data.name=npz", f"data.root={root}", f"out={out}", *extra)


@pytest.mark.parametrize("case, labels, fragment", [
    ("label 2^40", lambda n: np.r_[np.zeros(n - 1, np.int64), 2 ** 40], "class index 1099511627776 is too large"),
    ("uint64 >= 2^63", lambda n: np.r_[np.zeros(n - 1, np.uint64), np.uint64(2 ** 63 + 5)],
     "class index 9223372036854775813 is too large"),
    ("negative", lambda n: np.r_[np.zeros(n - 1, np.int64), -3], "must be class indices >= 0, found -3"),
])
def test_npz_labels_out_of_range_are_refused_before_allocating(case, labels, fragment, cli, tmp_path):
    root = write_npz(tmp_path / "data.npz", images=images(16), labels=labels(16))
    rc, _, err = pretrain_npz(cli, root, tmp_path / "run")
    assert_one_line_error(rc, err, fragment)
    assert not (tmp_path / "run").exists()


def test_an_npy_header_declaring_a_huge_shape_is_refused(cli, tmp_path):
    root = npz_with_declared_shape(tmp_path / "data.npz", (10 ** 9, 1000, 1000))
    rc, _, err = pretrain_npz(cli, root, tmp_path / "run")
    assert_one_line_error(rc, err, "declares shape (1000000000, 1000, 1000)", "holds only")


def test_npz_images_too_large_or_empty_sides_are_refused(cli, tmp_path):
    root = write_npz(tmp_path / "wide.npz", images=np.zeros((2, 1, 5000), np.uint8))
    rc, _, err = pretrain_npz(cli, root, tmp_path / "run")
    assert_one_line_error(rc, err, "1×5000 pixels", "1..4096")


def test_a_pickled_object_array_in_an_npz_is_refused(cli, tmp_path):
    root = write_npz(tmp_path / "data.npz", images=np.array([{"a": 1}, None], dtype=object))
    rc, _, err = pretrain_npz(cli, root, tmp_path / "run")
    assert_one_line_error(rc, err, "not a readable .npz file")


def test_a_huge_image_in_a_folder_is_refused(cli, tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    Image.new("L", (8, 8)).save(root / "small.png")
    Image.new("L", (6400, 6400)).save(root / "huge.png")          # 41 megapixels, a few KB as PNG
    rc, _, err = cli("pretrain", *TINY, "data.name=folder", f"data.root={root}", f"out={tmp_path / 'run'}")
    assert_one_line_error(rc, err, "huge.png", "6400×6400 pixels")


# the evaluation's preconditions, checked before pretraining (the run folder stays empty of training files)
def test_evaluation_without_a_test_split_fails_before_pretraining(cli, tmp_path):
    root = write_npz(tmp_path / "train_only.npz", images=images(32), labels=np.arange(32) % 4)
    rc, _, err = cli("pretrain", *TINY_EVAL, "data.name=npz", f"data.root={root}", f"out={tmp_path / 'run'}")
    assert_one_line_error(rc, err, "labelled dataset with a test split", "eval.enabled=false")
    assert not (tmp_path / "run" / "checkpoint.pt").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()


def test_evaluation_of_unlabelled_data_fails_before_pretraining(cli, tmp_path):
    root = tmp_path / "data"
    write_npz(root / "train.npz", images=images(32))
    rc, _, err = cli("pretrain", *TINY_EVAL, "data.name=npz", f"data.root={root}", f"out={tmp_path / 'run'}")
    assert_one_line_error(rc, err, "labelled dataset with a test split")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_evaluation_of_one_class_fails_before_pretraining(cli, tmp_path):
    root = tmp_path / "data"
    write_npz(root / "train.npz", images=images(32), labels=np.zeros(32, np.int64))
    write_npz(root / "test.npz", images=images(8), labels=np.zeros(8, np.int64))
    rc, _, err = cli("pretrain", *TINY_EVAL, "data.name=npz", f"data.root={root}", f"out={tmp_path / 'run'}")
    assert_one_line_error(rc, err, "at least 2 classes", "it holds 1")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_probe_subset_of_one_class_fails_before_pretraining(cli, tmp_path):
    """eval.max_train=2 draws 2 images of the same class (labels made so): refused before pretraining."""
    import torch

    from tc2ssl.data.base import ImageSet
    from tc2ssl.eval.evaluate import probe_training_subset

    numbered = ImageSet(torch.zeros(32, 1, 8, 8, dtype=torch.uint8), torch.arange(32))
    drawn = probe_training_subset(numbered, 2, 0).labels.numpy()     # the 2 images seed 0 draws
    labels = np.arange(32) % 2
    labels[drawn] = 0
    root = tmp_path / "data"
    write_npz(root / "train.npz", images=images(32), labels=labels)
    write_npz(root / "test.npz", images=images(8), labels=np.arange(8) % 2)
    rc, _, err = cli("pretrain", *TINY_EVAL, "eval.max_train=2", "data.name=npz", f"data.root={root}",
                     f"out={tmp_path / 'run'}")
    assert_one_line_error(rc, err, "the eval.max_train=2 images drawn for the probe hold 1")
    assert not (tmp_path / "run").exists()
