"""Equal-compute rows: the baseline's epochs are the plug-in's training seconds over the baseline's per epoch."""
import json
from pathlib import Path

import pytest

from tc2ssl.benchmarks.compute import match_compute
from tc2ssl.benchmarks.suites import Row


def run_folder(path, seconds_per_epoch: list[float]) -> str:
    path.mkdir(parents=True)
    lines = [{"kind": "step", "epoch": 0, "step": 0, "loss": 1.0}]
    lines += [{"kind": "epoch", "epoch": e, "step": e + 1, "seconds": s} for e, s in enumerate(seconds_per_epoch)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(path)


def test_equal_compute_epochs_follow_measured_seconds(tmp_path):
    rows = [Row("random_init", "none", untrained=True), Row("none", "none"), Row("tasks", "tasks"),
            Row("tc2", "tc2"), Row("tc2 K=8", "tc2", ("plugin.n_tasks=8",), equal_compute=False)]
    seconds = {"random_init": [], "none": [10.0, 10.0, 10.0, 10.0], "tasks": [10.4] * 4, "tc2": [26.0] * 4,
               "tc2 K=8": [40.0] * 4}
    runs = {label: {"0": {"run_dirs": [run_folder(tmp_path / label, s)] if s else []}}
            for label, s in seconds.items()}
    matches, new_rows = match_compute(rows, runs, "0")
    by_row = {m.row: m for m in matches}
    assert set(by_row) == {"tasks", "tc2"}           # not random_init, not the baseline, not the K variant
    assert by_row["tasks"].comparator == "none" and by_row["tasks"].epochs == 4   # 41.6 s / 10 s per epoch -> 4
    assert by_row["tc2"].comparator == "none@tc2" and by_row["tc2"].epochs == 10  # 104 s / 10 s per epoch
    assert new_rows == [Row("none@tc2", "none", ("train.epochs=10",), "none", equal_compute=False)]


def test_two_pretrainings_per_run_are_summed(tmp_path):
    rows = [Row("none", "none"), Row("tc2", "tc2")]
    folders = {"none": [("n1", [5.0, 5.0]), ("n2", [7.0, 7.0])], "tc2": [("t1", [9.0, 9.0]), ("t2", [15.0, 15.0])]}
    runs = {label: {"0": {"run_dirs": [run_folder(tmp_path / name, seconds) for name, seconds in pairs]}}
            for label, pairs in folders.items()}
    matches, new_rows = match_compute(rows, runs, "0")
    assert matches[0].epochs == 4 and matches[0].baseline_seconds_per_epoch == 12.0   # 48 s / (24 s / 2 epochs)
    assert new_rows[0].overrides == ("train.epochs=4",)


def test_rows_with_the_same_compute_share_one_comparator(tmp_path):
    rows = [Row("none", "none"), Row("tc2", "tc2"), Row("tc2_frozen", "tc2_frozen"), Row("gessl", "gessl")]
    seconds = {"none": [10.0] * 4, "tc2": [26.0] * 4, "tc2_frozen": [25.0] * 4, "gessl": [60.0] * 4}
    runs = {label: {"0": {"run_dirs": [run_folder(tmp_path / label, s)]}} for label, s in seconds.items()}
    matches, new_rows = match_compute(rows, runs, "0")
    by_row = {m.row: m for m in matches}
    assert by_row["tc2_frozen"].epochs == 10 and by_row["tc2_frozen"].comparator == "none@tc2"   # 100 s -> 10
    assert by_row["gessl"].comparator == "none@gessl" and by_row["gessl"].epochs == 24
    assert [r.label for r in new_rows] == ["none@tc2", "none@gessl"]


def test_rows_within_the_timing_noise_share_a_comparator_and_keep_their_own_epochs(tmp_path):
    """colored_mnist's timing: tasks 2.04 and tasks beta1=0.01 1.93 SimCLR steps (25 and 23 epochs of 12) share one
    comparator of 25 epochs; tc2 at 35 and 36 share one of 35; 30 epochs is 14% from 35 and gets its own."""
    rows = [Row("none", "none"), Row("tasks", "tasks"), Row("tc2", "tc2"),
            Row("tasks b", "tasks", ("plugin.beta1=0.01",)), Row("tc2 b", "tc2", ("plugin.beta1=0.01",)),
            Row("gessl", "gessl")]
    seconds = {"none": [10.0] * 12, "tasks": [20.8] * 12, "tc2": [29.2] * 12, "tasks b": [19.2] * 12,
               "tc2 b": [30.0] * 12, "gessl": [25.0] * 12}
    runs = {label: {"0": {"run_dirs": [run_folder(tmp_path / label, s)]}} for label, s in seconds.items()}
    matches, new_rows = match_compute(rows, runs, "0")
    by_row = {m.row: m for m in matches}
    assert [(by_row[r].comparator, by_row[r].epochs, by_row[r].measured_epochs) for r in by_row] == [
        ("none@tasks", 25, 25), ("none@tc2", 35, 35), ("none@tasks", 25, 23), ("none@tc2", 35, 36),
        ("none@gessl", 30, 30)]
    assert [(r.label, r.overrides) for r in new_rows] == [
        ("none@tasks", ("train.epochs=25",)), ("none@tc2", ("train.epochs=35",)), ("none@gessl", ("train.epochs=30",))]
    assert by_row["tasks b"].as_dict()["measured_epochs"] == 23


def test_controls_from_the_plugins_list_get_no_comparator(tmp_path):
    """``--plugins none,tc2,random_proj``: random_proj is slower than SimCLR but is compared with TC², not given
    SimCLR epochs of its own."""
    from tc2ssl.benchmarks.suites import plugin_row

    rows = [plugin_row(spec) for spec in ("none", "tc2", "random_proj", "tasks_nf")]
    seconds = {"none": [10.0] * 4, "tc2": [26.0] * 4, "random_proj": [20.0] * 4, "tasks_nf": [15.0] * 4}
    runs = {label: {"0": {"run_dirs": [run_folder(tmp_path / label, s)]}} for label, s in seconds.items()}
    matches, new_rows = match_compute(rows, runs, "0")
    assert [m.row for m in matches] == ["tc2"] and [r.label for r in new_rows] == ["none@tc2"]


def test_step_timing_gives_each_row_its_cost_against_its_baseline_timed_in_the_same_rounds(tmp_path):
    """seconds(R) = Σ_f median(t_R/t_B)·median(t_B)·steps(R_f); one timing per (baseline, folder) with every new row
    in it; the measurement is kept in OUT/equal_compute.json and reused; a row added later is timed alone with
    its baseline again."""
    from tc2ssl.benchmarks.compute import TIMING_FILE, step_timing_seconds

    step_s = {"none": 1.0, "tasks": 1.1, "tc2": 1.5, "gessl": 2.0}   # per step, per folder
    calls = []

    def fake_timer(run_dirs, rounds):
        labels = [Path(d).parent.name for d in run_dirs]
        calls.append(labels)
        load = [1.0 + 0.5 * r for r in range(rounds)]    # the machine slows down round after round
        return [[step_s[label] * factor for factor in load] for label in labels]

    def steps_folder(label, folder, steps):
        path = tmp_path / label / folder
        run_folder(path, [1.0] * 4)
        lines = path.joinpath("metrics.jsonl").read_text().splitlines()
        path.joinpath("metrics.jsonl").write_text("\n".join([*lines[:-1], json.dumps(
            {"kind": "epoch", "epoch": 3, "step": steps, "seconds": 1.0})]) + "\n")
        return str(path)

    labels = ["none", "tasks", "tc2", "gessl"]
    runs = {label: {"0": {"run_dirs": [steps_folder(label, "grey", 40), steps_folder(label, "rgb", 40)]}}
            for label in labels}
    rows = [Row(label, label) for label in labels[:3]]
    seconds = step_timing_seconds(rows, runs, "0", tmp_path, rounds=3, timer=fake_timer)
    assert calls == [["none", "tasks", "tc2"]] * 2          # one interleaved set per folder
    assert seconds["tasks"] == pytest.approx((2 * 1.1 * 1.5 * 40, 2 * 1.5 * 40))   # median load factor 1.5
    assert seconds["tc2"] == pytest.approx((2 * 1.5 * 1.5 * 40, 2 * 1.5 * 40))
    matches, new_rows = match_compute(rows, runs, "0", seconds)
    assert {m.row: m.epochs for m in matches} == {"tasks": 4, "tc2": 6}     # 4 epochs × 1.1 → 4, × 1.5 → 6
    assert new_rows == [Row("none@tc2", "none", ("train.epochs=6", "plugin.conflict_every=0"), "none",
                            equal_compute=False)]
    assert json.loads((tmp_path / TIMING_FILE).read_text())["tc2"]["baseline"] == "none"

    calls.clear()
    rows.append(Row("gessl", "gessl"))
    again = step_timing_seconds(rows, runs, "0", tmp_path, rounds=3, timer=fake_timer)
    assert calls == [["none", "gessl"]] * 2                  # the stored rows are not timed again
    assert again["tc2"] == seconds["tc2"] and again["gessl"][0] == pytest.approx(2 * 2.0 * 1.5 * 40)


def test_step_timing_of_real_runs_rebuilds_their_configs_and_leaves_the_folders_alone(tmp_path):
    """The interleaved timer on two finished tiny pretrainings: positive times per round, and the run folders are
    not written to (no checkpoint, metrics or lock touched)."""
    from tc2ssl import config as config_mod
    from tc2ssl.benchmarks.compute import time_training_steps
    from tc2ssl.train.loop import pretrain

    dirs = []
    for plugin in ("none", "tasks"):
        cfg = config_mod.load_config((), ["model.backbone=small_cnn_tiny", "data.max_train=64",
                                          "train.batch_size=32", "train.epochs=1", "train.progress=false",
                                          f"plugin.name={plugin}", f"out={tmp_path / plugin}"])
        dirs.append(pretrain(cfg))
    before = {p: p.stat().st_mtime_ns for d in dirs for p in Path(d).rglob("*")}
    times = time_training_steps(dirs, rounds=3, warmup=1)
    assert len(times) == 2 and all(len(t) == 3 and min(t) > 0 for t in times)
    assert {p: p.stat().st_mtime_ns for d in dirs for p in Path(d).rglob("*")} == before


def test_the_conflict_diagnostic_changes_no_weight(tmp_path):
    """Comparators matched on step timing train with plugin.conflict_every=0; that is the same training only if the
    diagnostic's extra gradients leave the weights alone: two tiny SimCLR runs, with and without it, end
    bit-identical."""
    import torch

    from tc2ssl import config as config_mod
    from tc2ssl.train.checkpoint import CHECKPOINT_NAME
    from tc2ssl.train.loop import pretrain

    states = []
    for every in (1, 0):
        cfg = config_mod.load_config((), ["model.backbone=small_cnn_tiny", "data.max_train=64", "train.batch_size=32",
                                          "train.epochs=2", "train.progress=false", f"plugin.conflict_every={every}",
                                          f"out={tmp_path / str(every)}"])
        run_dir = pretrain(cfg)
        states.append(torch.load(Path(run_dir) / CHECKPOINT_NAME, weights_only=False)["method"])
    with_diagnostic, without = states
    assert with_diagnostic.keys() == without.keys()
    assert all(torch.equal(with_diagnostic[k], without[k]) for k in without)
    assert (tmp_path / "1" / "metrics.jsonl").read_text().count("conflict/cos_mean") > 0
    assert (tmp_path / "0" / "metrics.jsonl").read_text().count("conflict/cos_mean") == 0


def test_the_results_table_names_the_matching_and_a_shared_comparators_own_epochs():
    from tc2ssl.benchmarks.suites import compute_markdown

    interval = {"mean": 0.01, "ci_low": -0.02, "ci_high": 0.04}
    result = {"metrics": ["average"], "options": {"equal_compute": 2},
              "equal_compute": {"tasks": {"comparator": "none@tasks", "epochs": 25, "row_seconds": 300.0,
                                          "measured_epochs": 25},
                                "tasks b": {"comparator": "none@tasks", "epochs": 25, "row_seconds": 280.0,
                                            "measured_epochs": 23}},
              "paired_compute": {"tasks": {"average": interval}, "tasks b": {"average": interval}}}
    lines = compute_markdown(result)
    assert "each method's step cost" in lines[1]
    assert lines[-2].startswith("| tasks | none@tasks (25) | 300 |")
    assert lines[-1].startswith("| tasks b | none@tasks (25; this row's own match 23) | 280 |")
    result["options"]["equal_compute"] = 1
    assert "training wall-clock of the first seed" in compute_markdown(result)[1]
