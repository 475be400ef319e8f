"""Momentum target networks (BYOL, MoCo) under TC²: the bi-level step must neither adapt nor update the target
(D-TC-22: the target is never adapted by an inner step and is updated once per outer step), and the loop's
``method.after_step`` must apply the EMA exactly once per outer step.

Runs are tiny (small_cnn_tiny, d = 16, 128 digits, batch 32, K = 2), built as in tests/plugins/test_tc2.py.
"""
from __future__ import annotations

import pytest
import torch

from tc2ssl.config import load_config
from tc2ssl.data import load_data
from tc2ssl.methods import METHODS
from tc2ssl.methods.byol import momentum_at
from tc2ssl.plugins.base import StepInfo
from tc2ssl.plugins.tc2 import TC2
from tc2ssl.train.loop import build_run, pretrain

BATCH = 32
TINY = ["plugin.name=tc2", "model.backbone=small_cnn_tiny", f"train.batch_size={BATCH}", "plugin.n_tasks=2",
        "eval.enabled=false", "train.progress=false", "method.proj_output_dim=16", "method.proj_hidden_dim=16",
        "method.pred_hidden_dim=16", "data.max_train=128"]
INFO = StepInfo(epoch=0, step=0, seed=1)
MOMENTUM_METHODS = ["byol", "moco"]


@pytest.fixture(scope="module")
def digits():
    return load_data(load_config((), TINY).data)


def config(tmp_path, method: str, *overrides: str):
    return load_config((), [*TINY, f"method.name={method}", f"out={tmp_path / 'run'}", *overrides])


def snapshot(named) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in named}


@pytest.mark.parametrize("method", MOMENTUM_METHODS)
def test_training_step_leaves_the_target_network_bit_identical_and_without_grad(digits, tmp_path, method):
    run = build_run(config(tmp_path, method), digits)
    target = run.method.target
    params_before = snapshot(target.named_parameters())
    buffers_before = snapshot(target.named_buffers())
    assert any(k.endswith("running_mean") for k in buffers_before)        # BN statistics a forward could move
    bank_before = snapshot(run.method.memory_bank.named_buffers()) if method == "moco" else {}
    target_calls = []
    hook = target.register_forward_hook(lambda *_: target_calls.append(1))

    metrics = run.plugin.training_step(digits.train.images[:BATCH], INFO)
    hook.remove()

    assert torch.isfinite(metrics["loss"])
    assert target_calls, "the step never ran the target network: this test would check nothing"
    for name, value in target.named_parameters():
        assert torch.equal(value, params_before[name]), f"the TC² step changed target parameter {name}"
        assert value.grad is None and not value.requires_grad, f"target parameter {name} got a gradient"
    for name, value in target.named_buffers():
        assert torch.equal(value, buffers_before[name]), f"the TC² step changed target buffer {name}"
    for name, value in (run.method.memory_bank.named_buffers() if method == "moco" else ()):
        assert torch.equal(value, bank_before[name]), f"the TC² step wrote MoCo's memory bank ({name})"
    online = run.method.online_parameters()
    assert not any(k.startswith("target.") for k in online)
    assert all(p.grad is not None for p in online.values())
    assert any(p.grad.abs().sum() > 0 for p in online.values())


@pytest.mark.parametrize("method", MOMENTUM_METHODS)
def test_pretraining_applies_the_ema_once_per_outer_step(digits, tmp_path, monkeypatch, method):
    """3 steps of the real loop: step, EMA, step, EMA, step, EMA; each EMA is target <- m·target + (1 − m)·online
    with m from the step's progress, and the target ends elsewhere than it started."""
    cls = METHODS.get(method)
    events, progresses, seen = [], [], {}
    after_step, training_step = cls.after_step, TC2.training_step

    def counting_step(self, images, info):
        events.append("step")
        return training_step(self, images, info)

    def counting_after_step(self, progress):
        events.append("ema")
        progresses.append(progress)
        seen["method"] = self
        seen.setdefault("initial", snapshot(self.target.named_parameters()))
        before = snapshot(self.target.named_parameters())
        online = dict(self.named_parameters())
        after_step(self, progress)
        m = momentum_at(progress, self.cfg.momentum)
        assert 0.0 < 1.0 - m < 0.02
        for name, value in self.target.named_parameters():
            expected = before[name] * m + online[name].detach() * (1.0 - m)
            torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7)

    monkeypatch.setattr(TC2, "training_step", counting_step)
    monkeypatch.setattr(cls, "after_step", counting_after_step)
    pretrain(config(tmp_path, method, "train.epochs=1", "train.max_steps=3"), digits)

    assert events == ["step", "ema"] * 3
    steps_total = len(digits.train) // BATCH                                       # 1 epoch of 4 steps
    assert progresses == pytest.approx([1 / steps_total, 2 / steps_total, 3 / steps_total])
    target = seen["method"].target
    moved = [k for k, v in target.named_parameters() if not torch.equal(v, seen["initial"][k])]
    assert moved, "three EMA updates left the target where it started"
    assert all(p.grad is None for p in target.parameters())
