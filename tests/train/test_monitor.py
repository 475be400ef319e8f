"""The training monitor: Fabric CSV / TensorBoard loggers read back by their own readers, the online linear probe
learning above chance on digits, and a run's weights unchanged by the monitor."""
import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tc2ssl.config import load_config
from tc2ssl.errors import ConfigError
from tc2ssl.train.loop import pretrain
from tc2ssl.train.monitor import OnlineProbe

# digits: 512 training images, batch 64 = 8 steps per epoch; the test split is the fixed 597 images
RUN = ["model.backbone=small_cnn_tiny", "train.batch_size=64", "data.max_train=512", "eval.enabled=false",
       "train.log_every=4", "train.progress=false"]
MONITORED = ["train.loggers=[csv,tensorboard]", "train.online_probe=true", "train.knn_monitor_every=1",
             "train.monitor_images=400"]


def epoch_records(run_dir: Path) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "epoch"]


@pytest.fixture(scope="module")
def monitored_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("monitored")
    pretrain(load_config((), [*RUN, *MONITORED, "train.epochs=3", f"out={out}"]))
    return out


def test_tensorboard_event_files_open_in_event_accumulator(monitored_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    event_dirs = {p.parent for p in (monitored_run / "tensorboard").rglob("events.out.tfevents.*")}
    assert len(event_dirs) == 1
    accumulator = EventAccumulator(str(event_dirs.pop()))
    accumulator.Reload()
    tags = accumulator.Tags()["scalars"]
    assert {"epoch/loss", "epoch/online_probe_test_acc", "epoch/knn_monitor_acc", "step/loss", "step/lr"} <= set(tags)
    probe = accumulator.Scalars("epoch/online_probe_test_acc")
    jsonl = [r["online_probe_test_acc"] for r in epoch_records(monitored_run)]
    assert [e.step for e in probe] == [8, 16, 24]
    assert [e.value for e in probe] == pytest.approx(jsonl, abs=1e-6)     # TensorBoard stores float32
    assert len(accumulator.Scalars("step/loss")) == 3 * 3                  # steps 0, 3, 7 of each epoch


def test_csv_log_opens_with_the_csv_module(monitored_run):
    (path,) = (monitored_run / "csv").rglob("metrics.csv")
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    epoch_rows = [r for r in rows if r.get("epoch/knn_monitor_acc")]
    jsonl = epoch_records(monitored_run)
    assert len(epoch_rows) == 3
    assert [float(r["epoch/knn_monitor_acc"]) for r in epoch_rows] == pytest.approx(
        [r["knn_monitor_acc"] for r in jsonl])
    assert [int(float(r["epoch/epoch"])) for r in epoch_rows] == [0, 1, 2]


def test_online_probe_and_knn_are_above_chance_on_digits(monitored_run):
    last = epoch_records(monitored_run)[-1]
    # 10 balanced classes: chance is 0.10
    assert last["online_probe_test_acc"] > 0.5, last
    assert last["online_probe_train_acc"] > 0.3, last
    assert last["knn_monitor_acc"] > 0.5, last


def test_the_monitor_leaves_the_trained_weights_unchanged(tmp_path):
    pretrain(load_config((), [*RUN, "train.epochs=1", f"out={tmp_path / 'plain'}"]))
    pretrain(load_config((), [*RUN, *MONITORED, "train.epochs=1", f"out={tmp_path / 'monitored'}"]))
    plain, monitored = (load_file(tmp_path / name / "encoder.safetensors") for name in ("plain", "monitored"))
    assert plain.keys() == monitored.keys()
    assert all(torch.equal(plain[k], monitored[k]) for k in plain)


def test_online_probe_fits_linearly_separable_features():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=gen) * 4
    labels = torch.randint(0, 4, (256,), generator=gen)
    features = centres[labels] + torch.randn(256, 16, generator=gen)
    probe = OnlineProbe(16, 4)
    first = probe.update(features, labels)
    for _ in range(200):
        probe.update(features, labels)
    assert first < 0.9 and probe.accuracy(features, labels, reference=features) == 1.0


def test_unknown_logger_is_a_config_error():
    with pytest.raises(ConfigError, match="valid values: csv, tensorboard, wandb"):
        load_config((), ["train.loggers=[csv,mlflow]"])
