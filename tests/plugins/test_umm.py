"""plugin.name=umm: frozen early layers bit-identical, late layers and heads tuned, every method of the zoo, post hoc
and interleaved, the removed alignment reading and the `tc2ssl umm` command."""
from __future__ import annotations

import math

import pytest
import torch

from tc2ssl.cli import main
from tc2ssl.config import load_config
from tc2ssl.data import load_data
from tc2ssl.errors import ConfigError
from tc2ssl.methods import METHODS
from tc2ssl.plugins.base import StepInfo
from tc2ssl.report import read_metrics
from tc2ssl.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from tc2ssl.train.loop import build_run, pretrain
from tc2ssl.workflows import run_posthoc

TINY = ["model.backbone=small_cnn_tiny", "train.batch_size=16", "data.max_train=32", "eval.enabled=false",
        "train.progress=false", "method.proj_output_dim=16", "method.proj_hidden_dim=16", "train.epochs=1",
        "plugin.conflict_every=0"]
MAE = ["model.backbone=vit_tiny", "method.name=mae", "train.lr=1.5e-3"]
EARLY_PREFIXES = {"small_cnn_tiny": ("backbone.blocks.0.", "backbone.blocks.1."),
                  "vit_tiny": ("backbone.patch_embed.", "backbone.blocks.0.", "backbone.blocks.1.")}


@pytest.fixture(scope="module")
def digits():
    return load_data(load_config((), TINY).data)


def method_overrides(name: str) -> list[str]:
    return MAE if name == "mae" else [f"method.name={name}"]


def finished_run(tmp_path, digits, *overrides: str):
    return pretrain(load_config((), [*TINY, f"out={tmp_path / 'finished'}", *overrides]), digits)


def test_posthoc_umm_keeps_early_layers_bit_identical_and_tunes_the_rest(digits, tmp_path):
    finished = finished_run(tmp_path, digits)
    before = load_checkpoint(finished / CHECKPOINT_NAME)["method"]
    run_posthoc(finished, ["plugin.name=umm", "train.epochs=2", "train.lr=1e-3"])
    after = load_checkpoint(finished / "posthoc_umm" / CHECKPOINT_NAME)["method"]
    early = [k for k in before if k.startswith(EARLY_PREFIXES["small_cnn_tiny"])]
    assert any(k.endswith("running_var") for k in early) and any(k.endswith("num_batches_tracked") for k in early)
    for key in early:                                     # weights AND BatchNorm statistics of f_e
        assert torch.equal(before[key], after[key]), key
    for key in ("backbone.blocks.2.0.weight", "backbone.blocks.3.1.running_mean", "projector.layers.0.weight"):
        assert not torch.equal(before[key], after[key]), key      # late layers, their BN and the head are tuned
    steps = [r for r in read_metrics(finished / "posthoc_umm" / "metrics.jsonl") if r["kind"] == "step"]
    assert all(math.isfinite(r["loss"]) and r["umm/dR_instance"] > 0 and 0 <= r["umm/js"] < math.log(2)
               for r in steps)


@pytest.mark.parametrize("name", sorted(METHODS.names()))
def test_every_method_runs_umm_post_hoc_on_digits(digits, tmp_path, name):
    finished = finished_run(tmp_path, digits, *method_overrides(name))
    before = load_checkpoint(finished / CHECKPOINT_NAME)["method"]
    run_posthoc(finished, ["plugin.name=umm"])
    after = load_checkpoint(finished / "posthoc_umm" / CHECKPOINT_NAME)["method"]
    backbone = "vit_tiny" if name == "mae" else "small_cnn_tiny"
    for key in (k for k in before if k.startswith(EARLY_PREFIXES[backbone])):
        assert torch.equal(before[key], after[key]), key
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("backbone.blocks.3."))
    losses = [r["loss"] for r in read_metrics(finished / "posthoc_umm" / "metrics.jsonl") if r["kind"] == "step"]
    assert losses and all(math.isfinite(v) for v in losses)


def test_umm_step_writes_gradients_only_to_the_tuned_parameters(digits, tmp_path):
    """Interleaved mode: f_e trains in plain epochs; in a UMM epoch it gets no gradient and its BN stays put."""
    cfg = load_config((), [*TINY, f"out={tmp_path}", "plugin.name=umm", "plugin.umm.interleave_every=2"])
    run = build_run(cfg, digits)
    run.plugin.on_fit_start(run)
    run.method.train()
    run.plugin.on_epoch_start(1)
    assert all(p.requires_grad for p in run.method.backbone.blocks[0].parameters())   # not frozen for the fit
    bn = dict(run.method.backbone.blocks[0][1].named_buffers())
    bn_before = {k: v.clone() for k, v in bn.items()}
    images = digits.train.images[:16]
    assert run.plugin.is_umm_epoch(1) and not run.plugin.is_umm_epoch(0)
    metrics = run.plugin.training_step(images, StepInfo(epoch=1, step=0, seed=3))
    assert math.isfinite(float(metrics["loss"]))
    grads = {n: p.grad for n, p in run.method.online_parameters().items()}
    assert all(grads[n] is None for n in grads if n.startswith(EARLY_PREFIXES["small_cnn_tiny"]))
    assert all(grads[n] is not None for n in run.plugin.tuned_parameters())
    assert all(torch.equal(bn[k], bn_before[k]) for k in bn)
    assert run.method.backbone.blocks[0].training                                  # mode restored
    run.method.zero_grad(set_to_none=True)
    run.plugin.training_step(images, StepInfo(epoch=0, step=0, seed=3))             # a plain SSL step
    assert run.method.backbone.blocks[0][0].weight.grad is not None


def test_the_removed_alignment_reading_is_a_clear_error_and_old_run_configs_still_load():
    """The alignment reading was removed (it did not earn its place: docs/umm.md). Its keys are refused by name; a
    run folder written before the removal still loads, the keys dropped."""
    from tc2ssl.config import from_dict, to_dict

    with pytest.raises(ConfigError, match="plugin.umm.objective was removed"):
        load_config((), ["plugin.umm.objective=alignment"])
    old = to_dict(load_config((), []))
    old["plugin"]["umm"].update(objective="bilevel", n_clusters=10, ridge=0.1, mu=1.0, align_eps2=0.5, retain_ssl=0.0)
    assert to_dict(from_dict(old)) == to_dict(load_config((), []))


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="tc2ssl posthoc RUN_DIR plugin.name=umm"):
        load_config((), ["plugin.name=umm"])
    with pytest.raises(ConfigError, match="plugin.umm.beta"):
        load_config((), ["plugin.name=umm", "plugin.umm.interleave_every=1", "plugin.umm.beta=-1"])
    with pytest.raises(ConfigError, match="plugin.umm.hypergradient"):
        load_config((), ["plugin.name=umm", "plugin.umm.interleave_every=1", "plugin.umm.hypergradient=magic"])
    with pytest.raises(ConfigError, match="16-mixed"):
        load_config((), ["plugin.name=umm", "plugin.umm.interleave_every=1", "train.precision=16-mixed"])


def test_split_at_the_last_layer_is_refused(digits, tmp_path):
    cfg = load_config((), [*TINY, f"out={tmp_path}", "plugin.name=umm", "plugin.umm.interleave_every=1",
                           "plugin.umm.early=block4"])
    run = build_run(cfg, digits)
    with pytest.raises(ConfigError, match="plugin.umm.early=block4 leaves no backbone layer"):
        run.plugin.on_fit_start(run)


def test_umm_command_is_posthoc_with_plugin_umm(digits, tmp_path, capsys):
    finished = finished_run(tmp_path, digits)
    assert main(["umm", str(finished), "train.epochs=1"]) == 0
    assert load_checkpoint(finished / "posthoc_umm" / CHECKPOINT_NAME)["config"]["plugin"]["name"] == "umm"
