"""Tests of the TC² / "+T" plug-in (src/tc2ssl/plugins/tc2.py): D-TC-09–§3.10, §10 T9, T10, T17, T18, R14.

Every test builds a tiny run (small_cnn_tiny, d = 16, 128 digits, batch 32, K = 2) through ``build_run`` and drives
the plug-in's ``stage1`` / ``stage2`` / ``training_step`` directly. References are recomputed here with the
plug-in's own building blocks (``calibrate``, ``loss_tc2``, ``prep``) and the method's loss hooks, and
``torch.autograd.grad`` on the live parameters.

The float64 tests (exact vs finite-difference stage 2) call ``stage2`` directly: ``training_step`` casts the
stage-1 representations to float32 (``z.float()``), which a float64 model cannot consume, and the ViewMaker emits
float32 views, which are cast to float64 here before they reach the model.
"""
from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
import torch.nn as nn

from tc2ssl.config import load_config
from tc2ssl.data import load_data
from tc2ssl.data.tasks import build_tasks
from tc2ssl.errors import ConfigError
from tc2ssl.methods.base import LossContext
from tc2ssl.plugins.base import StepInfo
from tc2ssl.tc2.factor_net import FactorNet
from tc2ssl.tc2.losses import brier_query_loss, nt_xent_multiview
from tc2ssl.tc2.stats import batch_statistics
from tc2ssl.train.loop import build_run, pretrain
from tc2ssl.train.schedule import build_optimizer, build_scheduler

from calibration_reference import reference_calibrated

BATCH = 32
TINY = ["model.backbone=small_cnn_tiny", f"train.batch_size={BATCH}", "plugin.n_tasks=2", "eval.enabled=false",
        "train.progress=false", "method.proj_output_dim=16", "method.proj_hidden_dim=16", "data.max_train=128"]
INFO = StepInfo(epoch=0, step=0, seed=1)


@pytest.fixture(scope="module")
def digits():
    """The 128 training digits every run of this module shares (loaded once)."""
    return load_data(load_config((), TINY).data)


@pytest.fixture
def make_run(digits, tmp_path):
    """make_run(*overrides, plugin="tc2") -> a fresh Run on the shared digits (weights seeded by cfg.seed)."""

    def make(*overrides: str, plugin: str = "tc2"):
        cfg = load_config((), [f"plugin.name={plugin}", *TINY, f"out={tmp_path / 'run'}", *overrides])
        return build_run(cfg, digits)

    return make


def images_of(run, n: int = BATCH, start: int = 0) -> torch.Tensor:
    return run.data.train.images[start:start + n]


def stage_inputs(run, images: torch.Tensor, info: StepInfo = INFO):
    """(views, split, z) exactly as ``training_step`` makes them; z are the prepped stage-1 representations.

    The float64 wrapper: views are cast to the model's dtype and z to the calibrator's (``training_step`` uses
    float32 for both).
    """
    plugin, p = run.plugin, run.plugin.cfg
    views = run.view_maker(images, p.n_views, info.seed).to(next(run.method.parameters()).dtype)
    split = build_tasks(images.shape[0], p.n_tasks, p.n_views, p.n_support_views,
                        torch.Generator().manual_seed(info.seed ^ 0x7A5C), remainder=p.remainder,
                        min_support=run.method.min_support_views)
    with torch.no_grad():
        z = run.method.embed(views.flatten(0, 1)).view(views.shape[0], p.n_views, -1)
    calibrator = getattr(plugin, "calibrator", None)
    if calibrator is None:                                                     # "+T": z is not calibrated
        return views, split, z
    return views, split, calibrator.prep(z.to(next(iter(calibrator.parameter_dict().values())).dtype))


def basis_at(run, z: torch.Tensor) -> torch.Tensor:
    """V = f_v(S) for the prepped representations z [N, m, d] (detached), without a stage-1 update."""
    with torch.no_grad():
        return run.plugin.calibrator.factor_net(batch_statistics(z.reshape(-1, z.shape[-1])))


def snapshot(tensors) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in tensors}


def calibrator(plugin) -> dict[str, torch.Tensor]:
    return snapshot(plugin.calibrator.parameter_dict().items())


def encoder_grads(method) -> dict[str, torch.Tensor]:
    return {k: p.grad.detach().clone() for k, p in method.online_parameters().items()}


def flat(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors.values()])


def smooth_activations(module: nn.Module) -> None:
    """Swap every ReLU for SiLU: finite differences of a ReLU net jump at the kinks, so FD cannot track exact."""
    for name, child in module.named_children():
        if isinstance(child, nn.ReLU):
            setattr(module, name, nn.SiLU())
        else:
            smooth_activations(child)


# ---------------------------------------------------------------------------------------------- stage 1 / stage 2
def test_stage1_leaves_encoder_bit_identical_and_updates_calibrator(make_run):
    run = make_run()
    views, split, z = stage_inputs(run, images_of(run))
    encoder_before = snapshot(run.method.state_dict().items())                    # parameters and buffers
    calibrator_before = calibrator(run.plugin)

    basis, metrics, _, _ = run.plugin.stage1(z, split, views)

    for name, value in run.method.state_dict().items():
        assert torch.equal(value, encoder_before[name]), f"stage 1 changed the encoder's {name}"
    assert all(p.grad is None for p in run.method.parameters()), "stage 1 must not write encoder gradients"
    changed = [k for k, v in calibrator(run.plugin).items() if not torch.equal(v, calibrator_before[k])]
    assert any(k.startswith("factor_net.") for k in changed) and any(k.startswith("weight_net.") for k in changed)
    assert basis.shape == (16, run.plugin.calibrator.n_factors) and not basis.requires_grad
    assert {"tc2/loss_v", "tc2/loss_w", "tc2/stage1_ssl_support", "tc2/stage1_sse_query"} <= metrics.keys()


def test_stage2_holds_calibrator_and_sets_encoder_grads(make_run):
    run = make_run()
    views, split, z = stage_inputs(run, images_of(run))
    basis, _, _, _ = run.plugin.stage1(z, split, views)
    calibrator_before = calibrator(run.plugin)

    metrics = run.plugin.stage2(views, split, basis, INFO)

    for name, value in run.plugin.calibrator.parameter_dict().items():
        assert torch.equal(value, calibrator_before[name]), f"stage 2 changed {name}"
        assert value.grad is None, f"stage 2 wrote a gradient into {name}"
        assert value.requires_grad, f"stage 2 left {name} frozen"
    grads = {k: p.grad for k, p in run.method.online_parameters().items()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert any(k.startswith("backbone.") and g.abs().sum() > 0 for k, g in grads.items())
    assert any(k.startswith("projector.") and g.abs().sum() > 0 for k, g in grads.items())
    assert torch.isfinite(metrics["tc2/stage2_sse_query"])


# ---------------------------------------------------------------------------------------------- T9: stage 1 modes
ALPHAS = {"alpha1": 0.011, "alpha2": 0.023, "alpha3": 0.037, "alpha4": 0.041}


def reference_statistics(zf: torch.Tensor) -> torch.Tensor:
    """S = [μ; Σ] (biased covariance), written here."""
    mean = zf.mean(0)
    centred = zf - mean
    return torch.cat([mean[None], centred.T @ centred / zf.shape[0]])


def reference_l1(plugin, zf: torch.Tensor) -> float:
    """λ₁ of the batch: l1_relative_coef × RMS(z V) for V at the calibrator's live parameters (relative scale)."""
    p = plugin.cfg
    if p.l1_scale != "relative":
        return p.l1_coef
    with torch.no_grad():
        basis = plugin.calibrator.factor_net(reference_statistics(zf))
        return p.l1_relative_coef * (zf @ basis).square().mean().sqrt()


def reference_objective(plugin, z_all, split, phi, which: str, l1) -> torch.Tensor:
    """L̄^s (Eq. 4) or L̄^q (Eq. 5) at calibrator parameters ``phi``, written from the equations: f_v and f_w are
    the calibrator's two networks (called with ``phi``), S, ẑ = W Vᵀ, L_v (Eq. 1, per-row mean), L_w (Eq. 2 on the
    support / query rows, V given or trained through it per ``detach_v_in_lw``) and L_tc² (Eq. 3) are computed here.
    """
    method, calibrator, p = plugin.method, plugin.calibrator, plugin.cfg
    n_img, m, d = z_all.shape
    zf = z_all.reshape(n_img * m, d)
    f_v = {k.removeprefix("factor_net."): v for k, v in phi.items() if k.startswith("factor_net.")}
    f_w = {k.removeprefix("weight_net."): v for k, v in phi.items() if k.startswith("weight_net.")}
    basis = torch.func.functional_call(calibrator.factor_net, f_v, (reference_statistics(zf),))     # V = f_v(S)
    calibrator.weight_net.threshold_scale = l1 / 2

    def weights(z):
        return torch.func.functional_call(calibrator.weight_net, f_w, (z, basis))

    z_hat = (weights(zf) @ basis.T).view(n_img, m, d)
    view_idx = split.support_idx if which == "support" else split.query_idx
    rows = (torch.arange(n_img)[:, None] * m + view_idx).reshape(-1)
    ssl = []
    for members in split.groups:
        support = z_hat[members[:, None], split.support_idx[members]]
        if which == "support":
            ssl.append(method.support_loss(support, LossContext()))
        else:
            query = z_hat[members[:, None], split.query_idx[members]]
            ssl.append(method.query_loss(query, method.anchors(support, LossContext()), LossContext()))
    eye = torch.eye(basis.shape[1], dtype=basis.dtype)
    loss_v = ((basis.T @ basis - eye) ** 2).sum() + ((zf - zf @ basis @ basis.T) ** 2).sum(-1).mean()   # Eq. (1)
    given = basis.detach() if p.detach_v_in_lw else basis          # Eq. (2) treats V as given (detach_v_in_lw)
    w_rows = torch.func.functional_call(calibrator.weight_net, f_w, (zf[rows], given))
    loss_w = (((zf[rows] - w_rows @ given.T) ** 2).sum(-1) + l1 * w_rows.abs().sum(-1)).mean()        # Eq. (2)
    return torch.stack(ssl).mean() + loss_v + p.lam_s * loss_w                                          # Eq. (3)


def reference_stage1(plugin, z_all, split, mode: str, alphas: dict) -> dict[str, torch.Tensor]:
    """The two-step update of Eqs. 4-5 in ``mode`` (sequential / fomaml / maml), with plain SGD."""
    phi = {k: v.detach().clone().requires_grad_(True) for k, v in plugin.calibrator.parameter_dict().items()}
    l1 = reference_l1(plugin, z_all.reshape(-1, z_all.shape[-1]))
    lr_s = {k: alphas["alpha1"] if k.startswith("factor_net.") else alphas["alpha2"] for k in phi}
    lr_q = {k: alphas["alpha3"] if k.startswith("factor_net.") else alphas["alpha4"] for k in phi}
    g_s = torch.autograd.grad(reference_objective(plugin, z_all, split, phi, "support", l1), list(phi.values()),
                              create_graph=mode == "maml")
    phi_s = {k: phi[k] - lr_s[k] * g for k, g in zip(phi, g_s)}                    # Eq. 4
    if mode != "maml":
        phi_s = {k: v.detach().requires_grad_(True) for k, v in phi_s.items()}
    loss_q = reference_objective(plugin, z_all, split, phi_s, "query", l1)
    wrt = phi if mode == "maml" else phi_s
    g_q = dict(zip(phi, torch.autograd.grad(loss_q, list(wrt.values()))))
    start = phi_s if mode == "sequential" else phi                                  # Eq. 5 starts from f' (literal)
    return {k: (start[k] - lr_q[k] * g_q[k]).detach() for k in phi}


def run_stage1_float64(make_run, mode: str, alphas: dict, *overrides: str):
    run = make_run(f"plugin.stage1_mode={mode}", "plugin.stage1_grad_clip=0", "plugin.factor_init=random",
                   *(f"plugin.{k}={v}" for k, v in alphas.items()), *overrides)
    run.plugin.double()
    views, split, z = stage_inputs(run, images_of(run))
    expected = reference_stage1(run.plugin, z, split, mode, alphas)
    run.plugin.stage1(z, split, views)
    return calibrator(run.plugin), expected


@pytest.mark.parametrize("mode", ["sequential", "fomaml", "maml"])
def test_stage1_matches_manual_two_step_update(make_run, mode):
    """T9: (φ_v, φ_w) after stage 1 equal the manual support step (α1/α2) then query step (α3/α4)."""
    actual, expected = run_stage1_float64(make_run, mode, ALPHAS)
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, rtol=1e-9, atol=1e-12, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("detach", ["true", "false"])
def test_stage1_matches_manual_update_with_v_given_or_trained_in_lw(make_run, detach):
    """T9: the reference also holds when Eq. 2 trains V (detach_v_in_lw=false), and the two settings differ."""
    actual, expected = run_stage1_float64(make_run, "sequential", ALPHAS, f"plugin.detach_v_in_lw={detach}")
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, rtol=1e-9, atol=1e-12, msg=lambda m: f"{name}: {m}")
    other, _ = run_stage1_float64(make_run, "sequential", ALPHAS,
                                  f"plugin.detach_v_in_lw={'false' if detach == 'true' else 'true'}")
    assert (flat(actual) - flat(other)).abs().max() > 1e-8          # the knob reaches f_v's update


def test_stage1_maml_differs_from_sequential_unless_support_step_is_zero(make_run):
    """T9: maml != sequential for α1, α2 > 0; with α1 = α2 = 0 sequential, fomaml and maml coincide."""
    sequential, _ = run_stage1_float64(make_run, "sequential", ALPHAS)
    maml, _ = run_stage1_float64(make_run, "maml", ALPHAS)
    assert (flat(sequential) - flat(maml)).abs().max() > 1e-6

    no_support_step = {**ALPHAS, "alpha1": 0.0, "alpha2": 0.0}
    results = {mode: flat(run_stage1_float64(make_run, mode, no_support_step)[0])
               for mode in ("sequential", "fomaml", "maml")}
    torch.testing.assert_close(results["fomaml"], results["sequential"], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(results["maml"], results["sequential"], rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------------- T10: stage 2
def reference_query_gradient(run, views, split, basis, task_reduction: str) -> dict[str, torch.Tensor]:
    """∇_θ of the (mean or sum over tasks) calibrated query loss at θ, anchors from the support views (no grad)."""
    plugin, method = run.plugin, run.method
    d = method.embed_dim

    def embed(x):
        z = method.embed(x.flatten(0, 1))
        z = reference_calibrated(plugin.calibrator, z, basis) if basis is not None else z
        return z.view(x.shape[0], x.shape[1], d)

    losses = []
    for k in range(split.n_tasks):
        with torch.no_grad():
            anchors = method.anchors(embed(split.support_views(views, k)), LossContext())
        losses.append(method.query_loss(embed(split.query_views(views, k)), anchors, LossContext()))
    total = torch.stack(losses).sum()
    total = total / split.n_tasks if task_reduction == "mean" else total
    theta = method.online_parameters()
    return dict(zip(theta, torch.autograd.grad(total, list(theta.values()))))


@pytest.mark.parametrize("plugin,task_reduction", [("tc2", "mean"), ("tc2", "sum"), ("tasks", "mean")])
def test_stage2_first_order_with_zero_beta1_is_the_plain_query_gradient(make_run, plugin, task_reduction):
    """T10: with β1 = 0, the first-order meta-gradient is ∇_θ (1/K)Σ_k L_sse^q (or Σ_k under task_reduction=sum)."""
    run = make_run("plugin.beta1=0.0", "plugin.stage2_mode=first_order", f"plugin.task_reduction={task_reduction}",
                   plugin=plugin)
    views, split, z = stage_inputs(run, images_of(run))
    basis = basis_at(run, z) if plugin == "tc2" else None
    expected = reference_query_gradient(run, views, split, basis, task_reduction)

    run.plugin.bilevel_step(views, split, INFO) if basis is None else run.plugin.stage2(views, split, basis, INFO)

    for name, grad in encoder_grads(run.method).items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-7, msg=lambda m: f"{name}: {m}")


def stage2_grads_float64(make_run, mode: str, beta1: float) -> torch.Tensor:
    """The stage-2 encoder gradient of one batch on a float64, SiLU copy of the tiny model (same V for all calls)."""
    run = make_run(f"plugin.stage2_mode={mode}", f"plugin.beta1={beta1}", "plugin.fd_radius=1e-4")
    smooth_activations(run.method)
    run.method.double()
    run.plugin.double()
    views, split, z = stage_inputs(run, images_of(run))
    run.plugin.stage2(views, split, basis_at(run, z), INFO)
    return flat(encoder_grads(run.method))


def test_stage2_exact_agrees_with_finite_difference_float64(make_run):
    """T10 / T14: the unrolled AID-FD hypergradient (r = 1e-4) matches exact second order in float64."""
    exact = stage2_grads_float64(make_run, "exact", 0.05)
    finite_difference = stage2_grads_float64(make_run, "finite_difference", 0.05)
    first_order = stage2_grads_float64(make_run, "first_order", 0.05)
    assert ((finite_difference - exact).norm() / exact.norm()) < 1e-5
    assert ((first_order - exact).norm() / exact.norm()) > 1e-2                   # the Hessian term is not negligible


def test_stage2_first_order_differs_from_exact_by_order_beta1(make_run):
    """T10: ‖exact − first_order‖ = β1‖H·v‖ + O(β1²): doubling a small β1 doubles the difference (2 ± 10%)."""
    beta1 = 1e-4
    gap = [(stage2_grads_float64(make_run, "exact", b) - stage2_grads_float64(make_run, "first_order", b)).norm()
           for b in (beta1, 2 * beta1)]
    assert 1.8 < (gap[1] / gap[0]).item() < 2.2


@pytest.mark.parametrize("mode", ["first_order", "finite_difference", "exact"])
def test_stage2_zero_beta1_is_the_plain_query_gradient_in_every_mode_float64(make_run, mode):
    """T10 in float64: with β1 = 0 every stage-2 mode returns ∇_θ (1/K)Σ_k L_sse^q(θ) to rounding (θ^k = θ, and the
    Hessian terms are multiplied by β1 = 0)."""
    run = make_run("plugin.beta1=0.0", f"plugin.stage2_mode={mode}", "plugin.conflict_every=0")
    run.method.double()
    run.plugin.double()
    views, split, z = stage_inputs(run, images_of(run))
    basis = basis_at(run, z)
    expected = reference_query_gradient(run, views, split, basis, "mean")

    run.plugin.bilevel_step(views, split, INFO) if basis is None else run.plugin.stage2(views, split, basis, INFO)

    for name, grad in encoder_grads(run.method).items():
        assert grad.dtype == torch.float64
        torch.testing.assert_close(grad, expected[name], rtol=1e-10, atol=1e-13, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("mode", ["first_order", "finite_difference", "exact"])
def test_training_step_leaves_encoder_parameters_bit_identical_in_every_mode(make_run, mode):
    """T9/T10: a whole step (statistics forward, stage 1, the stage-2 hypergradient probes incl. the ±εv
    finite-difference probes) reads θ but never writes it; only ``.grad`` is set. The calibrator moves in stage 1
    only: stage 2 leaves it bit-identical, without a gradient, and trainable again afterwards."""
    run = make_run(f"plugin.stage2_mode={mode}", "plugin.fd_radius=1e-2")
    theta_before = snapshot(run.method.named_parameters())
    views, split, z = stage_inputs(run, images_of(run))
    basis, _, _, _ = run.plugin.stage1(z, split, views)
    for name, value in run.method.named_parameters():
        assert torch.equal(value, theta_before[name]), f"stage 1 changed {name}"
    calibrator_after_stage1 = calibrator(run.plugin)

    run.plugin.stage2(views, split, basis, INFO)

    for name, value in run.method.named_parameters():
        assert torch.equal(value, theta_before[name]), f"stage 2 ({mode}) changed the encoder's {name}"
    for name, value in run.plugin.calibrator.parameter_dict().items():
        assert torch.equal(value, calibrator_after_stage1[name]), f"stage 2 ({mode}) changed {name}"
        assert value.grad is None and value.requires_grad, name
    grads = encoder_grads(run.method)
    assert all(torch.isfinite(g).all() for g in grads.values()) and flat(grads).abs().sum() > 0

    run.method.zero_grad(set_to_none=True)
    step_theta = snapshot(run.method.named_parameters())
    run.plugin.training_step(images_of(run), StepInfo(epoch=0, step=1, seed=2))
    for name, value in run.method.named_parameters():
        assert torch.equal(value, step_theta[name]), f"training_step ({mode}) changed the encoder's {name}"


def test_finite_difference_probes_leave_batchnorm_running_statistics_alone(make_run):
    """D-TC-22: the running statistics are updated by the training forwards only. The ±εv probes of the
    finite-difference hypergradient are numerical devices: after stage 2 the BN buffers must equal those of a
    first-order stage 2 on the same views (the probes' extra forwards would otherwise move them 2K times more)."""
    buffers = {}
    for mode in ("first_order", "finite_difference"):
        run = make_run(f"plugin.stage2_mode={mode}", "plugin.fd_radius=1e-2")
        views, split, z = stage_inputs(run, images_of(run))
        basis, _, _, _ = run.plugin.stage1(z, split, views)
        run.plugin.stage2(views, split, basis, INFO)
        buffers[mode] = snapshot(run.method.named_buffers())
    running = [name for name in buffers["first_order"] if name.endswith(("running_mean", "running_var"))]
    assert running, "the test network must have BatchNorm layers"
    for name in running:
        assert torch.equal(buffers["finite_difference"][name], buffers["first_order"][name]), name


def reference_bilevel_objective(run, views, split, basis, beta1: float):
    """θ ↦ (1/K)Σ_k L_sse^q(θ − β1∇L_ssl^s(θ)), written out from D-TC-12/§3.9 for SimCLR: the inner loss is
    the multi-view NT-Xent of the calibrated support views, the outer loss the Brier score of the calibrated query
    views against c_k = n(mean_u ẑ_{i,u}) of the support views at θ^k. The anchors are a stop-gradient, so they are
    frozen at the θ^k of the base point θ0 (``freeze_anchors``): the derivative of the objective with those
    anchors fixed, at θ0, is the exact meta-gradient."""
    plugin, method = run.plugin, run.method
    tau, d = method.cfg.temperature, method.embed_dim
    names = list(method.online_parameters())

    def embed(params, x):
        n, v = x.shape[:2]
        z = method.embed(x.flatten(0, 1), params)
        return reference_calibrated(plugin.calibrator, z, basis).view(n, v, d)

    def adapted(params, k):                                              # θ^k = θ − β1∇L_ssl^s(θ), Eq. 6
        with torch.enable_grad():
            leaves = {n: params[n].detach().requires_grad_(True) for n in names}
            inner = nt_xent_multiview(embed(leaves, split.support_views(views, k)), tau)
            grads = torch.autograd.grad(inner, list(leaves.values()))
        return {n: (leaves[n] - beta1 * g).detach() for n, g in zip(names, grads)}

    def freeze_anchors(theta0):
        with torch.no_grad():
            return [torch.nn.functional.normalize(embed(adapted(theta0, k), split.support_views(views, k)).mean(1),
                                                  dim=-1) for k in range(split.n_tasks)]

    def objective(theta, anchors):
        with torch.no_grad():
            losses = [brier_query_loss(embed(adapted(theta, k), split.query_views(views, k)), anchors[k], tau)
                      for k in range(split.n_tasks)]
        return torch.stack(losses).mean().item()

    return objective, freeze_anchors


def test_stage2_exact_matches_central_differences_of_the_bilevel_objective_float64(make_run):
    """T10: ``exact`` (second-order) stage 2 matches central differences of θ ↦ (1/K)Σ_k L_sse^q(θ − β1∇L_ssl^s(θ)),
    written independently from the spec, along the FO/SO gap and two random directions, to 1e-5 of ‖g‖ (float64,
    SiLU copy of the tiny model: FD of ReLU kinks would be meaningless)."""
    beta1, h = 0.05, 1e-6                       # the objective is strongly curved: O(h²) is 1e-8 here
    grads = {}
    for mode in ("exact", "first_order"):
        run = make_run(f"plugin.stage2_mode={mode}", f"plugin.beta1={beta1}", "plugin.conflict_every=0")
        smooth_activations(run.method)
        run.method.double()
        run.plugin.double()
        views, split, z = stage_inputs(run, images_of(run))
        basis = basis_at(run, z)
        theta0 = snapshot(run.method.online_parameters().items())
        run.plugin.stage2(views, split, basis, INFO)
        grads[mode] = encoder_grads(run.method)
    exact, first = flat(grads["exact"]), flat(grads["first_order"])
    objective, freeze_anchors = reference_bilevel_objective(run, views, split, basis, beta1)
    anchors = freeze_anchors(theta0)

    g = torch.Generator().manual_seed(0)
    directions = [exact - first] + [torch.randn(exact.shape, generator=g, dtype=torch.float64) for _ in range(2)]
    sizes = [t.numel() for t in theta0.values()]
    for u in directions:
        u = u / u.norm()
        step = dict(zip(theta0, (c.view_as(t) for c, t in zip((h * u).split(sizes), theta0.values()))))
        plus = objective({n: t + step[n] for n, t in theta0.items()}, anchors)
        minus = objective({n: t - step[n] for n, t in theta0.items()}, anchors)
        numeric = (plus - minus) / (2 * h)
        assert abs(numeric - (exact @ u).item()) / exact.norm().item() < 1e-5
    # the check discriminates: along the FO/SO gap, first order is off by ‖exact − first‖ (the Hessian term)
    gap = (exact - first) / (exact - first).norm()
    assert abs((exact @ gap).item() - (first @ gap).item()) / exact.norm().item() > 1e-2


# ---------------------------------------------------------------------------------------------- +T
def test_plus_t_has_no_calibrator_and_equals_tc2_without_calibration(make_run):
    plus_t = make_run(plugin="tasks")
    uncalibrated = make_run("plugin.calibration=false")
    calibrated = make_run()
    assert getattr(plus_t.plugin, "calibrator", None) is None and uncalibrated.plugin.calibrator is None
    assert len(plus_t.plugin.state_dict()) == 0

    grads = {}
    for name, run in (("tasks", plus_t), ("tc2_nocal", uncalibrated), ("tc2", calibrated)):
        metrics = run.plugin.training_step(images_of(run), INFO)
        grads[name] = encoder_grads(run.method)
        if name != "tc2":
            assert not any(k.startswith("tc2/loss_") for k in metrics)
    for key, grad in grads["tasks"].items():
        assert torch.equal(grad, grads["tc2_nocal"][key]), key
    assert not torch.equal(flat(grads["tasks"]), flat(grads["tc2"]))                 # calibration does matter


# ---------------------------------------------------------------------------------------------- metrics
def test_training_step_metrics_are_present_and_finite(make_run):
    run = make_run()
    metrics = run.plugin.training_step(images_of(run), INFO)
    keys = {"loss", "conflict/cos_mean", "conflict/cos_min", "conflict/frac_negative", "tc2/loss_v", "tc2/loss_w",
            "tc2/orth_error", "tc2/gate_sparsity", "tc2/cal_norm_ratio"}
    assert keys <= metrics.keys()
    for key in keys:
        assert metrics[key].dim() == 0 and torch.isfinite(metrics[key]), key
    assert -1.0 <= metrics["conflict/cos_min"] <= metrics["conflict/cos_mean"] <= 1.0
    assert metrics["loss"] == metrics["tc2/stage2_sse_query"]


def test_conflict_metrics_are_cosines_of_the_task_support_gradients(make_run):
    """D-DG-01: L_k = the calibrated support loss of task k at θ; cosines over all encoder parameters (K = 3)."""
    run = make_run("plugin.n_tasks=3")
    images = images_of(run, 30)
    views, split, z = stage_inputs(run, images)
    basis = basis_at(run, z)
    plugin, method = run.plugin, run.method
    theta = method.online_parameters()
    task_grads = []
    for k in range(3):
        xs = split.support_views(views, k)
        zs = reference_calibrated(plugin.calibrator, method.embed(xs.flatten(0, 1)), basis).view(*xs.shape[:2], -1)
        loss = method.support_loss(zs, LossContext())
        task_grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(theta.values()))]))
    unit = torch.nn.functional.normalize(torch.stack(task_grads), dim=1)
    cos = (unit @ unit.T)[torch.triu_indices(3, 3, offset=1).unbind()]

    metrics = plugin.stage2(views, split, basis, INFO)

    torch.testing.assert_close(metrics["conflict/cos_mean"], cos.mean(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(metrics["conflict/cos_min"], cos.min(), rtol=1e-4, atol=1e-5)
    assert metrics["conflict/frac_negative"].item() == pytest.approx((cos < 0).float().mean().item())


def test_conflict_metrics_follow_conflict_every(make_run):
    run = make_run("plugin.conflict_every=2")
    skipped = run.plugin.training_step(images_of(run), StepInfo(epoch=0, step=1, seed=1))
    measured = run.plugin.training_step(images_of(run), StepInfo(epoch=0, step=2, seed=1))
    assert not any(k.startswith("conflict/") for k in skipped)
    assert "conflict/cos_mean" in measured
    summary = run.plugin.epoch_summary(0)
    assert summary["conflict/steps"] == 1.0
    assert summary["conflict/cos_mean"] == pytest.approx(measured["conflict/cos_mean"].item())
    assert 0.0 <= summary["tc2/inner_gain_rate"] <= 1.0
    assert (4 * summary["tc2/inner_gain_rate"]).is_integer()                      # 2 steps x 2 tasks measured
    after = run.plugin.epoch_summary(1)                                           # nothing measured since
    assert "conflict/cos_mean" not in after and "tc2/inner_gain_rate" not in after


# ---------------------------------------------------------------------------------------------- T17 smoke
#: the documented record columns of metrics.jsonl (src/tc2ssl/report.py; the loop adds the epoch's seconds)
STEP_COLUMNS = {"kind", "epoch", "step", "loss", "lr", "images_per_s"}
EPOCH_COLUMNS = {"kind", "epoch", "step", "loss", "seconds"}


@pytest.mark.parametrize("method", ["simclr", "byol"])
@pytest.mark.parametrize("plugin", ["none", "tasks", "tc2"])
def test_pretrain_two_epochs_writes_finite_metrics(digits, tmp_path, plugin, method):
    """T17: 2 epochs of Baseline, +T and TC² with SimCLR and BYOL: finite losses, the documented log columns."""
    cfg = load_config((), [f"plugin.name={plugin}", f"method.name={method}", *TINY, "train.epochs=2",
                           "train.log_every=1", "plugin.conflict_every=1", f"out={tmp_path / plugin}"])
    out = pretrain(cfg, digits)

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in records} == {"step", "epoch"}
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert len(steps) == 2 * (len(digits.train) // BATCH) and [r["epoch"] for r in epochs] == [0, 1]
    assert [r["step"] for r in steps] == list(range(len(steps)))
    assert all(STEP_COLUMNS <= r.keys() for r in steps) and all(EPOCH_COLUMNS <= r.keys() for r in epochs)
    assert all(math.isfinite(r[k]) for r in steps for k in STEP_COLUMNS - {"kind"})
    assert all(math.isfinite(r["loss"]) for r in steps + epochs)
    assert [r["step"] for r in epochs] == [len(steps) // 2, len(steps)]          # the global step at epoch end
    for epoch in epochs:                                                           # the epoch mean of the steps
        own = [r["loss"] for r in steps if r["epoch"] == epoch["epoch"]]
        assert epoch["loss"] == pytest.approx(sum(own) / len(own), rel=1e-6)
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["kind"] == "step"
    assert (out / "config.yaml").is_file() and f"name: {method}" in (out / "config.yaml").read_text()
    tc2_keys = {"tc2/orth_error", "tc2/lv_ratio", "tc2/gate_sparsity", "tc2/cal_norm_ratio", "tc2/inner_gain_rate"}
    for record in epochs:
        assert math.isfinite(record["conflict/cos_mean"])
        if plugin == "tc2":
            assert tc2_keys <= record.keys()
            assert all(math.isfinite(record[k]) for k in tc2_keys)
        else:
            assert not any(k in record for k in ("tc2/orth_error", "tc2/gate_sparsity"))
    if plugin == "tasks":
        assert "tc2/inner_gain_rate" in epochs[0]
    assert (out / "encoder.safetensors").is_file()


# ---------------------------------------------------------------------------------------------- T18 determinism
def train_three_steps(make_run, *overrides: str):
    run = make_run(*overrides)
    cfg = run.cfg
    optimizer = build_optimizer(run.method.online_parameters().values(), cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, len(run.data.train) // BATCH)
    for step in range(3):
        optimizer.zero_grad(set_to_none=True)
        run.plugin.training_step(images_of(run, start=step * BATCH), StepInfo(epoch=0, step=step, seed=100 + step))
        optimizer.step()
        scheduler.step()
        run.method.after_step((step + 1) / 3)
    return snapshot(run.method.state_dict().items()), snapshot(run.plugin.state_dict().items())


def test_same_seed_gives_bit_identical_parameters_after_three_steps(make_run):
    initial = snapshot(make_run().method.state_dict().items())
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first = train_three_steps(make_run)
        second = train_three_steps(make_run)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    for a, b in zip(first, second):
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), name
    assert any(not torch.equal(first[0][k], initial[k]) for k in initial)           # training did move θ
    other_seed = train_three_steps(make_run, "seed=1")
    assert not torch.equal(flat(other_seed[0]), flat(first[0]))


# ---------------------------------------------------------------------------------------------- remainder / context
def test_batch_not_divisible_by_tasks_drops_with_a_warning(make_run):
    run = make_run("plugin.remainder=drop")
    with pytest.warns(UserWarning, match="not divisible by plugin.n_tasks=2"):
        metrics = run.plugin.training_step(images_of(run, 31), INFO)
    assert torch.isfinite(metrics["loss"])
    assert all(torch.isfinite(g).all() for g in encoder_grads(run.method).values())


def dropped_image(n_images: int, run) -> int:
    """The plug-in drops the last N mod K images of the (already shuffled) batch before anything sees them."""
    rest = n_images % run.plugin.cfg.n_tasks
    assert rest == 1
    return n_images - 1


def gradient_with_dropped_image_replaced(make_run, plugin: str):
    grads = []
    for replacement in (None, 100):
        run = make_run("plugin.remainder=drop", plugin=plugin)
        images = images_of(run, 31).clone()
        if replacement is not None:
            images[dropped_image(31, run)] = run.data.train.images[replacement]
        with pytest.warns(UserWarning, match="not divisible"):
            run.plugin.training_step(images, INFO)
        grads.append(flat(encoder_grads(run.method)))
    return grads


def test_plus_t_ignores_the_dropped_image(make_run):
    kept, replaced = gradient_with_dropped_image_replaced(make_run, "tasks")
    assert torch.equal(kept, replaced)


def test_tc2_ignores_the_dropped_image(make_run):
    kept, replaced = gradient_with_dropped_image_replaced(make_run, "tc2")
    assert torch.equal(kept, replaced)


def test_batch_not_divisible_by_tasks_raises_with_remainder_error(make_run):
    run = make_run("plugin.remainder=error")
    before = calibrator(run.plugin)
    with pytest.raises(ConfigError, match="not divisible by plugin.n_tasks=2"):
        run.plugin.training_step(images_of(run, 31), INFO)
    assert all(torch.equal(v, before[k]) for k, v in calibrator(run.plugin).items())
    assert all(p.grad is None for p in run.method.parameters())


# ---------------------------------------------------------------------------------------------- R14 literal mode
LITERAL = ["plugin.reduction=sum", "plugin.l1_coef=1", "plugin.weight_mode=free", "plugin.task_reduction=sum"]


def train_steps(run, n_steps: int) -> list[dict[str, torch.Tensor]]:
    optimizer = build_optimizer(run.method.online_parameters().values(), run.cfg.train)
    history = []
    for step in range(n_steps):
        optimizer.zero_grad(set_to_none=True)
        history.append(run.plugin.training_step(images_of(run, start=(step % 4) * BATCH),
                                                StepInfo(epoch=0, step=step, seed=step + 1)))
        optimizer.step()
    return history


def test_literal_mode_runs_with_default_stage1(make_run):
    for metrics in train_steps(make_run(*LITERAL), 4):
        assert torch.isfinite(metrics["loss"]) and torch.isfinite(metrics["tc2/loss_v"])


def test_literal_mode_with_adam_runs_and_the_collapse_guard_fires(make_run):
    """R14 with stage1_optimizer=adam: finite losses; ẑ shrinks (cal_norm_ratio < 0.3) as D-TC-04 predicts."""
    run = make_run(*LITERAL, "plugin.stage1_optimizer=adam")
    history = train_steps(run, 3)
    for metrics in history:
        assert all(torch.isfinite(v) for v in metrics.values())
    assert history[-1]["tc2/cal_norm_ratio"] < 0.3
    with pytest.warns(UserWarning, match="collapses"):
        summary = run.plugin.epoch_summary(0)
    assert summary["tc2/health_warnings"] >= 1


def test_stage1_ssl_weight_zero_drops_the_ssl_term_of_eqs_4_5(make_run, monkeypatch):
    """plugin.stage1_ssl_weight=0: the f_v / f_w update is the one of L_tc² alone, i.e. the same as with SSL losses
    that are identically zero; weight 1 (the paper) differs from it."""
    def stage1_calibrator(*overrides, zero_ssl=False):
        run = make_run("plugin.stage1_grad_clip=0", *overrides)
        if zero_ssl:
            monkeypatch.setattr(run.method, "support_loss", lambda z, ctx: z.sum() * 0.0)
            monkeypatch.setattr(run.plugin, "query_loss", lambda zq, *args: zq.sum() * 0.0)
        views, split, z = stage_inputs(run, images_of(run))
        run.plugin.stage1(z, split, views)
        return flat(calibrator(run.plugin))

    weight_zero = stage1_calibrator("plugin.stage1_ssl_weight=0")
    no_ssl = stage1_calibrator(zero_ssl=True)
    paper = stage1_calibrator()
    torch.testing.assert_close(weight_zero, no_ssl, rtol=1e-6, atol=1e-7)
    assert (weight_zero - paper).abs().max() > 1e-5


def test_whitening_loss_on_tasks_not_larger_than_the_embedding_warns_once(make_run):
    """Barlow Twins on tasks of n = 16 images with d = 16 warns (rank-deficient target), once per run; with
    d = 8 < n it does not; SimCLR never does."""
    run = make_run("method.name=barlow_twins")                                    # n = 32 / 2 = 16, d = 16
    with pytest.warns(UserWarning, match="whitens its 16-dim embedding over each task's 16 images"):
        run.plugin.training_step(images_of(run), INFO)
    run.method.zero_grad(set_to_none=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run.plugin.training_step(images_of(run), StepInfo(epoch=0, step=1, seed=2))
        for quiet in (make_run("method.name=barlow_twins", "method.proj_output_dim=8"), make_run()):
            quiet.plugin.training_step(images_of(quiet), INFO)
    assert not [w for w in caught if "whitens" in str(w.message)]


def test_factor_init_pca_sets_v0_once_from_the_first_batch_and_survives_a_resume(make_run, monkeypatch):
    run = make_run("plugin.factor_init=pca", "plugin.conflict_every=0")
    seen = []
    init = FactorNet.init_base_from

    def spy(self, zf):
        seen.append(zf.clone())
        return init(self, zf)

    monkeypatch.setattr(FactorNet, "init_base_from", spy)
    base_before = run.plugin.calibrator.factor_net.base.detach().clone()
    run.plugin.training_step(images_of(run), INFO)
    assert len(seen) == 1 and run.plugin.calibrator.factor_base_initialised
    expected = torch.linalg.svd(seen[0], full_matrices=False).Vh[:run.plugin.calibrator.n_factors].T
    # after the step's own stage-1 update the base has moved a little from the PCA basis, not back to V0
    assert (run.plugin.calibrator.factor_net.base - expected).abs().max() < 0.1 < (base_before - expected).abs().max()
    run.plugin.training_step(images_of(run, start=BATCH), StepInfo(epoch=0, step=1, seed=2))
    assert len(seen) == 1                                                            # once per run

    resumed = make_run("plugin.factor_init=pca", "plugin.conflict_every=0")
    resumed.plugin.load_state_dict(run.plugin.state_dict())
    resumed.plugin.load_extra_state(run.plugin.extra_state())
    resumed.plugin.training_step(images_of(run), StepInfo(epoch=1, step=2, seed=3))
    assert len(seen) == 1                                                            # not again after a resume
    default = make_run("plugin.conflict_every=0", "plugin.factor_init=random")
    default.plugin.training_step(images_of(default), INFO)
    assert len(seen) == 1 and not default.plugin.calibrator.factor_base_initialised            # factor_init=random


@pytest.mark.parametrize("plugin", ["tc2", "tasks"])
def test_pixel_cluster_tasks_reach_the_step_and_report_their_separation(make_run, plugin):
    """plugin.task_split=pixel_clusters: the step's tasks are the clusters build_tasks makes from the batch's pixels
    (same seed stream as the step), and tasks/between_share is logged; the random split logs nothing."""
    from tc2ssl.data.tasks import build_tasks, pixel_descriptor
    from tc2ssl.data.tasks import between_task_share
    from tc2ssl.plugins.bilevel import TASK_STREAM

    def random_groups(run, images):
        q = run.plugin.cfg
        return build_tasks(images.shape[0], q.n_tasks, q.n_views, q.n_support_views,
                           torch.Generator().manual_seed(INFO.seed ^ TASK_STREAM)).groups

    random_run = make_run(plugin=plugin)
    assert "tasks/between_share" not in random_run.plugin.training_step(images_of(random_run), INFO)
    run = make_run("plugin.task_split=pixel_clusters", plugin=plugin)
    images = images_of(run)
    seen = []
    original = run.plugin.bilevel_step
    run.plugin.bilevel_step = lambda views, split, *a: seen.append(split.groups.clone()) or original(views, split, *a)
    metrics = run.plugin.training_step(images, INFO)
    p = run.plugin.cfg
    expected = build_tasks(images.shape[0], p.n_tasks, p.n_views, p.n_support_views,
                           torch.Generator().manual_seed(INFO.seed ^ TASK_STREAM),
                           task_features=pixel_descriptor(images))
    assert len(seen) == 1 and torch.equal(seen[0], expected.groups)
    assert float(metrics["tasks/between_share"]) == pytest.approx(expected.between_share)
    random_share = between_task_share(pixel_descriptor(images).double(), random_groups(random_run, images))
    assert expected.between_share > 2 * random_share                 # the clusters separate more than chance
