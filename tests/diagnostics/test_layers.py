"""Per-layer diagnostics: the rows of layers.csv, their invariants, the loop integration, resume and the report."""
import math

import pytest
import torch
import torch.nn.functional as F

from tc2ssl.config import load_config
from tc2ssl.data.augment import ViewMaker
from tc2ssl.data.base import DataSplits, ImageSet
from tc2ssl.diagnostics.coding_rate import coding_rate_reduction
from tc2ssl.diagnostics.layers import (LAYER_COLUMNS, LayerDiagnostics, layer_curves, peak_and_final, plot_layers,
                                       read_layers_csv, report_section, tap_features)
from tc2ssl.errors import ConfigError
from tc2ssl.models.backbones import SmallCNN
from tc2ssl.train.loop import pretrain

TINY_RUN = ["model.backbone=small_cnn_tiny", "train.batch_size=16", "data.max_train=32"]


def synthetic_splits(n_train=40, n_test=30, labelled=True) -> DataSplits:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n_train + n_test, 1, 8, 8), generator=gen, dtype=torch.uint8)
    labels = torch.arange(n_train + n_test) % 3 if labelled else None
    return DataSplits(train=ImageSet(images[:n_train], None if labels is None else labels[:n_train]),
                      test=ImageSet(images[n_train:], None if labels is None else labels[n_train:]))


def diag_config(tmp_path, *extra):
    return load_config((), [f"out={tmp_path}", "diag.layers_every=2", "diag.eval_size=20", "diag.bank_size=30",
                            "diag.instance_images=8", "train.epochs=5", *extra])


def test_rows_cover_every_tap_and_match_an_independent_computation(tmp_path):
    torch.manual_seed(0)
    backbone = SmallCNN(1, (4, 8, 8, 6))
    cfg = diag_config(tmp_path)
    diag = LayerDiagnostics(cfg, synthetic_splits(), ViewMaker("digits", 8, 1), tmp_path)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    backbone.train()
    rows = diag.measure(backbone, 3)
    assert backbone.training                                         # mode restored
    for name, value in backbone.state_dict().items():                # eval-mode BN: statistics untouched
        assert torch.equal(value, before[name]), name
    assert [r["layer"] for r in rows] == ["block1", "block2", "block3", "block4"]
    # block4 (width 6) from a plain eval-mode forward, ℓ2-normalised, in float64
    backbone.eval()
    with torch.no_grad():
        feats = backbone(diag.eval_images.float().div(127.5).sub(1.0))
    expected = coding_rate_reduction(F.normalize(feats.double(), dim=1), diag.eval_labels, 0.5)
    last = rows[-1]
    assert last["dR"] == pytest.approx(float(expected.dR), rel=1e-5)
    assert last["dR_per_dim"] == pytest.approx(last["dR"] / 6)
    assert last["R"] - last["Rc"] == pytest.approx(last["dR"])
    assert all(0.0 <= r["knn_acc"] <= 1.0 and r["dR"] >= -1e-9 and r["dR_instance"] >= -1e-9 for r in rows)
    assert all(math.isnan(r["linear_acc"]) for r in rows)            # probe off by default
    on_disk = read_layers_csv(tmp_path / "layers.csv")
    assert list(on_disk[0]) == list(LAYER_COLUMNS) and len(on_disk) == 4 and on_disk[0]["epoch"] == 3


def test_linear_probe_option_fills_linear_acc(tmp_path):
    cfg = diag_config(tmp_path, "diag.linear_probe=true", "diag.probe_max_iter=20")
    rows = LayerDiagnostics(cfg, synthetic_splits(), ViewMaker("digits", 8, 1), tmp_path).measure(
        SmallCNN(1, (4, 8, 8, 6)), 1)
    assert all(0.0 <= r["linear_acc"] <= 1.0 for r in rows)


def test_schedule_and_unlabelled_data(tmp_path):
    diag = LayerDiagnostics(diag_config(tmp_path), synthetic_splits(), ViewMaker("digits", 8, 1), tmp_path)
    assert [e for e in range(6) if diag.due(e)] == [0, 2, 4, 5]     # init, every 2nd, and the last epoch
    with pytest.raises(ConfigError, match="diag.layers_every"):
        LayerDiagnostics(diag_config(tmp_path), synthetic_splits(labelled=False), ViewMaker("digits", 8, 1), tmp_path)
    with pytest.raises(ConfigError, match="diag.layers_every"):
        load_config((), ["diag.layers_every=-1"])


def test_tap_features_are_unit_rows():
    feats = tap_features(SmallCNN(1, (4, 8, 8, 6)), torch.zeros(5, 1, 8, 8, dtype=torch.uint8) + 7, ("block2",))
    assert feats["block2"].shape == (5, 8)
    assert torch.allclose(feats["block2"].norm(dim=1), torch.ones(5), atol=1e-5)


def test_pretraining_writes_layers_csv_resumes_and_reports(tmp_path):
    cfg = load_config((), [*TINY_RUN, f"out={tmp_path}", "train.epochs=3", "diag.layers_every=2",
                           "diag.eval_size=40", "diag.bank_size=32", "diag.instance_images=8"])
    pretrain(cfg)
    rows = read_layers_csv(tmp_path / "layers.csv")
    assert sorted({r["epoch"] for r in rows}) == [0, 2, 3]
    assert len(rows) == 3 * 4
    # resuming after epoch 2 (the checkpoint says so) keeps rows up to epoch 2 and rewrites epoch 3 once
    diag = LayerDiagnostics(cfg, synthetic_splits(), ViewMaker("digits", 8, 1), tmp_path)
    diag.start(2)
    assert sorted({r["epoch"] for r in read_layers_csv(tmp_path / "layers.csv")}) == [0, 2]
    section = report_section(tmp_path)
    assert "block4" in section["Per-layer diagnostics"] and (tmp_path / "layers.png").is_file()


def test_curves_average_seeds_and_peak_detects_a_drop(tmp_path):
    rows = [{"epoch": e, "layer": "block4", "knn_acc": acc + 0.01 * seed, "linear_acc": math.nan, "R": 1.0,
             "Rc": 0.5, "dR": 0.5, "dR_per_dim": 0.1, "dR_instance": 1.0}
            for seed in (0, 1) for e, acc in ((0, 0.5), (1, 0.9), (2, 0.7))]
    epochs, means, stds = layer_curves(rows, "knn_acc")["block4"]
    assert epochs == [0, 1, 2] and means[1] == pytest.approx(0.905) and stds[1] == pytest.approx(0.01 / 2 ** 0.5)
    summary = peak_and_final(rows)["block4"]
    assert summary["best_epoch"] == 1 and summary["drop"] == pytest.approx(0.2)
    assert plot_layers(rows, tmp_path / "p.png").is_file()


def test_measuring_does_not_change_the_training(tmp_path):
    """The same run with and without diagnostics ends with bit-identical weights (no RNG draw, no BN update)."""
    from tc2ssl.train.checkpoint import CHECKPOINT_NAME, load_checkpoint

    common = [*TINY_RUN, "train.epochs=2", "diag.eval_size=40", "diag.bank_size=32", "diag.instance_images=8"]
    plain = pretrain(load_config((), [*common, f"out={tmp_path / 'off'}"]))
    measured = pretrain(load_config((), [*common, f"out={tmp_path / 'on'}", "diag.layers_every=1"]))
    a, b = load_checkpoint(plain / CHECKPOINT_NAME)["method"], load_checkpoint(measured / CHECKPOINT_NAME)["method"]
    assert (measured / "layers.csv").is_file() and not (plain / "layers.csv").exists()
    for key, value in a.items():
        assert torch.equal(value, b[key]), key
