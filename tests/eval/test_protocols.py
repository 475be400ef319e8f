"""``tc2ssl evaluate RUN --protocol ...``: per-protocol result files for the pretrained and random-init encoders,
linear and kNN computed once, unknown names refused as one-line errors, the default unchanged."""
import json
from pathlib import Path

import pytest

from tc2ssl.cli import main
from tc2ssl.errors import ConfigError
from tc2ssl.eval.protocols import parse_protocols, protocol_table


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    assert main(["pretrain", "model.backbone=small_cnn_tiny", "train.batch_size=32", "data.max_train=128",
                 "train.epochs=1", "eval.enabled=false", f"out={out}"]) == 0
    return out


def test_fewshot_layers_and_linear_knn_write_their_files(run_dir, capsys):
    assert main(["evaluate", "--protocol", "fewshot,layers,linear,knn", str(run_dir), "eval.fewshot_episodes=20",
                 "eval.fewshot_shots=[1,5]", "eval.probe_cs=[1.0]"]) == 0
    out = capsys.readouterr().out
    assert "## fewshot" in out and "## layers" in out
    fewshot = json.loads((run_dir / "eval_digits_fewshot.json").read_text())
    assert set(fewshot) == {"pretrained", "random_init"}
    for model in fewshot.values():
        for setting in ("5way_1shot", "5way_5shot"):
            assert set(model[setting]) == {"prototype", "logistic"}
            assert model[setting]["prototype"]["episodes"] == 20
            assert 0.2 < model[setting]["prototype"]["mean"] <= 1.0           # chance is 0.2
        assert model["5way_5shot"]["prototype"]["mean"] > model["5way_1shot"]["prototype"]["mean"]
    layers = json.loads((run_dir / "eval_digits_layers.json").read_text())
    assert list(layers["pretrained"]) == ["block1", "block2", "block3", "block4"]
    linear, knn = (json.loads((run_dir / f"eval_digits_{p}.json").read_text()) for p in ("linear", "knn"))
    assert linear == knn and "linear_probe" in linear["pretrained"]
    table = (run_dir / "eval_digits_fewshot.md").read_text()
    assert "| pretrained | all test | 5-way 1-shot | prototype |" in table


def test_unknown_protocol_is_a_one_line_error(run_dir, capsys):
    assert main(["evaluate", str(run_dir), "--protocol", "fewshot,zeroshot"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "valid protocols: linear, knn, fewshot, semisup, finetune, layers" in err
    with pytest.raises(ConfigError):
        parse_protocols(" , ")


def test_default_evaluate_is_unchanged(run_dir, capsys):
    assert main(["evaluate", str(run_dir), "eval.probe_cs=[1.0]"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) == {"pretrained", "random_init"} and set(summary["pretrained"]) == {"linear_probe", "knn"}
    assert (run_dir / "eval_digits.json").is_file()


def test_tables_of_semisup_and_finetune():
    semisup = {"pretrained": {"1%": {"finetune": 0.5, "linear_probe": 0.25, "n_labelled": 10, "fraction": 0.01}}}
    assert "| pretrained | 1% | 50.00 | 25.00 | 10 |" in protocol_table("semisup", semisup)
    finetune = {"random_init": {"accuracy": 0.9, "val_accuracy": 0.95, "best_epoch": 3, "epochs_run": 9,
                                "n_train": 8, "n_val": 2, "n_test": 5}}
    assert "| random_init | 90.00 | 95.00 | 3 | 9 | 8 / 2 / 5 |" in protocol_table("finetune", finetune)
