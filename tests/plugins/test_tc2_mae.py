"""TC² with a generative method (src/tc2ssl/plugins/tc2.py with MAE): D-TC-28 tasks, §3.5.3 token-level
calibration point, §3.7 MAE query loss.

Tiny runs: the ``mae`` preset (vit_tiny, m = 2, m' = 1) on 128 digits, batch 32, K = 2.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
from lightly.models.utils import patchify

import tc2ssl.tc2.calibrator as calibrator_module
from tc2ssl.config import load_config
from tc2ssl.data import load_data
from tc2ssl.data.tasks import build_tasks
from tc2ssl.errors import ConfigError
from tc2ssl.methods.base import LossContext
from tc2ssl.methods.mae import MaskedViews
from tc2ssl.plugins.base import StepInfo
from tc2ssl.tc2.stats import batch_statistics
from tc2ssl.train.loop import build_run, pretrain

from calibration_reference import reference_calibrated, reference_loss_v, reference_loss_w, reference_weights

BATCH = 32
TINY = [f"train.batch_size={BATCH}", "plugin.n_tasks=2", "eval.enabled=false", "train.progress=false",
        "data.max_train=128"]
INFO = StepInfo(epoch=0, step=0, seed=5)


@pytest.fixture(scope="module")
def digits():
    return load_data(load_config(["mae"], TINY).data)


@pytest.fixture
def make_run(digits, tmp_path):
    def make(*overrides: str, plugin: str = "tc2"):
        cfg = load_config(["mae"], [f"plugin.name={plugin}", *TINY, f"out={tmp_path / 'run'}", *overrides])
        return build_run(cfg, digits)

    return make


def images_of(run, n: int = BATCH) -> torch.Tensor:
    return run.data.train.images[:n]


def stage_inputs(run, info: StepInfo = INFO):
    """(views, split, z) as ``training_step`` makes them; z are the prepped token latents [N, m, T, d]."""
    plugin, p = run.plugin, run.plugin.cfg
    views = plugin.make_views(images_of(run), info.seed)
    split = build_tasks(BATCH, p.n_tasks, p.n_views, p.n_support_views,
                        torch.Generator().manual_seed(info.seed ^ 0x7A5C), min_support=run.method.min_support_views)
    with torch.no_grad():
        z = run.method.embed(views.flatten(0, 1)).unflatten(0, (BATCH, p.n_views))
    if plugin.calibrator is None:                                              # calibration off: raw latents
        return views, split, z
    plugin.calibrator.set_scale(z)
    return views, split, plugin.calibrator.prep(z)


def calibrator(plugin) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in plugin.calibrator.parameter_dict().items()}


# ---------------------------------------------------------------------------------------------- tasks
def test_masked_view_tasks(make_run):
    run = make_run()
    views, split, z = stage_inputs(run)
    one_view = run.view_maker(images_of(run), 1, INFO.seed)[:, 0]
    assert isinstance(views, MaskedViews) and tuple(views.shape) == (BATCH, 2)
    assert views.masks.shape == (BATCH, 2, 16) and (views.masks.sum(-1) == 12).all()   # round(0.75 · 16)
    assert z.shape == (BATCH, 2, 4, 64)                                                  # visible tokens
    for k in range(split.n_tasks):
        members = split.groups[k]
        support, query = split.support_views(views, k), split.query_views(views, k)
        assert tuple(support.shape) == (16, 1) and tuple(query.shape) == (16, 1)
        torch.testing.assert_close(support.images[:, 0], one_view[members])       # the unmasked image
        torch.testing.assert_close(query.images[:, 0], one_view[members])          # the query's target
        assert (support.masks != query.masks).any(dim=-1).all()                     # other masks per image
    again = run.plugin.make_views(images_of(run), INFO.seed)
    assert torch.equal(again.masks, views.masks) and torch.equal(again.images, views.images)
    assert not torch.equal(run.plugin.make_views(images_of(run), INFO.seed + 1).masks, views.masks)


def test_proto_mse_query_loss_is_rejected(make_run):
    with pytest.raises(ConfigError, match="plugin.query_loss=proto_mse"):
        make_run("plugin.query_loss=proto_mse")


# ---------------------------------------------------------------------------------------------- stage 1
def test_stage1_uses_token_rows_for_s_lv_and_lw(make_run):
    """S and L_v on all N·m·T token rows (<= 4096 here), L_w on the token rows of the support views."""
    run = make_run("plugin.factor_init=random")                # V0 is not reset by the first batch
    plugin = run.plugin
    views, split, z = stage_inputs(run)
    zf = z.reshape(-1, 64)
    rows = torch.arange(zf.shape[0]).view(BATCH, 2, 4)
    support_rows = rows[torch.arange(BATCH)[:, None], split.support_idx].reshape(-1)
    with torch.no_grad():
        basis = plugin.calibrator.factor_net(batch_statistics(zf))
        plugin.calibrator.set_l1(zf, basis)                      # λ₁ of this batch, as stage 1 sets it
        # Eq. 1 on every token row, Eq. 2 on the support views' token rows (written out, not the calibrator's)
        lv = reference_loss_v(basis, zf)
        support = zf[support_rows]
        support_weights = reference_weights(plugin.calibrator, support, basis)
        lw = reference_loss_w(support, support_weights, basis, float(plugin.calibrator.l1_value))

    _, metrics, z_stats, stats = plugin.stage1(z, split, views, seed=INFO.seed)

    assert torch.equal(z_stats, zf) and torch.equal(stats, batch_statistics(zf))
    torch.testing.assert_close(metrics["tc2/loss_v"], lv)
    torch.testing.assert_close(metrics["tc2/loss_w"], lw)
    assert torch.isfinite(metrics["tc2/stage1_ssl_support"]) and torch.isfinite(metrics["tc2/stage1_sse_query"])


def test_stage1_subsamples_token_rows_with_the_step_seed(make_run, monkeypatch):
    monkeypatch.setattr(calibrator_module, "MAX_STATISTIC_TOKENS", 100)
    run = make_run()
    views, split, z = stage_inputs(run)
    zf = z.reshape(-1, 64)
    subsets = {}
    for seed in (1, 1, 2):
        with torch.no_grad():
            _, _, z_stats, stats = run.plugin.stage1(z, split, views, seed=seed)
        assert z_stats.shape == (100, 64) and torch.equal(stats, batch_statistics(z_stats))
        hits = (z_stats[:, None, :] == zf[None]).all(-1)
        assert (hits.sum(1) == 1).all()                                             # distinct rows of zf
        subsets.setdefault(seed, []).append(hits.float().argmax(1))
    assert torch.equal(*subsets[1]) and not torch.equal(subsets[1][0], subsets[2][0])


@pytest.mark.parametrize("overrides", [(), ("plugin.query_loss=native",), ("plugin.bilevel=false",),
                                       ("plugin.stage1_mode=fomaml",)])
def test_stage1_with_all_tasks_in_one_loss_call_equals_the_per_task_loop(make_run, overrides):
    """MAE's losses are per-view means and its decoder has no batch coupling, so stage 1 evaluates the K tasks'
    losses in one decoder call per objective: the same f_v, f_w update and metrics as K calls (float64)."""
    runs = [make_run(*overrides), make_run(*overrides)]
    assert runs[0].plugin.calibrator.tasks_in_one_loss_call
    runs[1].plugin.calibrator.tasks_in_one_loss_call = False                  # the literal (1/K)Σ_k over per-task calls
    decoder_calls, outcomes = [], []
    for run in runs:
        run.method.double()
        run.plugin.double()
        run.plugin.view_maker.set_dtype(torch.float64)
        views, split, z = stage_inputs(run)
        before = calibrator(run.plugin)
        calls = []
        handle = run.method.decoder.register_forward_hook(lambda *_: calls.append(1))
        basis, metrics, _, _ = run.plugin.stage1(z, split, views, seed=INFO.seed)
        handle.remove()
        decoder_calls.append(len(calls))
        outcomes.append((basis, metrics, calibrator(run.plugin)))
        assert any(not torch.equal(v, before[n]) for n, v in outcomes[-1][2].items())    # stage 1 did update
    (basis, metrics, after), (ref_basis, ref_metrics, ref_after) = outcomes
    torch.testing.assert_close(basis, ref_basis, rtol=1e-12, atol=1e-14)
    for name, value in ref_metrics.items():
        torch.testing.assert_close(metrics[name], value, rtol=1e-12, atol=1e-14, msg=lambda m: f"{name}: {m}")
    for name, value in ref_after.items():
        torch.testing.assert_close(after[name], value, rtol=1e-12, atol=1e-14, msg=lambda m: f"{name}: {m}")
    k = runs[0].plugin.cfg.n_tasks
    assert decoder_calls[1] == k * decoder_calls[0] and decoder_calls[0] >= 1


def test_one_loss_call_needs_per_view_losses_and_no_batch_coupling(make_run):
    """SimCLR's NT-Xent takes its negatives from the task, and a BatchNorm normalises over the call: either makes
    the loss of all rows differ from the mean of the task losses, so the per-task calls stay."""
    from tc2ssl.plugins import build_plugin

    run = make_run()
    run.method.decoder.extra_norm = torch.nn.BatchNorm1d(4).train()          # a batch-coupled layer
    assert not build_plugin(run.cfg, run.method, run.view_maker).calibrator.tasks_in_one_loss_call
    simclr = build_run(load_config((), ["plugin.name=tc2", "model.backbone=small_cnn_tiny", *TINY[:-1]]))
    assert not simclr.method.per_view_losses and not simclr.plugin.calibrator.tasks_in_one_loss_call


# ---------------------------------------------------------------------------------------------- stage 2
def test_one_tc2_step_sets_encoder_grads_and_holds_the_calibrator_in_stage2(make_run):
    run = make_run()
    views, split, z = stage_inputs(run)
    basis, _, _, _ = run.plugin.stage1(z, split, views, seed=INFO.seed)
    before = calibrator(run.plugin)

    metrics = run.plugin.stage2(views, split, basis, INFO)

    for name, value in run.plugin.calibrator.parameter_dict().items():
        assert torch.equal(value, before[name]) and value.grad is None, name
    grads = {k: p.grad for k, p in run.method.online_parameters().items()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    for part in ("backbone.", "decoder."):
        assert any(k.startswith(part) and g.abs().sum() > 0 for k, g in grads.items()), part
    assert torch.isfinite(metrics["tc2/stage2_sse_query"]) and torch.isfinite(metrics["tc2/stage2_ssl_support"])


def test_stage2_with_zero_beta1_is_the_gradient_of_the_query_reconstruction_loss(make_run):
    """β1 = 0: the meta-gradient is ∇_θ (1/K)Σ_k mean ‖x̂_p − x_p‖² over the masked patches of the calibrated
    query views, x the task's unmasked images (D-TC-12)."""
    run = make_run("plugin.beta1=0.0")
    plugin, method = run.plugin, run.method
    views, split, z = stage_inputs(run)
    with torch.no_grad():
        basis = plugin.calibrator.factor_net(batch_statistics(z.reshape(-1, 64)))
    losses = []
    for k in range(split.n_tasks):
        query = split.query_views(views, k).flatten(0, 1)
        latents = method.embed(query)
        latents = reference_calibrated(plugin.calibrator, latents.reshape(-1, 64), basis).view(latents.shape)
        prediction = method.decoder(latents, query.masks)
        target = patchify(split.support_views(views, k).images[:, 0], 4)
        losses.append(((prediction - target) ** 2).sum(-1)[query.masks].mean())
    theta = method.online_parameters()
    expected = dict(zip(theta, torch.autograd.grad(torch.stack(losses).mean(), list(theta.values()))))

    plugin.stage2(views, split, basis, INFO)

    for name, p in theta.items():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-4, atol=1e-7, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("overrides, plugin", [(("plugin.query_loss=native",), "tc2"),
                                               (("plugin.bilevel=false",), "tc2"),
                                               ((), "tasks")])
def test_variants_run_with_finite_losses(make_run, overrides, plugin):
    run = make_run(*overrides, plugin=plugin)
    metrics = run.plugin.training_step(images_of(run), INFO)
    assert all(torch.isfinite(v) for v in metrics.values())
    assert all(torch.isfinite(p.grad).all() for p in run.method.online_parameters().values())


def test_support_loss_of_a_task_is_mae_on_its_masked_views(make_run):
    """The inner objective of task k: the support views' reconstruction of their own unmasked images."""
    run = make_run("plugin.calibration=false")
    views, split, _ = stage_inputs(run)
    support = split.support_views(views, 0)
    z = run.method.embed(support.flatten(0, 1)).unflatten(0, tuple(support.shape))
    loss = run.method.support_loss(z, LossContext(views=support))
    prediction = run.method.decoder(z.flatten(0, 1), support.masks.flatten(0, 1))
    target = patchify(support.images.flatten(0, 1), 4)
    torch.testing.assert_close(loss, ((prediction - target) ** 2).sum(-1)[support.masks.flatten(0, 1)].mean())


# ---------------------------------------------------------------------------------------------- T17 smoke
@pytest.mark.parametrize("plugin", ["none", "tc2"])
def test_pretrain_two_epochs_of_tc2_mae_writes_finite_metrics(digits, tmp_path, plugin):
    """T17: 2 epochs of MAE and TC²-MAE (tiny ViT): finite losses and the documented metrics.jsonl columns
    (step: kind, epoch, step, loss, lr, images_per_s; epoch: kind, epoch, step, loss, seconds + summaries)."""
    cfg = load_config(["mae"], [f"plugin.name={plugin}", *TINY, "train.epochs=2", "train.log_every=1",
                                f"out={tmp_path / plugin}"])
    out = pretrain(cfg, digits)

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert len(steps) == 2 * (len(digits.train) // BATCH) and [r["epoch"] for r in epochs] == [0, 1]
    for record in steps:
        assert {"kind", "epoch", "step", "loss", "lr", "images_per_s"} <= record.keys()
        assert all(math.isfinite(record[k]) for k in ("loss", "lr", "images_per_s"))
    for record in epochs:
        assert {"kind", "epoch", "step", "loss", "seconds"} <= record.keys() and math.isfinite(record["loss"])
    if plugin == "tc2":
        tc2_keys = {"tc2/loss_v", "tc2/loss_w", "tc2/stage2_sse_query", "tc2/stage2_ssl_support"}
        assert all(tc2_keys <= r.keys() and all(math.isfinite(r[k]) for k in tc2_keys) for r in steps)
        health = {"tc2/orth_error", "tc2/gate_sparsity", "tc2/cal_norm_ratio", "tc2/inner_gain_rate"}
        assert all(health <= r.keys() and all(math.isfinite(r[k]) for k in health) for r in epochs)
        assert all(r["loss"] == r["tc2/stage2_sse_query"] for r in steps)     # the logged loss is Eq. 7's
    else:
        assert not any(k.startswith("tc2/") for r in records for k in r)
    assert (out / "encoder.safetensors").is_file()
