"""The attribution table of a benchmark with TC²'s controls: TC² − control, paired over seeds, per method."""
import pytest

from tc2ssl.benchmarks.suites import controls_markdown, tc2_against_controls


def _row(label, plugin, baseline="none"):
    return {"label": label, "plugin": plugin, "overrides": [], "baseline": baseline}


def _runs(values_by_label):
    return {label: {str(seed): {"metrics": {"acc": value}} for seed, value in enumerate(values)}
            for label, values in values_by_label.items()}


ROWS = [_row("none", "none"), _row("tc2", "tc2"), _row("tc2_frozen", "tc2_frozen"), _row("random_proj", "random_proj"),
        _row("byol/none", "none", "byol/none"), _row("byol/tc2", "tc2", "byol/none"),
        _row("byol/tc2_frozen", "tc2_frozen", "byol/none")]
RUNS = _runs({"none": [0.50, 0.60, 0.55], "tc2": [0.60, 0.70, 0.65], "tc2_frozen": [0.58, 0.66, 0.65],
              "random_proj": [0.61, 0.71, 0.66], "byol/none": [0.4, 0.4, 0.4], "byol/tc2": [0.9, 0.9, 0.9],
              "byol/tc2_frozen": [0.1, 0.2, 0.3]})


def test_each_control_is_paired_with_the_tc2_row_of_its_own_method():
    controls = tc2_against_controls(ROWS, RUNS, ["0", "1", "2"], ["acc"])
    assert set(controls) == {"tc2_frozen", "random_proj", "byol/tc2_frozen"}
    assert controls["tc2_frozen"]["tc2"] == "tc2" and controls["byol/tc2_frozen"]["tc2"] == "byol/tc2"
    # hand computed: tc2 − tc2_frozen per seed = 0.02, 0.04, 0.00 → mean 0.02
    assert controls["tc2_frozen"]["acc"]["differences"] == pytest.approx([0.02, 0.04, 0.0])
    assert controls["tc2_frozen"]["acc"]["mean"] == pytest.approx(0.02)
    assert controls["random_proj"]["acc"]["mean"] == pytest.approx(-0.01)      # the control is ahead by a point
    assert controls["byol/tc2_frozen"]["acc"]["differences"] == pytest.approx([0.8, 0.7, 0.6])


def test_no_tc2_row_means_no_table():
    rows = [r for r in ROWS if r["label"] not in ("tc2", "byol/tc2")]
    assert tc2_against_controls(rows, RUNS, ["0", "1", "2"], ["acc"]) == {}


def test_markdown_recomputes_the_table_for_results_written_before_it_existed():
    result = {"rows": ROWS, "runs": RUNS, "seeds": [0, 1, 2], "metrics": ["acc"], "primary": "acc"}
    lines = controls_markdown(result)
    row = next(line for line in lines if line.startswith("| tc2 − tc2_frozen"))
    assert "+2.00" in row and "+2.00, +4.00, +0.00" in row
    assert any(line.startswith("| byol/tc2 − byol/tc2_frozen | +70.00") for line in lines)


def test_rows_written_with_only_label_and_plugin_pair_against_none():
    rows = [{"label": "none", "plugin": "none"}, {"label": "tc2", "plugin": "tc2"},
            {"label": "tc2_frozen", "plugin": "tc2_frozen"}]
    controls = tc2_against_controls(rows, RUNS, ["0", "1", "2"], ["acc"])
    assert controls["tc2_frozen"]["acc"]["mean"] == pytest.approx(0.02)
