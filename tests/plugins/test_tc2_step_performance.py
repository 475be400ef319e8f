"""The performance-related structure of the TC² step (src/tc2ssl/plugins/tc2.py, issue 6), checked for exactness:

- the shared support forward (``plugin.share_support_forward``): S's support rows and the inner loss of Eq. 6 from
  one forward; exact where no BatchNorm uses batch statistics, which ``auto`` detects;
- the step against a literal reference of D-TC-22–§3.10 (separate forwards for S, the inner loss, the anchors,
  the outer loss and the R8 check), in float64, for every stage-2 mode;
- no host synchronisation (``.item()``, ``bool()``, ``int()``, ``float()``, ``.tolist()``) from tc2ssl code in a step;
- float32 statistics under a bf16 autocast, the channels-last helpers, the task split moved once per step.

Tiny runs: small_cnn_tiny, d = 16, batch 32, K = 2 (as tests/plugins/test_tc2.py).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from tc2ssl.config import load_config
from tc2ssl.data import load_data
from tc2ssl.data.tasks import build_tasks
from tc2ssl.meta.functional import hypergradient
from tc2ssl.methods.base import LossContext
from tc2ssl.plugins.base import StepInfo
from tc2ssl.plugins.bilevel import batch_coupled_layers
from tc2ssl.precision import channels_last_views, encoder_input, float32_region
from tc2ssl.tc2.losses import loss_v, loss_w
from tc2ssl.tc2.stats import batch_statistics

from calibration_reference import reference_calibrated
from tc2ssl.timing import SectionTimer
from tc2ssl.train.loop import build_run

BATCH = 32
TINY = ["model.backbone=small_cnn_tiny", f"train.batch_size={BATCH}", "plugin.n_tasks=2", "eval.enabled=false",
        "train.progress=false", "method.proj_output_dim=16", "method.proj_hidden_dim=16", "data.max_train=128"]
SRC = str(Path(__file__).resolve().parents[2] / "src" / "tc2ssl")


@pytest.fixture(scope="module")
def digits():
    return load_data(load_config((), TINY).data)


@pytest.fixture
def make_run(digits, tmp_path):
    def make(*overrides: str, plugin: str = "tc2", float64: bool = False, per_sample: bool = False):
        cfg = load_config((), [f"plugin.name={plugin}", *TINY, f"out={tmp_path / 'run'}", *overrides])
        run = build_run(cfg, digits)
        run.method.train()
        if per_sample:          # BatchNorm on running statistics: every view's representation is per-sample
            for layer in run.method.modules():
                if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                    layer.eval()
        if float64:
            run.method.double()
            run.plugin.double()
            make_views = run.plugin.view_maker
            run.plugin.view_maker = lambda *a, **kw: make_views(*a, **kw).double()
        return run

    return make


def images_of(run, start: int = 0) -> torch.Tensor:
    return run.data.train.images[start:start + BATCH]


def step_once(run, info=StepInfo(epoch=0, step=0, seed=5)):
    """One training step from zeroed grads: (encoder grads, metrics as floats, calibrator after stage 1)."""
    for p in run.method.parameters():
        p.grad = None
    metrics = run.plugin.training_step(images_of(run), info)
    grads = {k: p.grad.detach().clone() for k, p in run.method.online_parameters().items()}
    calibrator = ({k: v.detach().clone() for k, v in run.plugin.calibrator.parameter_dict().items()}
                  if getattr(run.plugin, "calibrator", None) is not None else {})
    return grads, {k: float(v) for k, v in metrics.items()}, calibrator


def view_forwards(run) -> list[int]:
    """Patch ``method.embed`` to record the number of views of every encoder call."""
    calls = []
    embed = run.method.embed

    def counted(x, params=None):
        calls.append(x.shape[0])
        return embed(x, params)

    run.method.embed = counted
    return calls


def assert_close_dicts(a: dict, b: dict, rtol: float, atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=k)


# ---------------------------------------------------------------------------------------------- shared forward
def test_auto_shares_the_support_forward_only_where_it_is_exact(make_run):
    run = make_run()
    assert batch_coupled_layers(run.method)                      # small_cnn and the projector: BN, train mode
    assert not run.plugin.shares_support_forward()
    assert make_run(per_sample=True).plugin.shares_support_forward()
    assert make_run("plugin.share_support_forward=always").plugin.shares_support_forward()
    assert not make_run("plugin.share_support_forward=never", per_sample=True).plugin.shares_support_forward()
    assert not make_run(plugin="tasks", per_sample=True).plugin.shares_support_forward()      # +T: no S at all
    assert not make_run("plugin.bilevel=false", per_sample=True).plugin.shares_support_forward()


@pytest.mark.parametrize("mode", ["first_order", "finite_difference", "exact"])
def test_shared_support_forward_gives_the_same_step_as_a_separate_one(make_run, mode):
    """With a per-sample encoder the shared forward is the same maths: the same encoder gradients, metrics and
    stage-1 update as the separate statistics forward, with N·m' fewer views through the encoder."""
    separate = make_run(f"plugin.stage2_mode={mode}", "plugin.share_support_forward=never", per_sample=True)
    shared = make_run(f"plugin.stage2_mode={mode}", "plugin.share_support_forward=always", per_sample=True)
    calls_separate, calls_shared = view_forwards(separate), view_forwards(shared)
    g_sep, m_sep, c_sep = step_once(separate)
    g_sh, m_sh, c_sh = step_once(shared)
    assert_close_dicts(g_sh, g_sep, rtol=1e-4, atol=1e-6)
    assert_close_dicts(c_sh, c_sep, rtol=1e-5, atol=1e-7)
    assert m_sh.keys() == m_sep.keys()
    for k in m_sep:
        assert m_sh[k] == pytest.approx(m_sep[k], rel=1e-4, abs=1e-6), k
    p = shared.plugin.cfg
    assert sum(calls_separate) - sum(calls_shared) == BATCH * p.n_support_views


def test_mae_on_the_vit_shares_by_default_and_gives_the_same_step(digits, tmp_path):
    """MAE's ViT has LayerNorm only: ``auto`` shares, and the step equals the separate-forward one (G-SSL tasks:
    masked views, token latents [N, m, T, d] in S)."""
    steps = {}
    for share in ("never", "auto"):
        cfg = load_config(["mae"], ["plugin.name=tc2", f"train.batch_size={BATCH}", "plugin.n_tasks=2",
                                    "eval.enabled=false", "train.progress=false", "data.max_train=128",
                                    f"plugin.share_support_forward={share}", f"out={tmp_path / share}"])
        run = build_run(cfg, load_data(cfg.data))
        run.method.train()
        assert run.plugin.shares_support_forward() == (share == "auto")
        steps[share] = step_once(run)
    assert_close_dicts(steps["auto"][0], steps["never"][0], rtol=1e-5, atol=1e-7)
    for k, value in steps["never"][1].items():
        assert steps["auto"][1][k] == pytest.approx(value, rel=1e-5, abs=1e-7), k


def test_shared_support_forward_with_batch_norm_is_a_different_statistic(make_run):
    """With train-mode BN, ``always`` changes S (task-level BN for the support rows): auto must not pick it."""
    auto = make_run()
    forced = make_run("plugin.share_support_forward=always")
    _, m_auto, _ = step_once(auto)
    _, m_forced, _ = step_once(forced)
    assert m_auto["tc2/loss_v"] != pytest.approx(m_forced["tc2/loss_v"], rel=1e-6)


# ---------------------------------------------------------------------------------------------- literal reference
def reference_step(run, images, info):
    """D-TC-31 written out with separate forwards (the implementation before issue 6): one no-grad forward of
    all N·m views for S, stage 1, then per task the engine's closures for Eq. 6 and Eq. 7 and a separate forward
    at θ^k for the R8 check. Returns (encoder meta-gradient, R8 hits, stage-2 query loss)."""
    plugin, method, p = run.plugin, run.method, run.plugin.cfg
    views = plugin.view_maker(images, p.n_views, info.seed)
    split = build_tasks(images.shape[0], p.n_tasks, p.n_views, p.n_support_views,
                        torch.Generator().manual_seed(info.seed ^ 0x7A5C), min_support=method.min_support_views)
    with torch.no_grad():
        z = method.embed(views.flatten(0, 1)).view(images.shape[0], p.n_views, -1)
    plugin.calibrator.set_scale(z)
    z = plugin.calibrator.prep(z)
    basis = plugin.stage1(z, split, views, seed=info.seed)[0]
    theta = method.online_parameters()
    d = method.embed_dim

    def cal(zz):
        return reference_calibrated(plugin.calibrator, zz, basis)

    def embed_views(params, x):
        n, v = x.shape[:2]
        return cal(method.embed(x.flatten(0, 1), params)).view(n, v, d)

    for t in plugin.calibrator.parameter_dict().values():
        t.requires_grad_(False)
    total, hits, query = None, 0, []
    for k in range(split.n_tasks):
        xs, xq = split.support_views(views, k), split.query_views(views, k)

        def inner(params, xs=xs):
            return method.support_loss(embed_views(params, xs), LossContext(params=params, views=xs, calibrate=cal))

        def outer(params, xs=xs, xq=xq):
            with torch.no_grad():
                anchors = method.anchors(embed_views(params, xs), LossContext(params=params, views=xs, calibrate=cal))
            return method.query_loss(embed_views(params, xq), anchors,
                                     LossContext(params=params, views=xq, calibrate=cal))

        result = hypergradient(outer, inner, theta, lr=p.beta1, mode=p.stage2_mode, fd_radius=p.fd_radius)
        with torch.no_grad():
            hits += int(inner(result.adapted) < result.inner_losses[0])
        query.append(result.outer_loss)
        total = {n: g / split.n_tasks + (0 if total is None else total[n]) for n, g in result.grads.items()}
    for t in plugin.calibrator.parameter_dict().values():
        t.requires_grad_(True)
    return total, hits, float(torch.stack(query).mean())


@pytest.mark.parametrize("mode", ["first_order", "finite_difference", "exact"])
def test_step_equals_the_literal_reference_in_float64(make_run, mode):
    """The optimised step (calibration batched over tasks, anchors' forward reused by R8, split moved once, no
    syncs) computes what D-TC-31 says: same meta-gradient, R8 count and query loss as separate forwards."""
    info = StepInfo(epoch=0, step=0, seed=11)
    run = make_run(f"plugin.stage2_mode={mode}", "plugin.conflict_every=0", float64=True)
    reference = make_run(f"plugin.stage2_mode={mode}", "plugin.conflict_every=0", float64=True)
    grads, metrics, _ = step_once(run, info)
    ref_grads, ref_hits, ref_query = reference_step(reference, images_of(reference), info)
    assert_close_dicts(grads, ref_grads, rtol=1e-9, atol=1e-12)
    assert int(run.plugin.inner_gain_hits[0]) == ref_hits
    assert run.plugin.inner_gain_hits[1] == run.plugin.cfg.n_tasks
    assert metrics["tc2/stage2_sse_query"] == pytest.approx(ref_query, rel=1e-12)


def test_r8_count_needs_no_extra_forward(make_run):
    """The R8 check reuses the anchors' support forward at θ^k: per task, three encoder calls (inner at θ,
    anchors at θ^k, outer at θ^k), plus the one statistics forward."""
    run = make_run("plugin.health_every=1")
    calls = view_forwards(run)
    step_once(run)
    assert len(calls) == 1 + 3 * run.plugin.cfg.n_tasks


# ---------------------------------------------------------------------------------------------- host syncs
SYNC_METHODS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")


@pytest.mark.parametrize("plugin", ["tc2", "tasks"])
def test_a_step_has_no_host_sync_in_tc2ssl_code(make_run, monkeypatch, plugin):
    """Every .item(), bool(t), int(t), float(t), .tolist() on a tensor waits for the device on CUDA. None may come
    from tc2ssl code during a training step, health metrics and conflict diagnostics included (their tensors are
    read once per epoch). Library code (kornia) is not ours to check here."""
    run = make_run("plugin.health_every=1", "plugin.conflict_every=1", plugin=plugin)
    offenders = []

    def guard(name, original):
        def wrapped(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(SRC):
                offenders.append(f"{name} from {caller}:{sys._getframe(1).f_lineno}")
            return original(self, *args, **kwargs)
        return wrapped

    for name in SYNC_METHODS:
        monkeypatch.setattr(torch.Tensor, name, guard(name, getattr(torch.Tensor, name)))
    run.plugin.training_step(images_of(run), StepInfo(epoch=0, step=0, seed=3))
    monkeypatch.undo()
    assert offenders == []
    assert isinstance(run.plugin.inner_gain_hits[0], torch.Tensor)     # R8 hits stay on the device until epoch end
    summary = run.plugin.epoch_summary(0)
    assert 0.0 <= summary["tc2/inner_gain_rate"] <= 1.0


# ---------------------------------------------------------------------------------------------- precision
def test_statistics_stay_float32_under_a_bf16_autocast():
    torch.manual_seed(0)
    z = torch.randn(256, 16) * 3 + 1
    basis = torch.linalg.qr(torch.randn(16, 8))[0]
    weights = torch.randn(256, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (z.T @ z).dtype == torch.bfloat16                     # what autocast does to a plain matmul
        stats, lv, lw = batch_statistics(z), loss_v(basis, z), loss_w(z, weights, basis)
    assert stats.dtype == lv.dtype == lw.dtype == torch.float32
    reference = batch_statistics(z.double())
    torch.testing.assert_close(stats.double(), reference, rtol=1e-5, atol=1e-5)   # bf16 would be off by ~1e-2
    torch.testing.assert_close(lv.double(), loss_v(basis.double(), z.double()), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lw.double(), loss_w(z.double(), weights.double(), basis.double()), rtol=1e-5,
                               atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16), float32_region("cpu"):
        assert (z.T @ z).dtype == torch.float32


def test_training_step_under_bf16_autocast_keeps_stage1_in_float32(make_run):
    """Under the loop's bf16 autocast the encoder runs in bf16, but S, f_v, f_w and the stage-1 losses see float32,
    and the step's losses are finite."""
    run = make_run("plugin.conflict_every=0")
    seen = []
    run.plugin.calibrator.factor_net.register_forward_hook(
        lambda module, args, out: seen.append((args[0].dtype, out.dtype)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        metrics = run.plugin.training_step(images_of(run), StepInfo(epoch=0, step=0, seed=2))
    assert seen and all(inp == out == torch.float32 for inp, out in seen)
    assert all(torch.isfinite(v) for v in metrics.values())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in run.method.online_parameters().values())


def test_channels_last_views_flatten_to_channels_last_without_changing_values():
    views = torch.randn(6, 4, 3, 8, 8)
    laid_out = channels_last_views(views, enabled=True)
    assert torch.equal(laid_out, views)
    flat = laid_out.flatten(0, 1)
    assert flat.is_contiguous(memory_format=torch.channels_last) and not flat.is_contiguous()
    assert channels_last_views(views, enabled=False) is views
    x = encoder_input(views.flatten(0, 1), enabled=True)
    assert x.is_contiguous(memory_format=torch.channels_last) and torch.equal(x, views.flatten(0, 1))
    assert encoder_input(x, enabled=True).data_ptr() == x.data_ptr()         # already laid out: no copy


def test_task_split_moves_once_and_selects_the_same_views():
    split = build_tasks(16, 2, 4, 2, torch.Generator().manual_seed(0))
    assert split.to("cpu") is split
    meta = split.to("meta")
    assert meta.groups.device.type == "meta" and meta.n_kept == split.n_kept
    assert meta.support_idx.shape == split.support_idx.shape and meta.query_idx.shape == split.query_idx.shape


def test_section_timer_covers_the_parts_of_a_step(make_run):
    run = make_run("plugin.conflict_every=0")
    run.plugin.timer = SectionTimer()
    run.plugin.training_step(images_of(run), StepInfo(epoch=0, step=0, seed=2))
    seconds = run.plugin.timer.reset()
    assert set(seconds) == {"augmentation", "statistics_forward", "stage1", "health", "stage2"}
    assert all(t > 0 for t in seconds.values())
    assert run.plugin.timer.reset() == {}
