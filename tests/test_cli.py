"""The ``tc2ssl`` command: input mistakes are one-line errors with exit status 2, never a traceback; ``list``,
``config`` and ``evaluate`` on another dataset."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tc2ssl.cli import main


def pretrain_tiny(out: Path, *extra: str) -> Path:
    """A one-epoch digits pretraining run without evaluation."""
    assert main(["pretrain", "model.backbone=small_cnn_tiny", "train.batch_size=16", "data.max_train=64",
                 "train.epochs=1", "eval.enabled=false", f"out={out}", *extra]) == 0
    return out


@pytest.fixture
def inputs(tmp_path) -> Path:
    """tmp_path with empty/, images/<class>/*.png holding one corrupt file, and config_only/ (no encoder)."""
    (tmp_path / "empty").mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / "images" / name / f"{i}.png")
    (tmp_path / "images" / "b" / "broken.png").write_bytes(b"this is not a png")
    return tmp_path


def assert_one_line_error(rc: int, err: str, fragment: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tc2ssl: error: "), err
    assert fragment in lines[0], lines[0]


# (argv with {tmp} for the inputs folder, a fragment the message must contain)
BAD_INPUTS = {
    "missing npz path": (["pretrain", "data.name=npz", "data.root=/nonexistent"], "/nonexistent: not found"),
    "empty folder": (["pretrain", "data.name=folder", "data.root={tmp}/empty"], "{tmp}/empty: no images found"),
    "corrupt image": (["pretrain", "data.name=folder", "data.root={tmp}/images"],
                      "{tmp}/images/b/broken.png: cannot read this image"),
    "unknown dataset": (["pretrain", "data.name=imagenet42"],
                        "valid names: cifar10, cifar100, cifar10_subset, colored_mnist, digits"),
    "unknown method": (["pretrain", "method.name=dino9"], "simclr"),
    "batch size 1": (["pretrain", "train.batch_size=1"], "train.batch_size=1 is out of range; it must be >= 2"),
    "non-integer epochs": (["pretrain", "train.epochs=abc"], "train.epochs"),
    "unknown key": (["pretrain", "nokey=1"], "unknown key 'nokey'"),
    "override without =": (["pretrain", "train.epochs"], "bad override 'train.epochs': expected key=value"),
    "batch larger than the data": (["pretrain", "data.max_train=10", "train.batch_size=16"],
                                   "train.batch_size=16 is larger than the 10 training images"),
    # combinations that used to fail only after the work had started (during a step, or when building the run)
    "remainder=error with a batch K does not divide": (
        ["pretrain", "plugin.name=tc2", "plugin.remainder=error", "plugin.n_tasks=4", "train.batch_size=30"],
        "plugin.remainder=error needs train.batch_size divisible by plugin.n_tasks, got train.batch_size=30 and "
        "plugin.n_tasks=4"),
    "mae on a CNN": (["pretrain", "method.name=mae", "model.backbone=small_cnn_tiny"],
                     "model.backbone must be vit_tiny (the preset `-p mae` sets it), "
                     "got model.backbone=small_cnn_tiny"),
    "one support view for simclr": (["pretrain", "plugin.name=tasks", "plugin.n_support_views=1"],
                                    "allowed: 2 <= plugin.n_support_views < plugin.n_views=4"),
    "16-mixed with tc2": (["pretrain", "plugin.name=tc2", "train.precision=16-mixed"],
                          "train.precision=16-mixed is not supported with plugin.name=tc2"),
    "widths with small_cnn_tiny": (["pretrain", "model.backbone=small_cnn_tiny", "model.widths=[8,8,8,8]"],
                                   "model.widths=[8, 8, 8, 8] is not used by model.backbone=small_cnn_tiny, whose "
                                   "widths are fixed at [16, 32, 64, 64]"),
    "unknown preset": (["config", "-p", "no_such_preset"], "valid presets: calibrated, default"),
    "evaluate a folder that is not a run": (["evaluate", "{tmp}/empty"], "{tmp}/empty is not a tc2ssl run folder"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_a_one_line_error_with_status_2(case, inputs, capsys):
    argv, fragment = BAD_INPUTS[case]
    argv = [a.format(tmp=inputs) for a in argv]
    if argv[0] == "pretrain":
        argv.append(f"out={inputs / 'run'}")
    rc = main(argv)
    assert_one_line_error(rc, capsys.readouterr().err, fragment.format(tmp=inputs))
    assert not (inputs / "run").exists(), "the error came after the run folder was created"


def test_pretrain_with_evaluation_writes_eval_files_report_and_loss_curve(tmp_path, capsys):
    """`tc2ssl pretrain` end to end with evaluation on: eval.json / eval.md, report.md and the loss curve."""
    out = tmp_path / "run"
    assert main(["pretrain", "model.backbone=small_cnn_tiny", "train.batch_size=32", "data.max_train=256",
                 "train.epochs=1", "train.progress=false", "eval.probe_cs=[1.0]", "eval.max_train=200",
                 "eval.probe_max_iter=200", f"out={out}"]) == 0
    summary = json.loads(capsys.readouterr().out)

    results = json.loads((out / "eval.json").read_text())
    assert set(results) == {"pretrained", "random_init"}
    for result in results.values():
        assert result["n_train"] == 200 and result["n_test"] > 0           # eval.max_train subsampled the 256
        assert result["linear_probe"]["best_c"] == 1.0
        for accuracy in (result["linear_probe"]["accuracy"], result["knn"]["accuracy"]):
            assert 0.0 <= accuracy <= 1.0
    pretrained = results["pretrained"]
    assert summary == {name: {"linear_probe": r["linear_probe"]["accuracy"], "knn": r["knn"]["accuracy"]}
                       for name, r in results.items()}
    probe_cell = f"{100 * pretrained['linear_probe']['accuracy']:.2f}"
    eval_md = (out / "eval.md").read_text()
    assert f"| pretrained | {pretrained['dataset']} | {probe_cell} | 1 |" in eval_md and "| random init |" in eval_md

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epoch = [r for r in records if r["kind"] == "epoch"]
    assert len(epoch) == 1 and len([r for r in records if r["kind"] == "step"]) >= 2
    report = (out / "report.md").read_text()
    assert "## Settings" in report and "backbone: small_cnn_tiny" in report and "max_train: 200" in report
    assert f"final loss (mean of epoch 0): {epoch[0]['loss']:.4f}" in report
    assert f"| pretrained | {pretrained['dataset']} | {probe_cell} | 1 |" in report
    assert "| random init |" in report and "Pretrained minus random init" in report
    assert "![training loss](loss_curve.png)" in report
    png = (out / "loss_curve.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000      # a drawn figure, not an empty file


def test_evaluate_rejects_other_overrides_and_a_run_without_encoder(tmp_path, capsys):
    tiny_run = pretrain_tiny(tmp_path / "run")
    capsys.readouterr()
    assert_one_line_error(main(["evaluate", str(tiny_run), "train.epochs=3"]), capsys.readouterr().err,
                          "evaluate takes only eval.* overrides")
    assert_one_line_error(main(["evaluate", str(tiny_run), "eval.knn_k=0"]), capsys.readouterr().err,
                          "eval.knn_k=0 is out of range")
    killed = tmp_path / "killed"  # a run folder whose pretraining never finished
    killed.mkdir()
    shutil.copy(tiny_run / "config.yaml", killed / "config.yaml")
    assert_one_line_error(main(["evaluate", str(killed)]), capsys.readouterr().err, "no encoder weights")


def test_console_script_reports_bad_input_without_traceback(tmp_path):
    script = Path(sys.executable).with_name("tc2ssl")
    if not script.exists():
        pytest.skip(f"the console script is not installed next to {sys.executable}")
    proc = subprocess.run([str(script), "pretrain", "data.name=npz", "data.root=/nonexistent", f"out={tmp_path}/run"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.stdout == ""
    assert_one_line_error(proc.returncode, proc.stderr, "/nonexistent: not found")


def test_list_prints_the_registries(capsys):
    assert main(["list"]) == 0
    lines = dict(line.split(":", 1) for line in capsys.readouterr().out.splitlines())
    assert {"digits", "usps", "folder", "npz"} <= {n.strip() for n in lines["data sources"].split(",")}
    assert {"small_cnn", "resnet18"} <= {n.strip() for n in lines["backbones"].split(",")}
    assert {"simclr", "byol", "vicreg"} <= {n.strip() for n in lines["methods"].split(",")}
    assert {n.strip() for n in lines["plug-ins"].split(",")} >= {"none", "tasks", "tc2", "umm", "gessl", "tc2_frozen",
                                                                  "tasks_nf", "random_proj"}
    assert "default" in lines["presets"]


def test_config_prints_the_resolved_yaml(capsys):
    import yaml

    assert main(["config", "plugin.name=tc2", "train.epochs=7"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["plugin"]["name"] == "tc2" and printed["plugin"]["n_tasks"] == 4
    assert printed["train"]["epochs"] == 7 and printed["method"]["name"] == "simclr"


@pytest.mark.data
@pytest.mark.parametrize("channels, resolution", [(1, 16), (3, 20)])
def test_evaluate_on_another_dataset_converts_to_the_encoders_format(channels, resolution, tmp_path, shared_data,
                                                                     capsys, monkeypatch):
    from tc2ssl import workflows

    run = pretrain_tiny(tmp_path / "run", f"data.channels={channels}", f"data.resolution={resolution}")
    evaluated_shapes = []
    evaluate_encoder = workflows.evaluate_encoder

    def spy(backbone, run_cfg, splits, device):
        evaluated_shapes.extend([tuple(splits.train.images.shape[1:]), tuple(splits.test.images.shape[1:])])
        return evaluate_encoder(backbone, run_cfg, splits, device)

    monkeypatch.setattr(workflows, "evaluate_encoder", spy)
    assert main(["evaluate", str(run), "eval.data=usps", f"eval.root={shared_data}", "eval.max_train=500",
                 "eval.probe_cs=[1.0]", "eval.random_init_baseline=false"]) == 0
    assert evaluated_shapes == [(channels, resolution, resolution)] * 2  # USPS is 16 px grey on disk
    summary = json.loads(capsys.readouterr().out)
    results = json.loads((run / "eval_usps.json").read_text())
    assert set(results) == {"pretrained"}
    pretrained = results["pretrained"]
    assert pretrained["n_train"] == 500 and pretrained["n_test"] == 2007  # the USPS test split
    for accuracy in (pretrained["linear_probe"]["accuracy"], pretrained["knn"]["accuracy"]):
        assert 0.0 <= accuracy <= 1.0
    assert pretrained["linear_probe"]["accuracy"] > 0.3  # well above chance (0.1): the digits were not garbled
    assert summary == {"pretrained": {"linear_probe": pretrained["linear_probe"]["accuracy"],
                                      "knn": pretrained["knn"]["accuracy"]}}
