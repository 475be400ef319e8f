import csv
import json

import pytest

from tc2ssl.cli import main


@pytest.mark.filterwarnings("ignore")
def test_figure1_command_writes_csv_png_and_r1(tmp_path):
    out = tmp_path / "fig1"
    code = main(["figure1", "--plugins", "tasks,tc2", "--seeds", "0,1", "model.backbone=small_cnn_tiny",
                 "data.max_train=64", "train.batch_size=32", "train.epochs=2", "plugin.n_tasks=2",
                 "train.progress=false", f"out={out}"])
    assert code == 0
    rows = list(csv.DictReader((out / "conflict.csv").open()))
    # one row per iteration: 2 plug-ins x 2 seeds x 2 epochs x 2 steps
    assert len(rows) == 16
    assert {r["plugin"] for r in rows} == {"tasks", "tc2"} and {r["space"] for r in rows} == {"raw", "calibrated"}
    assert all(-1.0 <= float(r["mean"]) <= 1.0 for r in rows)
    result = json.loads((out / "figure1.json").read_text())
    assert set(result["series"]) == {"tasks seed 0", "tasks seed 1", "tc2 seed 0", "tc2 seed 1"}
    assert all(len(v) == 2 for v in result["series"].values())
    assert (out / "figure1.png").stat().st_size > 1000


def test_figure1_rejects_bad_seeds(capsys):
    assert main(["figure1", "--seeds", "a,b"]) == 2
    assert "--seeds" in capsys.readouterr().err
