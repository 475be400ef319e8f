"""Tests of the plain baseline plug-in (``plugin.name=none``, src/tc2ssl/plugins/baseline.py) and its Figure-1
conflict metric (D-DG-01: the batch split into random parts, cosines of the parts' native-loss gradients)."""
from __future__ import annotations

import pytest
import torch

from tc2ssl.config import load_config
from tc2ssl.data import load_data
from tc2ssl.methods.base import LossContext
from tc2ssl.plugins.base import StepInfo
from tc2ssl.train.loop import build_run

BATCH = 32
TINY = ["plugin.name=none", "model.backbone=small_cnn_tiny", f"train.batch_size={BATCH}", "eval.enabled=false",
        "train.progress=false", "method.proj_output_dim=16", "method.proj_hidden_dim=16", "data.max_train=128"]
INFO = StepInfo(epoch=0, step=0, seed=3)


@pytest.fixture(scope="module")
def digits():
    return load_data(load_config((), TINY).data)


@pytest.fixture
def make_run(digits, tmp_path):
    def make(*overrides: str):
        return build_run(load_config((), [*TINY, f"out={tmp_path / 'run'}", *overrides]), digits)

    return make


def images_of(run, n: int = BATCH) -> torch.Tensor:
    return run.data.train.images[:n]


def grads_of(method) -> dict[str, torch.Tensor]:
    return {k: p.grad.detach().clone() for k, p in method.online_parameters().items()}


def test_baseline_gradient_is_the_native_two_view_loss_gradient(make_run):
    run, twin = make_run("plugin.conflict_every=0"), make_run()
    assert run.plugin.n_views == 2 and len(run.plugin.state_dict()) == 0           # no networks of its own

    metrics = run.plugin.training_step(images_of(run), INFO)

    views = twin.view_maker(images_of(twin), 2, INFO.seed)
    assert views.shape[:2] == (BATCH, 2)
    z = twin.method.embed(views.flatten(0, 1)).view(BATCH, 2, -1)
    loss = twin.method.criterion(z[:, 0], z[:, 1])                                  # lightly's NT-Xent on 2 views
    theta = twin.method.online_parameters()
    expected = dict(zip(theta, torch.autograd.grad(loss, list(theta.values()))))
    assert metrics["loss"].item() == pytest.approx(loss.item(), rel=1e-6)
    for name, grad in grads_of(run.method).items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-5, atol=1e-7, msg=lambda m: f"{name}: {m}")


def test_conflict_measurement_does_not_change_the_gradient(make_run):
    measured, plain = make_run("plugin.conflict_every=1"), make_run("plugin.conflict_every=0")
    with_conflict = measured.plugin.training_step(images_of(measured), INFO)
    without = plain.plugin.training_step(images_of(plain), INFO)
    assert {"conflict/cos_mean", "conflict/cos_min", "conflict/frac_negative"} <= with_conflict.keys()
    assert not any(k.startswith("conflict/") for k in without)
    for name, grad in grads_of(measured.method).items():
        assert torch.equal(grad, grads_of(plain.method)[name]), name


@pytest.mark.parametrize("conflict_params", ["all", "backbone"])
def test_conflict_metric_is_the_cosine_of_the_parts_native_loss_gradients(make_run, conflict_params):
    """K = 3 random parts of the batch; each part's loss is the baseline loss of its rows of the full-batch z."""
    run = make_run("plugin.conflict_tasks=3", f"plugin.conflict_params={conflict_params}")
    images = images_of(run, 30)
    views = run.view_maker(images, 2, INFO.seed)
    parts = torch.randperm(30, generator=torch.Generator().manual_seed(INFO.seed ^ 0x5EED)).view(3, 10)
    method = run.method
    z = method.embed(views.flatten(0, 1)).view(30, 2, -1)
    theta = {k: v for k, v in method.online_parameters().items()
             if conflict_params == "all" or k.startswith("backbone.")}
    task_grads = []
    for part in parts:
        loss = method.baseline_loss(z[part], LossContext(views=views[part]))
        grads = torch.autograd.grad(loss, list(theta.values()), retain_graph=True)
        task_grads.append(torch.cat([g.reshape(-1) for g in grads]))
    unit = torch.nn.functional.normalize(torch.stack(task_grads), dim=1)
    cos = (unit @ unit.T)[torch.triu_indices(3, 3, offset=1).unbind()]
    method.zero_grad(set_to_none=True)

    metrics = run.plugin.training_step(images, INFO)

    torch.testing.assert_close(metrics["conflict/cos_mean"], cos.mean(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(metrics["conflict/cos_min"], cos.min(), rtol=1e-4, atol=1e-5)
    assert metrics["conflict/frac_negative"].item() == pytest.approx((cos < 0).float().mean().item())


def test_conflict_every_and_epoch_summary(make_run):
    run = make_run("plugin.conflict_every=2")
    steps = [run.plugin.training_step(images_of(run), StepInfo(epoch=0, step=s, seed=s)) for s in range(4)]
    assert ["conflict/cos_mean" in m for m in steps] == [True, False, True, False]

    summary = run.plugin.epoch_summary(0)
    assert summary["conflict/steps"] == 2.0
    assert summary["conflict/cos_mean"] == pytest.approx((steps[0]["conflict/cos_mean"]
                                                          + steps[2]["conflict/cos_mean"]).item() / 2)
    assert summary["conflict/cos_min"] == pytest.approx(min(steps[0]["conflict/cos_min"].item(),
                                                            steps[2]["conflict/cos_min"].item()))
    assert run.plugin.epoch_summary(1) == {}                                        # reset after each epoch


def test_training_measures_the_conflict_every_tenth_step_by_default(make_run):
    """The diagnostic costs a plain run K extra backward passes, so by default it is logged on every 10th step."""
    run = make_run()
    assert run.cfg.plugin.conflict_every == 10
    logged = ["conflict/cos_mean" in run.plugin.training_step(images_of(run), StepInfo(epoch=0, step=s, seed=s))
              for s in (0, 1, 9, 10, 20)]
    assert logged == [True, False, False, True, True]


def test_baseline_views_are_made_in_float32_under_a_bf16_autocast(make_run):
    """Augmentation runs outside autocast (as TC²'s does): bf16 views would be quantised before the encoder sees
    them; the encoder itself still runs under the autocast."""
    run = make_run("plugin.conflict_every=0")
    dtypes = []
    view_maker = run.plugin.view_maker

    def recording(*args, **kwargs):
        views = view_maker(*args, **kwargs)
        dtypes.append((views.dtype, torch.is_autocast_enabled("cpu")))
        return views

    run.plugin.view_maker = recording
    with torch.autocast("cpu", dtype=torch.bfloat16):
        run.plugin.training_step(images_of(run), INFO)
    assert dtypes == [(torch.float32, False)]
