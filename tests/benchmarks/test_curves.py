"""Time-to-accuracy curves: points joined with the epoch records, replayed epochs overwritten, per-row means."""
import json

import torch

from tc2ssl import config as config_mod
from tc2ssl.benchmarks.curves import CURVE_FILE, read_curve
from tc2ssl.benchmarks.suites import SuiteContext, mean_curve, pretrain_backbone
from tc2ssl.data import load_data


def write_lines(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_read_curve_joins_knn_with_cumulative_seconds_and_images(tmp_path):
    write_lines(tmp_path / CURVE_FILE, [{"epoch": -1, "knn": 0.1}, {"epoch": 1, "knn": 0.3}, {"epoch": 1, "knn": 0.4}])
    write_lines(tmp_path / "metrics.jsonl", [{"kind": "epoch", "epoch": 0, "step": 4, "seconds": 2.0},
                                             {"kind": "step", "epoch": 1, "step": 5},
                                             {"kind": "epoch", "epoch": 1, "step": 8, "seconds": 3.0}])
    assert read_curve(tmp_path, 32) == [{"epoch": 0, "knn": 0.1, "seconds": 0.0, "images": 0},
                                        {"epoch": 2, "knn": 0.4, "seconds": 5.0, "images": 256}]


def test_mean_curve_sums_folders_and_averages_seeds():
    seed0 = {"grey": [{"epoch": 1, "knn": 0.2, "seconds": 1.0, "images": 10}],
             "rgb": [{"epoch": 1, "knn": 0.4, "seconds": 2.0, "images": 10}]}
    seed1 = {"grey": [{"epoch": 1, "knn": 0.4, "seconds": 3.0, "images": 10}],
             "rgb": [{"epoch": 1, "knn": 0.6, "seconds": 4.0, "images": 10}]}
    (point,) = mean_curve([seed0, seed1])
    assert point["epoch"] == 1 and abs(point["knn"] - 0.4) < 1e-12 and point["seconds"] == 5.0
    assert point["images"] == 20


def test_the_knn_hook_records_every_epoch_and_leaves_training_unchanged(tmp_path):
    """The per-epoch kNN neither changes the trained weights nor misses an epoch; point 0 is the initialisation."""
    overrides = ["model.backbone=small_cnn_tiny", "data.max_train=96", "train.batch_size=32", "train.epochs=3",
                 "train.progress=false"]
    with_curve = config_mod.load_config((), [*overrides, f"out={tmp_path / 'a'}"])
    without = config_mod.load_config((), [*overrides, f"out={tmp_path / 'b'}"])
    data = load_data(with_curve.data)
    curved, run_dir = pretrain_backbone(with_curve, data, SuiteContext({"curve_every": 1, "curve_images": 64},
                                                                       torch.device("cpu")))
    plain, _ = pretrain_backbone(without, data, SuiteContext({}, torch.device("cpu")))
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in curved.state_dict().items())
    points = read_curve(run_dir, 32)
    assert [p["epoch"] for p in points] == [0, 1, 2, 3] and all(0.0 <= p["knn"] <= 1.0 for p in points)
    assert points[-1]["images"] == 3 * 3 * 32 and not (tmp_path / "b" / CURVE_FILE).exists()
