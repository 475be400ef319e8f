"""The pretraining loop: run-folder contents, ``train.max_steps``, a non-finite loss stopping the run, the logged
learning rate, and the loss scaling of 16-mixed."""
import json
import re
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tc2ssl.config import load_config
from tc2ssl.errors import ConfigError, TrainingError
from tc2ssl.plugins.base import StepInfo
from tc2ssl.plugins.baseline import Baseline
from tc2ssl.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from tc2ssl.train.loop import load_run_config, pretrain

# digits, 32 training images / batch 16 = 2 steps per epoch
TINY_RUN = ["model.backbone=small_cnn_tiny", "train.batch_size=16", "data.max_train=32"]


def tiny_config(out: Path, *extra: str):
    return load_config((), [*TINY_RUN, f"out={out}", *extra])


def records(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def nan_loss_at(monkeypatch, epoch: int, step: int) -> None:
    """Make the baseline plug-in report a NaN loss at one (epoch, global step)."""
    training_step = Baseline.training_step

    def poisoned(self, images, info):
        metrics = training_step(self, images, info)
        if (info.epoch, info.step) == (epoch, step):
            metrics["loss"] = torch.tensor(float("nan"))
        return metrics

    monkeypatch.setattr(Baseline, "training_step", poisoned)


def test_a_run_folder_holds_config_metrics_checkpoint_and_encoder(tmp_path):
    cfg = tiny_config(tmp_path, "train.epochs=2")
    assert pretrain(cfg) == tmp_path
    assert load_run_config(tmp_path) == cfg
    assert [r["epoch"] for r in records(tmp_path, "epoch")] == [0, 1]
    assert [r["step"] for r in records(tmp_path, "step")] == [0, 1, 2, 3]
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert (state["epoch"], state["global_step"]) == (1, 4)
    encoder = load_file(tmp_path / "encoder.safetensors")
    assert encoder  # the exported weights are the final backbone of the checkpointed method
    for name, tensor in encoder.items():
        assert torch.equal(tensor, state["method"][f"backbone.{name}"]), name


def test_max_steps_stops_the_run_early(tmp_path):
    pretrain(tiny_config(tmp_path, "train.epochs=5", "train.max_steps=3"))
    assert [r["step"] for r in records(tmp_path, "step")] == [0, 1, 2]
    assert [r["epoch"] for r in records(tmp_path, "epoch")] == [0]  # epoch 1 was cut short: no record
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert (state["epoch"], state["global_step"]) == (0, 2)
    assert (tmp_path / "encoder.safetensors").is_file()


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    nan_loss_at(monkeypatch, epoch=1, step=3)
    cfg = tiny_config(tmp_path, "train.epochs=3")
    ckpt = tmp_path / CHECKPOINT_NAME
    with pytest.raises(TrainingError, match=r"non-finite \(nan\) at epoch 1, step 3; "
                                            rf"the last good checkpoint \(epoch 0\) is kept at {re.escape(str(ckpt))}"):
        pretrain(cfg)
    state = load_checkpoint(ckpt)
    assert (state["epoch"], state["global_step"]) == (0, 2)
    assert not (tmp_path / "encoder.safetensors").exists()

    # the kept checkpoint is a valid starting point: resuming ends where an uninterrupted run does
    monkeypatch.undo()
    pretrain(tiny_config(tmp_path, "train.epochs=3", "train.resume=true"))
    pretrain(tiny_config(tmp_path / "straight", "train.epochs=3"))
    resumed, straight = load_file(tmp_path / "encoder.safetensors"), load_file(tmp_path / "straight" / "encoder.safetensors")
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_non_finite_loss_before_any_checkpoint_says_so(tmp_path, monkeypatch):
    nan_loss_at(monkeypatch, epoch=0, step=0)
    with pytest.raises(TrainingError, match="at epoch 0, step 0; no checkpoint had been written yet"):
        pretrain(tiny_config(tmp_path, "train.epochs=2"))
    assert not (tmp_path / CHECKPOINT_NAME).exists()


def test_non_finite_loss_in_a_fresh_run_does_not_point_to_a_stale_checkpoint(tmp_path, monkeypatch):
    pretrain(tiny_config(tmp_path, "train.epochs=1"))  # an earlier run in the same folder
    nan_loss_at(monkeypatch, epoch=0, step=0)
    with pytest.raises(TrainingError) as excinfo:
        pretrain(tiny_config(tmp_path, "train.epochs=1", "seed=1", "train.overwrite=true"))
    assert "epoch -1" not in str(excinfo.value)


def test_a_non_finite_loss_between_logging_steps_is_named_by_its_own_step(tmp_path, monkeypatch):
    """The loop reads the loss on the host only at logging steps and at an epoch's end (no sync per step); a NaN
    in between is still reported at its own step, and the epoch's checkpoint is not written after it."""
    nan_loss_at(monkeypatch, epoch=0, step=2)          # 6 steps per epoch; logged: steps 0 and 5
    with pytest.raises(TrainingError, match=r"non-finite \(nan\) at epoch 0, step 2; no checkpoint had been written"):
        pretrain(tiny_config(tmp_path, "train.epochs=2", "data.max_train=96", "train.log_every=100"))
    assert not (tmp_path / CHECKPOINT_NAME).exists()
    assert [r["step"] for r in records(tmp_path, "step")] == [0]


SYNC_METHODS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")


def loop_host_reads(tmp_path, monkeypatch, max_train: int) -> int:
    """How many times train/loop.py reads a tensor on the host in a one-epoch baseline run."""
    from tc2ssl.train import loop

    reads = []

    def guard(name, original):
        def wrapped(self, *args, **kwargs):
            if sys._getframe(1).f_code.co_filename == loop.__file__:
                reads.append(name)
            return original(self, *args, **kwargs)
        return wrapped

    with monkeypatch.context() as patch:
        for name in SYNC_METHODS:
            patch.setattr(torch.Tensor, name, guard(name, getattr(torch.Tensor, name)))
        pretrain(tiny_config(tmp_path / str(max_train), "train.epochs=1", f"data.max_train={max_train}",
                             "train.log_every=1000", "plugin.conflict_every=0"))
    return len(reads)


def test_the_loop_does_not_read_the_device_every_step(tmp_path, monkeypatch):
    """A host read of a CUDA tensor waits for the device. The loop's reads come at logging steps (here an epoch's
    first and last) and at the epoch's end: as many for a 6-step epoch as for a 2-step one."""
    two_steps = loop_host_reads(tmp_path, monkeypatch, max_train=32)
    six_steps = loop_host_reads(tmp_path, monkeypatch, max_train=96)
    assert 0 < two_steps == six_steps


def test_train_deterministic_switches_deterministic_kernels_on_for_the_run_only(tmp_path, monkeypatch):
    from tc2ssl.train.loop import kernel_settings

    seen = []
    training_step = Baseline.training_step

    def spy(self, images, info):
        seen.append((torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic))
        return training_step(self, images, info)

    monkeypatch.setattr(Baseline, "training_step", spy)
    assert not torch.are_deterministic_algorithms_enabled()
    pretrain(tiny_config(tmp_path, "train.epochs=1", "train.deterministic=true"))
    assert seen == [(True, True)] * 2
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic  # restored
    pretrain(tiny_config(tmp_path / "default", "train.epochs=1"))
    assert seen[2:] == [(False, False)] * 2
    benchmark = torch.backends.cudnn.benchmark
    with kernel_settings(tiny_config(tmp_path).train, torch.device("cuda")):   # decides only; nothing runs there
        assert torch.backends.cudnn.benchmark                # fixed step shapes: cuDNN picks its fastest kernels
    assert torch.backends.cudnn.benchmark == benchmark


# ---------------------------------------------------------------------------------------------- logged lr
def test_metrics_log_the_lr_each_step_used(tmp_path, monkeypatch):
    """Warm-up over epoch 0 (2 steps), then cosine: the logged lr is the one the optimiser stepped with (step 0
    at lr/2), not the next step's, which the scheduler sets after the step."""
    used = []
    adamw_step = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        used.append(self.param_groups[0]["lr"])
        return adamw_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    pretrain(tiny_config(tmp_path, "train.epochs=2", "train.lr=0.004", "train.warmup_epochs=1", "train.log_every=1"))
    logged = [r["lr"] for r in records(tmp_path, "step")]
    assert logged == used and len(used) == 4
    assert logged == pytest.approx([0.002, 0.004, 0.004, 0.002])     # warm-up 1/2, 2/2; cosine at 0 and 1/2


# ---------------------------------------------------------------------------------------------- 16-mixed scaling
def test_loss_scaler_only_for_16_mixed_on_a_device_and_never_for_functional_gradients(tmp_path):
    from tc2ssl.train.loop import build_grad_scaler, build_run

    cuda = torch.device("cuda")       # build_grad_scaler only decides; nothing runs on the device
    baseline = build_run(tiny_config(tmp_path, "train.epochs=1"))
    assert build_grad_scaler(baseline.cfg.train, cuda, baseline.plugin) is None                  # 32-true
    mixed = tiny_config(tmp_path, "train.precision=16-mixed").train
    assert build_grad_scaler(mixed, torch.device("cpu"), baseline.plugin) is None    # Fabric: bf16 on a CPU
    tc2 = build_run(tiny_config(tmp_path, "plugin.name=tc2", "plugin.n_tasks=2"))
    assert not tc2.plugin.supports_loss_scaling and baseline.plugin.supports_loss_scaling
    with pytest.raises(ConfigError, match="16-mixed is not supported with plugin.name=tc2"):
        build_grad_scaler(mixed, cuda, tc2.plugin)                          # even when validation was bypassed
    with pytest.raises(ConfigError, match="16-mixed is not supported with plugin.name=tc2"):
        load_config((), [*TINY_RUN, "plugin.name=tc2", "train.precision=16-mixed"])


def scaled_baseline_step(tmp_path, scaler, grad_clip: float):
    """One baseline step (SGD, so the update is linear in the gradient) with ``scaler`` (None = unscaled):
    (the raw .grad after training_step, the parameters after apply_gradients)."""
    from tc2ssl.train.loop import apply_gradients, build_run
    from tc2ssl.train.schedule import build_optimizer

    run = build_run(tiny_config(tmp_path, "train.optimizer=sgd", "train.lr=0.1", "plugin.conflict_every=0"))
    params = run.method.online_parameters()
    optimizer = build_optimizer(params.values(), run.cfg.train)
    run.plugin.loss_scaler = scaler
    run.plugin.training_step(run.data.train.images[:16], StepInfo(epoch=0, step=0, seed=5))
    raw = {k: p.grad.clone() for k, p in params.items()}
    apply_gradients(optimizer, params.values(), grad_clip, scaler)
    return raw, {k: p.detach().clone() for k, p in params.items()}


@pytest.mark.parametrize("grad_clip", [0.0, 1e-2])
def test_a_scaled_baseline_step_equals_the_unscaled_one(tmp_path, grad_clip):
    """GradScaler on a CPU in float32: the backward is scaled (.grad = S·g), and the optimiser sees g again,
    unscaled BEFORE clipping (a clip of the scaled gradient would shrink the update by S)."""
    scale = 2.0 ** 12
    plain_grads, plain_params = scaled_baseline_step(tmp_path, None, grad_clip)
    scaler = torch.amp.GradScaler("cpu", init_scale=scale)
    scaled_grads, scaled_params = scaled_baseline_step(tmp_path, scaler, grad_clip)
    for k, g in plain_grads.items():
        assert torch.isfinite(scaled_grads[k]).all()
        torch.testing.assert_close(scaled_grads[k], g * scale, rtol=1e-5, atol=1e-7 * scale)
    if grad_clip:
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in plain_grads.values()]))
        assert norm > 10 * grad_clip                                          # the clip is active
    for k, p in plain_params.items():
        torch.testing.assert_close(scaled_params[k], p, rtol=1e-5, atol=1e-7)
    assert scaler.get_scale() == scale                                       # finite: no back-off


def test_a_non_finite_scaled_gradient_skips_the_step_and_backs_off(tmp_path):
    from tc2ssl.train.loop import apply_gradients, build_run
    from tc2ssl.train.schedule import build_optimizer

    run = build_run(tiny_config(tmp_path, "train.optimizer=sgd", "plugin.conflict_every=0"))
    params = run.method.online_parameters()
    optimizer = build_optimizer(params.values(), run.cfg.train)
    run.plugin.loss_scaler = scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    run.plugin.training_step(run.data.train.images[:16], StepInfo(epoch=0, step=0, seed=5))
    before = {k: p.detach().clone() for k, p in params.items()}
    next(iter(params.values())).grad.view(-1)[0] = float("inf")          # an fp16 overflow
    apply_gradients(optimizer, params.values(), 1.0, scaler)
    assert all(torch.equal(p, before[k]) for k, p in params.items())
    assert scaler.get_scale() == 2.0 ** 11


def test_the_loop_scales_unscales_and_checkpoints_with_a_loss_scaler(tmp_path, monkeypatch):
    """The loop's wiring, with a CPU GradScaler standing in for the CUDA one of 16-mixed: every step scales the
    backward, unscales and steps through the scaler, and the run ends with the weights of an unscaled run."""
    from tc2ssl.train import loop

    class CountingScaler(torch.amp.GradScaler):
        def __init__(self):
            super().__init__("cpu", init_scale=2.0 ** 14)
            self.calls = {"scale": 0, "unscale_": 0, "step": 0}

        def scale(self, outputs):
            self.calls["scale"] += 1
            return super().scale(outputs)

        def unscale_(self, optimizer):
            self.calls["unscale_"] += 1
            return super().unscale_(optimizer)

        def step(self, optimizer, *args, **kwargs):
            self.calls["step"] += 1
            return super().step(optimizer, *args, **kwargs)

    common = ("train.epochs=2", "train.optimizer=sgd", "train.lr=0.05", "train.grad_clip=0.01",
              "plugin.conflict_every=0")
    pretrain(tiny_config(tmp_path / "plain", *common))
    scalers = []
    monkeypatch.setattr(loop, "build_grad_scaler", lambda *_: scalers.append(CountingScaler()) or scalers[-1])
    pretrain(tiny_config(tmp_path / "scaled", *common))
    assert scalers[0].calls == {"scale": 4, "unscale_": 4, "step": 4}       # 2 epochs x 2 steps
    assert load_checkpoint(tmp_path / "scaled" / CHECKPOINT_NAME)["scaler"]["scale"] == 2.0 ** 14
    plain, scaled = load_file(tmp_path / "plain" / "encoder.safetensors"), load_file(tmp_path / "scaled" / "encoder.safetensors")
    initial = loop.build_run(tiny_config(tmp_path / "init")).method.backbone.state_dict()
    moved = [k for k in plain if plain[k].is_floating_point() and not torch.equal(plain[k], initial[k])]
    assert moved
    for k in moved:
        torch.testing.assert_close(scaled[k] - initial[k], plain[k] - initial[k], rtol=1e-3, atol=1e-8)


def test_resume_accepts_a_checkpoint_that_recorded_small_cnn_tiny_with_the_default_widths(tmp_path):
    """Before model.widths was resolved, small_cnn_tiny runs recorded [32, 64, 128, 128]: they still resume."""
    from tc2ssl.train.checkpoint import save_checkpoint

    pretrain(tiny_config(tmp_path, "train.epochs=2", "train.max_steps=2"))          # epoch 0 checkpointed
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert state["config"]["model"]["widths"] == [16, 32, 64, 64]
    state["config"]["model"]["widths"] = [32, 64, 128, 128]
    save_checkpoint(tmp_path / CHECKPOINT_NAME, {k: v for k, v in state.items() if k != "format_version"})
    pretrain(tiny_config(tmp_path, "train.epochs=2", "train.resume=true"))
    assert [r["epoch"] for r in records(tmp_path, "epoch")] == [0, 1]
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["global_step"] == 4
