"""Time-to-accuracy curves: points joined with the epoch records, replayed epochs overwritten, per-row means."""
import json

import pytest

import torch

from tc2ssl import config as config_mod
from tc2ssl.benchmarks.curves import CURVE_FILE, read_curve, time_to_reach
from tc2ssl.benchmarks.suites import (Row, SuiteContext, baseline_time_to_accuracy, mean_curve, pretrain_backbone,
                                      time_to_accuracy_markdown)
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


def curve(*points: tuple[float, float, float]) -> list[dict]:
    return [{"epoch": e, "knn": k, "seconds": t, "images": 100 * e} for e, (k, t, _) in enumerate(points)]


def record(points: list[dict]) -> dict:
    """A run record with one pretraining folder's time-to-accuracy curve."""
    return {"curve": {"run": points}}


def test_time_to_reach_interpolates_the_first_crossing():
    points = curve((0.1, 0.0, 0), (0.5, 10.0, 0), (0.7, 20.0, 0), (0.6, 30.0, 0), (0.9, 40.0, 0))
    # 0.6 is crossed between 0.5 (10 s, 100 images) and 0.7 (20 s, 200 images): halfway
    assert time_to_reach(points, 0.6) == {"seconds": 15.0, "images": 150.0}
    assert time_to_reach(points, 0.7) == {"seconds": 20.0, "images": 200.0}    # a point that equals it
    assert time_to_reach(points, 0.05) == {"seconds": 0.0, "images": 0.0}
    assert time_to_reach(points, 0.95) is None


def test_time_to_the_base_accuracy_is_paired_by_seed_and_counts_seeds_that_never_reach_it():
    """Seed 0: the base ends at 0.8 after 40 s; the row passes 0.8 halfway between 10 s and 20 s. Seed 1: the
    base ends at 0.9 (reached at 40 s); the row ends at 0.85, never."""
    runs = {"none": {"0": record(curve((0.1, 0, 0), (0.5, 20, 0), (0.8, 40, 0))),
                     "1": record(curve((0.1, 0, 0), (0.6, 20, 0), (0.9, 40, 0)))},
            "gessl": {"0": record(curve((0.1, 0, 0), (0.7, 10, 0), (0.9, 20, 0))),
                      "1": record(curve((0.1, 0, 0), (0.7, 30, 0), (0.85, 60, 0)))}}
    times = baseline_time_to_accuracy([Row("none", "none"), Row("gessl", "gessl")], runs, ["0", "1"])
    gessl = times["gessl"]
    assert (gessl["reached"], gessl["seeds"]) == (1, 2)
    assert gessl["row_seconds"] == pytest.approx(15.0) and gessl["base_seconds_of_reached"] == pytest.approx(40.0)
    assert gessl["base_seconds"] == pytest.approx(40.0) and gessl["target_knn"] == pytest.approx(0.85)
    assert "none" not in times
    table = "\n".join(time_to_accuracy_markdown({"time_to_baseline": times}))
    assert "| gessl | none | 85.00 | 87.50 | 1/2 | 40 (200) | 15 (150) | 40 |" in table


def test_a_post_hoc_runs_curve_starts_at_the_run_it_continues(tmp_path):
    """A post-hoc run (train.init_from) starts from a finished run's weights, so its point 0 is that run's last
    point, not a random initialisation (which would draw a jump from untrained accuracy)."""
    overrides = ["model.backbone=small_cnn_tiny", "data.max_train=96", "train.batch_size=32", "train.progress=false"]
    base_cfg = config_mod.load_config((), [*overrides, "train.epochs=2", f"out={tmp_path / 'base'}"])
    data = load_data(base_cfg.data)
    ctx = SuiteContext({"curve_every": 1, "curve_images": 64}, torch.device("cpu"))
    _, base_dir = pretrain_backbone(base_cfg, data, ctx)
    post_cfg = config_mod.load_config((), [*overrides, "train.epochs=1", f"train.init_from={base_dir}",
                                           f"out={tmp_path / 'post'}"])
    _, post_dir = pretrain_backbone(post_cfg, data, ctx)
    base_points, post_points = read_curve(base_dir, 32), read_curve(post_dir, 32)
    assert post_points[0]["knn"] == base_points[-1]["knn"] != base_points[0]["knn"]
    assert (post_points[0]["seconds"], post_points[0]["images"]) == (0.0, 0)


def test_a_base_that_ends_below_its_untrained_start_is_flagged_not_timed_as_zero():
    """The base's final kNN (0.25) is below its untrained point (0.3): every curve "reaches" it at 0 s, which the
    table must not present as a speed. One seed like that, one normal seed."""
    runs = {"byol/none": {"0": record(curve((0.3, 0, 0), (0.2, 20, 0), (0.25, 40, 0))),
                          "1": record(curve((0.1, 0, 0), (0.2, 20, 0), (0.4, 40, 0)))},
            "byol/tc2": {"0": record(curve((0.3, 0, 0), (0.28, 30, 0), (0.26, 60, 0))),
                         "1": record(curve((0.1, 0, 0), (0.2, 30, 0), (0.3, 60, 0)))}}
    rows = [Row("byol/none", "none", baseline="byol/none"), Row("byol/tc2", "tc2", baseline="byol/none")]
    times = baseline_time_to_accuracy(rows, runs, ["0", "1"])
    assert times["byol/tc2"]["base_no_gain"] == 1 and times["byol/tc2"]["reached"] == 1
    table = "\n".join(time_to_accuracy_markdown({"time_to_baseline": times}))
    assert "| byol/tc2 | byol/none † |" in table
    assert "† byol/none ends no higher than its untrained start (the kNN at 0 images) on 1 of 2 seed(s)" in table
    # a base that gains on every seed is not flagged
    runs["byol/none"]["0"] = record(curve((0.1, 0, 0), (0.2, 20, 0), (0.25, 40, 0)))
    times = baseline_time_to_accuracy(rows, runs, ["0", "1"])
    assert times["byol/tc2"]["base_no_gain"] == 0
    assert "†" not in "\n".join(time_to_accuracy_markdown({"time_to_baseline": times}))
