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
    # T17 / D-DG-01: the documented columns, in order (src/tc2ssl/diagnostics/figure1.py), in both CSV files
    columns = ["epoch", "step", "plugin", "seed", "mean", "min", "frac_negative", "space"]
    for name in ("conflict.csv", "conflict_epochs.csv"):
        with (out / name).open() as fh:
            assert next(csv.reader(fh)) == columns, name
    for r in rows:
        assert r["space"] == ("calibrated" if r["plugin"] == "tc2" else "raw")
        assert -1.0 <= float(r["min"]) <= float(r["mean"]) <= 1.0 and 0.0 <= float(r["frac_negative"]) <= 1.0
        assert r["seed"] in {"0", "1"} and r["epoch"] in {"0", "1"}
    assert sorted(int(r["step"]) for r in rows if (r["plugin"], r["seed"]) == ("tc2", "0")) == [0, 1, 2, 3]
    epoch_rows = list(csv.DictReader((out / "conflict_epochs.csv").open()))
    assert len(epoch_rows) == 8                                                # 2 plug-ins x 2 seeds x 2 epochs
    for r in epoch_rows:   # the epoch row is the mean of that epoch's step rows
        own = [float(s["mean"]) for s in rows if (s["plugin"], s["seed"], s["epoch"]) == (r["plugin"], r["seed"],
                                                                                          r["epoch"])]
        assert len(own) == 2 and float(r["mean"]) == pytest.approx(sum(own) / 2, rel=1e-6, abs=1e-9)
    result = json.loads((out / "figure1.json").read_text())
    assert set(result["series"]) == {"tasks seed 0", "tasks seed 1", "tc2 seed 0", "tc2 seed 1"}
    assert all(len(v) == 2 for v in result["series"].values())
    assert (out / "figure1.png").stat().st_size > 1000


def test_figure1_rejects_bad_seeds(capsys):
    assert main(["figure1", "--seeds", "a,b"]) == 2
    assert "--seeds" in capsys.readouterr().err
