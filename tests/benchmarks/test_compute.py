"""Equal-compute rows: the baseline's epochs are the plug-in's training seconds over the baseline's per epoch."""
import json

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


def test_controls_from_the_plugins_list_get_no_comparator(tmp_path):
    """``--plugins none,tc2,random_proj``: random_proj is slower than SimCLR but is compared with TC², not given
    SimCLR epochs of its own."""
    from tc2ssl.benchmarks.suites import plugin_row

    rows = [plugin_row(spec) for spec in ("none", "tc2", "random_proj", "tasks_nf")]
    seconds = {"none": [10.0] * 4, "tc2": [26.0] * 4, "random_proj": [20.0] * 4, "tasks_nf": [15.0] * 4}
    runs = {label: {"0": {"run_dirs": [run_folder(tmp_path / label, s)]}} for label, s in seconds.items()}
    matches, new_rows = match_compute(rows, runs, "0")
    assert [m.row for m in matches] == ["tc2"] and [r.label for r in new_rows] == ["none@tc2"]
