"""Files from elsewhere that unpickle safely but do not fit are one-line errors, and leave the folder as it was:
foreign checkpoints (wrong keys, shapes, types), NaN weights, safetensors of other widths or without metadata,
a damaged metrics.jsonl on resume."""
from __future__ import annotations

import pytest
import torch
from reliability_helpers import TINY, assert_one_line_error, snapshot
from safetensors.torch import load_file, save_file

from tc2ssl.train.checkpoint import CHECKPOINT_NAME, load_checkpoint

RESUMABLE = [*TINY, "train.epochs=2", "train.max_steps=2"]     # stops after epoch 0: a checkpoint to resume


def pretrained_run(cli, out, *overrides: str):
    rc, _, err = cli("pretrain", *overrides, f"out={out}")
    assert rc == 0, err
    return out


@pytest.fixture
def stopped_run(cli, tmp_path):
    return pretrained_run(cli, tmp_path / "run", *RESUMABLE)


def resume(cli, out):
    return cli("pretrain", *TINY, "train.epochs=2", f"out={out}", "train.resume=true")


def edit_checkpoint(out, edit) -> None:
    state = load_checkpoint(out / CHECKPOINT_NAME)
    edit(state)
    torch.save(state, out / CHECKPOINT_NAME)


def _drop_optimizer(state):
    del state["optimizer"]


def _epoch_as_text(state):
    state["epoch"] = "zero"


def _wrong_shape(state):
    name = next(k for k, v in state["method"].items() if v.dim() == 4)
    state["method"][name] = torch.zeros(3, 3)


def _unknown_key(state):
    state["method"]["not.a.parameter"] = torch.zeros(1)


def _nan_weight(state):
    name = next(k for k, v in state["method"].items() if v.is_floating_point())
    state["method"][name] = torch.full_like(state["method"][name], float("nan"))


def _optimizer_of_another_model(state):
    state["optimizer"] = {"state": {}, "param_groups": [{"params": [0]}]}


@pytest.mark.parametrize("edit, fragment", [
    (_drop_optimizer, "missing optimizer"),
    (_epoch_as_text, "'epoch' is a str, expected int"),
    (_wrong_shape, "does not fit this run's model"),
    (_unknown_key, "does not fit this run's model"),
    (_nan_weight, "non-finite weights"),
    (_optimizer_of_another_model, "does not fit this run's model"),
])
def test_a_foreign_checkpoint_is_one_line_and_kept(edit, fragment, cli, stopped_run):
    edit_checkpoint(stopped_run, edit)
    before = snapshot(stopped_run)
    rc, _, err = resume(cli, stopped_run)
    assert_one_line_error(rc, err, str(stopped_run / CHECKPOINT_NAME), fragment)
    assert snapshot(stopped_run) == before


def test_a_damaged_metrics_line_on_resume_is_one_line_and_kept(cli, stopped_run):
    metrics = stopped_run / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    before = snapshot(stopped_run)
    rc, _, err = resume(cli, stopped_run)
    assert_one_line_error(rc, err, "metrics.jsonl, line 2: not a metrics record")
    assert snapshot(stopped_run) == before


def test_a_last_metrics_line_cut_by_a_kill_is_dropped_on_resume(cli, stopped_run):
    metrics = stopped_run / "metrics.jsonl"
    metrics.write_bytes(metrics.read_bytes() + b'{"kind": "step", "ep')   # a kill mid-write
    rc, _, err = resume(cli, stopped_run)
    assert rc == 0, err
    assert b'"ep\n' not in metrics.read_bytes() and metrics.read_text().count('"kind": "epoch"') == 2


@pytest.fixture
def finished_run(cli, tmp_path):
    return pretrained_run(cli, tmp_path / "run", *TINY)


def rewrite_encoder(out, tensors=None, metadata=None) -> None:
    from safetensors import safe_open

    path = out / "encoder.safetensors"
    with safe_open(str(path), framework="pt") as fh:
        old_meta = fh.metadata()
    save_file(load_file(path) if tensors is None else tensors, path,
              metadata=old_meta if metadata is None else metadata)


def test_safetensors_of_another_width_is_one_line(cli, finished_run):
    tensors = load_file(finished_run / "encoder.safetensors")
    name = next(k for k, v in tensors.items() if v.dim() == 4)
    tensors[name] = torch.zeros(7, *tensors[name].shape[1:])
    rewrite_encoder(finished_run, tensors)
    rc, _, err = cli("evaluate", str(finished_run))
    assert_one_line_error(rc, err, "do not fit backbone 'small_cnn_tiny'")


def test_safetensors_without_metadata_is_one_line(cli, finished_run):
    rewrite_encoder(finished_run, metadata={})
    rc, _, err = cli("evaluate", str(finished_run))
    assert_one_line_error(rc, err, "not a tc2ssl encoder export", "backbone, in_channels, resolution")


def test_safetensors_with_absurd_metadata_is_one_line(cli, finished_run):
    rewrite_encoder(finished_run, metadata={"backbone": "small_cnn_tiny", "in_channels": "7", "resolution": "16"})
    rc, _, err = cli("evaluate", str(finished_run))
    assert_one_line_error(rc, err, "in_channels=7")


def test_nan_encoder_weights_are_one_line(cli, finished_run):
    tensors = load_file(finished_run / "encoder.safetensors")
    name = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    rewrite_encoder(finished_run, tensors)
    rc, _, err = cli("evaluate", str(finished_run))
    assert_one_line_error(rc, err, "non-finite weights", name)


def test_a_run_folder_without_encoder_or_config_is_one_line(cli, tmp_path):
    rc, _, err = cli("evaluate", str(tmp_path))
    assert_one_line_error(rc, err, "not a tc2ssl run folder")


@pytest.mark.parametrize("edit, fragment", [(_wrong_shape, "do not fit this method"),
                                            (_nan_weight, "non-finite weights"),
                                            (_drop_optimizer, "missing optimizer")])
def test_posthoc_from_a_foreign_checkpoint_is_one_line(edit, fragment, cli, finished_run):
    edit_checkpoint(finished_run, edit)
    before = snapshot(finished_run)
    rc, _, err = cli("posthoc", str(finished_run), "plugin.name=none", "model.backbone=small_cnn",
                     "model.widths=[16,32,64,64]")
    assert_one_line_error(rc, err, fragment)
    assert snapshot(finished_run) == before
