"""The SimCLR curve that sizes the standard preset: snapshots on disk, headline scores per snapshot, resumable."""
import json

import pytest
import torch
from safetensors.torch import load_file

from tc2ssl.benchmarks import simclr_curve

SMALL = ["data.max_train=128", "train.batch_size=32", "eval.max_train=200", "suite.max_test=200",
         "eval.probe_cs=[1.0]", "eval.probe_max_iter=100", "train.threads=1"]


def test_snapshot_hook_writes_every_nth_and_the_last_epoch(tmp_path):
    hook = simclr_curve.Snapshots(every=2, last_epoch=4)
    net = torch.nn.Linear(3, 2)
    for epoch in range(5):
        with torch.no_grad():
            net.weight.fill_(float(epoch))
        hook(epoch, net, {}, tmp_path / "run")
    saved = simclr_curve.saved_snapshots(tmp_path)
    assert sorted(saved) == [2, 4, 5]
    assert float(load_file(saved[4][0])["weight"][0, 0]) == 3.0    # the weights after epoch index 3 (4 epochs)
    assert float(load_file(saved[5][0])["weight"][0, 0]) == 4.0


def test_curve_scores_every_snapshot_and_a_rerun_reuses_them(shared_data, tmp_path):
    args = ["colored_mnist", "--epochs", "2", "--every", "1", "--headline-every", "1", "--out", str(tmp_path / "fig"),
            "--runs", str(tmp_path / "runs"), *SMALL]
    assert simclr_curve.main(args) == 0
    first = json.loads((tmp_path / "fig" / "colored_mnist_simclr_curve.json").read_text())
    assert sorted(first["headline"]) == ["1", "2"]
    assert first["headline"]["2"] == first["final"]           # the last snapshot is the finished backbone
    assert [p["epoch"] for p in first["knn_curve"]] == [0, 1, 2]
    # a re-run trains nothing (the finished run is reused) and scores the snapshots left on disk
    assert simclr_curve.main(args) == 0
    again = json.loads((tmp_path / "fig" / "colored_mnist_simclr_curve.json").read_text())
    assert again["headline"] == first["headline"]


def test_curve_of_another_base_method_trains_that_method_into_its_own_files(shared_data, tmp_path):
    args = ["colored_mnist", "--method", "byol", "--epochs", "1", "--every", "1", "--headline-every", "1",
            "--out", str(tmp_path / "fig"), "--runs", str(tmp_path / "runs"), *SMALL]
    assert simclr_curve.main(args) == 0
    assert not (tmp_path / "fig" / "colored_mnist_simclr_curve.json").exists()   # SimCLR's curve is not overwritten
    measured = json.loads((tmp_path / "fig" / "colored_mnist_byol_curve.json").read_text())
    assert measured["method"] == "byol" and measured["config"]["method"]["name"] == "byol"
    assert (tmp_path / "fig" / "colored_mnist_byol_curve.png").is_file()
    assert sorted(measured["headline"]) == ["1"] and measured["headline"]["1"] == measured["final"]


def test_curve_refuses_the_method_as_an_override(tmp_path):
    with pytest.raises(SystemExit):
        simclr_curve.main(["colored_mnist", "--out", str(tmp_path), "method.name=byol"])
