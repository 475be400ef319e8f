"""plugin.name=gessl through the real training loop and against its own objective."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from tc2ssl.config import load_config
from tc2ssl.errors import ConfigError
from tc2ssl.plugins.base import StepInfo, trainable_parameters
from tc2ssl.plugins.gessl import _VIEW_STREAM
from tc2ssl.train.loop import build_run, pretrain

METHODS = ["simclr", "moco", "byol", "simsiam", "barlow_twins", "swav", "vicreg"]
TINY = ["model.backbone=small_cnn_tiny", "train.batch_size=32", "data.max_train=96", "eval.enabled=false",
        "train.progress=false"]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_an_epoch_on_digits_with_finite_losses(method, tmp_path):
    cfg = load_config((), [f"method.name={method}", "plugin.name=gessl", "train.epochs=1", *TINY, f"out={tmp_path}"])
    pretrain(cfg)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    assert steps and sum(r["kind"] == "epoch" for r in records) == 1
    assert all(math.isfinite(r[key]) for r in steps for key in ("loss", "gessl/inner_ssl", "gessl/sigma_train"))
    assert all(r["loss"] >= 0 for r in steps)                              # a KL divergence
    if method != "simclr":                                                 # the separate π head trains too
        assert all(math.isfinite(r["gessl/head_infonce"]) for r in steps)


def test_mae_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="generative"):
        load_config(("mae",), ["plugin.name=gessl"])


def test_too_many_batches_for_the_batch_size_is_a_config_error():
    with pytest.raises(ConfigError, match="n_batches"):
        load_config((), ["plugin.name=gessl", *TINY, "plugin.gessl.n_batches=20"])
    with pytest.raises(ConfigError, match="plugin.gessl.hypergradient"):
        load_config((), ["plugin.name=gessl", "plugin.gessl.hypergradient=second_order"])
    with pytest.raises(ConfigError, match="bfloat16"):
        load_config((), ["plugin.name=gessl", "train.precision=bf16-mixed"])
    load_config((), ["plugin.name=gessl", "train.precision=bf16-mixed", "plugin.gessl.hypergradient=first_order"])


def make_step(overrides, seed=0):
    run = build_run(load_config((), ["plugin.name=gessl", *TINY, *overrides]))
    images = run.data.train.images[:32]
    return run, images, StepInfo(epoch=0, step=0, seed=seed)


@pytest.mark.parametrize("n_batches", [1, 2])
def test_the_step_sets_the_mean_of_the_task_hypergradients(n_batches):
    """M = 1 is the single-task update on the whole batch; M = 2 the mean over the two halves."""
    run, images, info = make_step([f"plugin.gessl.n_batches={n_batches}"])
    plugin, method = run.plugin, run.method
    views = plugin.augmented_views(images, 2, info.seed ^ _VIEW_STREAM)
    reference = {n: torch.zeros_like(p) for n, p in method.online_parameters().items()}
    per_task = 32 // n_batches
    state = {k: v.clone() for k, v in method.state_dict().items()}
    for task in range(n_batches):
        grads = plugin.objective.task_hypergradient(method.online_parameters(),
                                                    views[task * per_task:(task + 1) * per_task]).grads
        reference = {n: reference[n] + grads[n] / n_batches for n in reference}
    method.load_state_dict(state)                                          # running statistics as before
    plugin.training_step(images, info)
    for name, p in method.online_parameters().items():
        assert torch.allclose(p.grad, reference[name], rtol=1e-4, atol=1e-7), name


def test_separate_head_is_an_outer_parameter_with_a_gradient():
    run, images, info = make_step(["method.name=byol"])
    head = run.plugin.outer_parameters()
    assert head and all(name.startswith("pi_head.") for name in head)
    run.plugin.training_step(images, info)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.values())
    stepped = trainable_parameters(run.method, run.plugin)                 # what the loop's optimiser steps
    assert all(any(p is q for q in stepped) for p in head.values())
    simclr, _, _ = make_step(["method.name=simclr"])
    assert simclr.plugin.outer_parameters() == {} and simclr.plugin.pi_head is None


def test_a_seeded_run_is_deterministic(tmp_path):
    encoders = []
    for name in ("a", "b"):
        cfg = load_config((), ["plugin.name=gessl", "train.epochs=1", "train.max_steps=2", *TINY,
                               "train.deterministic=true", f"out={tmp_path / name}"])
        pretrain(cfg)
        encoders.append(load_file(str(tmp_path / name / "encoder.safetensors")))
    assert encoders[0].keys() == encoders[1].keys()
    assert all(torch.equal(encoders[0][k], encoders[1][k]) for k in encoders[0])


@pytest.mark.filterwarnings("ignore")
def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
    """The separate π head (an outer parameter) and its optimiser moments survive a checkpoint: stopping after
    epoch 0 and resuming gives the uninterrupted run's weights bit for bit."""
    common = ["method.name=byol", "plugin.name=gessl", "train.epochs=2", *TINY, "train.deterministic=true"]
    pretrain(load_config((), [*common, f"out={tmp_path / 'whole'}"]))
    records = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    first_epoch_steps = next(r["step"] for r in records if r["kind"] == "epoch" and r["epoch"] == 0)
    pretrain(load_config((), [*common, f"train.max_steps={first_epoch_steps}", f"out={tmp_path / 'parts'}"]))
    pretrain(load_config((), [*common, "train.resume=true", f"out={tmp_path / 'parts'}"]))
    whole = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=False)
    parts = torch.load(tmp_path / "parts" / "checkpoint.pt", weights_only=False)
    assert any(k.startswith("pi_head.") for k in whole["plugin"])
    for section in ("method", "plugin"):
        assert whole[section].keys() == parts[section].keys()
        assert all(torch.equal(whole[section][k], parts[section][k]) for k in whole[section]), section
