"""Bad configs are refused before any work, as one line naming the key (exit status 2): non-finite and absurd
numbers, cross-field constraints a step relies on, malformed / duplicate-key / !!python / empty YAML."""
from __future__ import annotations

from pathlib import Path

import pytest
from reliability_helpers import TINY, assert_one_line_error

# (overrides, fragments of the one-line message)
BAD_VALUES = {
    "lr nan": (["train.lr=nan"], ["train.lr=nan", "not a finite number"]),
    "lr inf": (["train.lr=inf"], ["train.lr=inf", "not a finite number"]),
    "lr absurd": (["train.lr=1e6"], ["train.lr=1000000.0", "[0, 10]"]),
    "temperature nan": (["method.temperature=nan"], ["method.temperature=nan"]),
    "temperature 1e-30": (["method.temperature=1e-30"], ["method.temperature=1e-30", "[0.001, 1000]"]),
    "knn temperature -inf": (["eval.knn_temperature=-inf"], ["eval.knn_temperature"]),
    "probe C nan": (["eval.probe_cs=[1.0,nan]"], ["eval.probe_cs[1]=nan", "not a finite number"]),
    "probe C inf": (["eval.probe_cs=[inf]"], ["eval.probe_cs[0]=inf"]),
    "plug-in float nan": (["plugin.beta1=nan"], ["plugin.beta1=nan"]),
    "seed 2^63": (["seed=9223372036854775808"], ["seed=9223372036854775808", "[0, 2^63 - 1]"]),
    "seed 2^64": (["seed=18446744073709551616"], ["seed=18446744073709551616"]),
    "seed negative": (["seed=-1"], ["seed=-1", "[0, 2^63 - 1]"]),
    "batch 2, conflict halves": (["train.batch_size=2"], ["train.batch_size=2", "conflict diagnostic",
                                                         "plugin.conflict_every=0"]),
    "batch 3, conflict halves": (["train.batch_size=3"], ["train.batch_size=3", "1 image(s)"]),
    "tc2, 1 image per task": (["plugin.name=tc2", "train.batch_size=8", "plugin.n_tasks=5"],
                              ["plugin.n_tasks=5", "1 image(s) per task", "train.batch_size >= 10"]),
    "+T, 1 image per task": (["plugin.name=tasks", "train.batch_size=6", "plugin.n_tasks=4"],
                             ["plugin.n_tasks=4", "per task"]),
    "probe of 1 image": (["eval.max_train=1"], ["eval.max_train=1", "2 classes"]),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_a_bad_value_is_one_line_before_any_work(case, cli, tmp_path):
    overrides, fragments = BAD_VALUES[case]
    out = tmp_path / "run"
    rc, _, err = cli("pretrain", *TINY, f"out={out}", *overrides)
    assert_one_line_error(rc, err, *fragments)
    assert not out.exists(), "the error came after the run folder was created"


def test_the_smallest_valid_shapes_pass(cli):
    for overrides in (["train.batch_size=4"], ["train.batch_size=2", "plugin.conflict_every=0"],
                      ["plugin.name=tc2", "train.batch_size=10", "plugin.n_tasks=5"], ["eval.max_train=2"]):
        rc, _, err = cli("config", *overrides)
        assert rc == 0, (overrides, err)


YAML_FILES = {
    "malformed": ("train: [1, 2\n", ["not valid YAML"]),
    "duplicate key": ("train:\n  lr: 0.1\n  lr: 0.2\n", ["duplicate key 'lr'"]),
    "python tag": ("seed: !!python/object/apply:os.system ['touch {marker}']\n", ["not valid YAML", "python"]),
    "empty": ("", ["is empty"]),
    "a list": ("- 1\n- 2\n", ["must hold a mapping", "list"]),
    "not utf-8": (b"seed: \xff\xfe\n", ["not UTF-8"]),
}


@pytest.mark.parametrize("case", list(YAML_FILES))
def test_a_bad_preset_file_is_one_line(case, cli, tmp_path):
    text, fragments = YAML_FILES[case]
    marker = tmp_path / "PWNED"
    preset = tmp_path / "preset.yaml"
    if isinstance(text, bytes):
        preset.write_bytes(text)
    else:
        preset.write_text(text.format(marker=marker))
    rc, _, err = cli("pretrain", "-p", str(preset), f"out={tmp_path / 'run'}")
    assert_one_line_error(rc, err, str(preset), *fragments)
    assert not marker.exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("case", list(YAML_FILES))
def test_a_bad_run_config_yaml_is_one_line(case, cli, tmp_path):
    """`tc2ssl evaluate` on a run folder whose config.yaml is damaged, empty or crafted."""
    text, fragments = YAML_FILES[case]
    marker = tmp_path / "PWNED"
    run = tmp_path / "run"
    run.mkdir()
    config = run / "config.yaml"
    config.write_bytes(text if isinstance(text, bytes) else text.format(marker=marker).encode())
    rc, _, err = cli("evaluate", str(run))
    assert_one_line_error(rc, err, str(config), *fragments)
    assert not marker.exists()
    assert config.read_bytes() == (text if isinstance(text, bytes) else text.format(marker=marker).encode())


def test_options_and_overrides_may_be_intermixed(cli):
    rc, out, err = cli("config", "train.epochs=3", "-p", "mae", "seed=5")
    assert rc == 0, err
    assert "epochs: 3" in out and "seed: 5" in out and "backbone: vit_tiny" in out   # -p mae took effect


def test_out_with_a_tilde_is_expanded(cli, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    rc, out, _ = cli("config", "out=~/runs/x")
    assert rc == 0 and f"out: {tmp_path / 'runs' / 'x'}" in out


def test_evaluate_rejects_keys_other_than_eval_and_seed(cli, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n")
    rc, _, err = cli("evaluate", str(run), "seedling=3")
    assert_one_line_error(rc, err, "only eval.* overrides and seed=", "seedling=3")


def test_unknown_preset_path_is_one_line(cli, tmp_path):
    rc, _, err = cli("config", "-p", str(tmp_path / "missing.yaml"))
    assert_one_line_error(rc, err, "not found")
    assert Path(tmp_path).exists()
