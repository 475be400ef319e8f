"""One tiny epoch of every zoo method through the real training loop, as the plain baseline and with TC²."""
import json
import math

import pytest

from tc2ssl.config import load_config
from tc2ssl.train.loop import pretrain

METHODS = ["simclr", "moco", "byol", "simsiam", "barlow_twins", "swav", "vicreg"]  # mae: tests/methods/test_mae.py



def cases():
    for method in METHODS:
        yield pytest.param(method, "none", id=f"{method}-none")
        yield pytest.param(method, "tc2", id=f"{method}-tc2")


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("method, plugin", list(cases()))
def test_one_epoch_on_digits_has_finite_losses(method, plugin, tmp_path):
    cfg = load_config((), [f"method.name={method}", f"plugin.name={plugin}", "model.backbone=small_cnn_tiny",
                           "train.epochs=1", "train.batch_size=64", "data.max_train=128", "eval.enabled=false",
                           "train.progress=false", f"out={tmp_path}"])
    pretrain(cfg)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert steps and len(epochs) == 1
    assert all(math.isfinite(r["loss"]) for r in steps + epochs)
