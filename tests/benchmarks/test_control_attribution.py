"""The attribution table of a benchmark with TC²'s controls: TC² − control, paired over seeds, per method."""
import pytest

from tc2ssl.benchmarks.suites import controls_markdown, tc2_against_controls


def _row(label, plugin, baseline="none", overrides=()):
    return {"label": label, "plugin": plugin, "overrides": list(overrides), "baseline": baseline}


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
    assert set(controls) == {"tc2 − tc2_frozen", "tc2 − random_proj", "byol/tc2 − byol/tc2_frozen"}
    assert controls["tc2 − tc2_frozen"]["tc2"] == "tc2" and controls["byol/tc2 − byol/tc2_frozen"]["tc2"] == "byol/tc2"
    assert controls["byol/tc2 − byol/tc2_frozen"]["control"] == "byol/tc2_frozen"
    # hand computed: tc2 − tc2_frozen per seed = 0.02, 0.04, 0.00 → mean 0.02
    assert controls["tc2 − tc2_frozen"]["acc"]["differences"] == pytest.approx([0.02, 0.04, 0.0])
    assert controls["tc2 − tc2_frozen"]["acc"]["mean"] == pytest.approx(0.02)
    assert controls["tc2 − random_proj"]["acc"]["mean"] == pytest.approx(-0.01)      # the control is ahead by a point
    assert controls["byol/tc2 − byol/tc2_frozen"]["acc"]["differences"] == pytest.approx([0.8, 0.7, 0.6])


def test_a_calibrator_variant_is_paired_with_the_default_controls_unless_it_has_its_own():
    calibrated = _row("tc2 preset=calibrated", "tc2", overrides=["plugin.weight_mode=shrink", "plugin.factor_init=pca"])
    other_k = _row("tc2 K=2", "tc2", overrides=["plugin.n_tasks=2"])
    beta = _row("tc2 plugin.beta1=0.01", "tc2", overrides=["plugin.beta1=0.01"])
    beta_frozen = _row("tc2_frozen plugin.beta1=0.01", "tc2_frozen", overrides=["plugin.beta1=0.01"])
    runs = {**RUNS, **_runs({calibrated["label"]: [0.63, 0.69, 0.65], beta["label"]: [0.7, 0.7, 0.7],
                             beta_frozen["label"]: [0.6, 0.5, 0.7], other_k["label"]: [0.5, 0.5, 0.5]})}
    controls = tc2_against_controls([*ROWS, calibrated, beta, beta_frozen, other_k], runs, ["0", "1", "2"], ["acc"])
    # the calibrated variant has no controls of its settings: the default ones of its base (not BYOL's)
    assert controls["tc2 preset=calibrated − tc2_frozen"]["acc"]["differences"] == pytest.approx([0.05, 0.03, 0.0])
    assert controls["tc2 preset=calibrated − random_proj"]["acc"]["mean"] == pytest.approx(-0.0033333, abs=1e-6)
    assert "tc2 preset=calibrated − byol/tc2_frozen" not in controls
    # the β₁ variant has a control of its own settings, and only that one
    assert controls["tc2 plugin.beta1=0.01 − tc2_frozen plugin.beta1=0.01"]["acc"]["differences"] == \
        pytest.approx([0.1, 0.2, 0.0])
    assert "tc2 plugin.beta1=0.01 − tc2_frozen" not in controls
    # another task step (K = 2) is not compared with the K = 4 controls
    assert not any(label.startswith("tc2 K=2") for label in controls)
    assert len(controls) == 6
    lines = controls_markdown({"tc2_vs_controls": controls, "metrics": ["acc"], "primary": "acc"})
    assert any(line.startswith("| tc2 preset=calibrated − tc2_frozen | +2.67") for line in lines)


def test_markdown_reads_results_keyed_by_the_control_alone():
    old = {"tc2_frozen": {"tc2": "tc2", "acc": {"mean": 0.02, "ci_low": -0.03, "ci_high": 0.07,
                                               "differences": [0.02, 0.04, 0.0]}}}
    lines = controls_markdown({"tc2_vs_controls": old, "metrics": ["acc"], "primary": "acc"})
    assert any(line.startswith("| tc2 − tc2_frozen | +2.00") for line in lines)


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
    assert controls["tc2 − tc2_frozen"]["acc"]["mean"] == pytest.approx(0.02)


def test_calibrator_settings_are_plugin_keys_and_cover_the_calibrated_preset():
    import dataclasses

    from tc2ssl import config
    from tc2ssl.plugins.tc2_controls import CALIBRATOR_SETTINGS

    plugin_keys = {f"plugin.{field.name}" for field in dataclasses.fields(config.PluginConfig)}
    assert CALIBRATOR_SETTINGS <= plugin_keys
    # the task step's own keys are not calibrator settings: changing them changes what the controls run
    assert not {"plugin.n_tasks", "plugin.beta1", "plugin.n_factors", "plugin.stage2_mode"} & CALIBRATOR_SETTINGS
    # so that the row 'tc2 preset=calibrated' is paired with the default controls
    assert {item.split("=", 1)[0] for item in config.preset_overrides("calibrated")} <= CALIBRATOR_SETTINGS
