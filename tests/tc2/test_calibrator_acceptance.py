"""Acceptance of TC²'s calibrator on synthetic representations with known factors, at the production settings of the
``calibrated`` preset (the recalibrated calibrator; not the default, see docs/tc2.md).

Data: d = 32, K = 4 tasks of 32 images, m = 4 views. 14 orthonormal factor directions: 2 shared by every task and 3
of each task's own, with distinct standard deviations (2·0.85^f). An image of task k has view-consistent
coefficients on the shared factors and on its own, and view-specific contamination (std 0.6× the factor's) on the
other tasks' factors, plus isotropic noise. The TC² plug-in (SimCLR, every plugin.* key at its default) runs stage 1
on a fresh batch at every one of 100 steps (the colored_mnist cpu preset trains 112), tasks = the data's tasks.

What is asserted (on a fresh batch after training):
- V's columns align with the true factors: mean over factors of the best |cos| with a column >= 0.9;
- span(V) keeps >= 98% of what the batch's own top-n_f subspace keeps (f_v follows S);
- the energy a task's calibrated rows keep in other tasks' factor directions is <= 0.3 of what they keep in
  their own and the shared ones (the raw rows: 0.11-0.59, 0.38 on average, so
  calibration must remove it) and below the raw ratio;
- gates on other tasks' factors are >= 60% closed (< 0.1), and the mean gate on the task's own and the shared
  factors is at least twice that on the others; at most 50% of the gates on a task's own and the shared factors
  are closed;
- f_w's weights reach the (weighted) LASSO optimum of Eq. 2 for the batch's V and λ₁, solved here by coordinate
  descent.

The calibrated preset (``plugin.view_agreement=true``: each factor's threshold is scaled by its view
noise-to-signal ratio in the task) meets all of these. Without the view agreement (one magnitude threshold for every
factor) the own gates of the tasks with weak factors close (strict xfail): in this data the contamination of a
strong factor is larger than a weak task's own factors (task 3: 8 of its 9 contaminations have a larger standard
deviation than its weakest own factor), so no magnitude threshold, per batch or per task, can keep one and drop the
other; only the views tell them apart (own factors agree across an image's views, contamination does not).

The default calibrator on the same data and budget, for contrast: its span(V) does not follow the batch (strict
xfail), and its weights reach an Eq. 2 optimum that, at its absolute λ₁, zeroes almost nothing.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tc2ssl.config import load_config
from tc2ssl.data.tasks import TaskSplit
from tc2ssl.methods.base import build_method
from tc2ssl.models import build_backbone
from tc2ssl.plugins.base import build_plugin
from tc2ssl.tc2.stats import batch_statistics

pytestmark = pytest.mark.slow      # about 40 s on one core: 100 production stage-1 steps

DIM, N_TASKS, N_IMAGES, N_VIEWS, SHARED, OWN = 32, 4, 128, 4, 2, 3
N_TRUE = SHARED + N_TASKS * OWN
CONTAMINATION, STEPS = 0.6, 100
STD = 2.0 * 0.85 ** torch.arange(N_TRUE)                                  # distinct energies


def own_columns(task: int) -> list[int]:
    return list(range(SHARED + task * OWN, SHARED + (task + 1) * OWN))


def make_batch(factors: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, TaskSplit]:
    """z [N, m, d] and the split whose tasks are the data's tasks."""
    n = N_IMAGES // N_TASKS
    z = torch.zeros(N_IMAGES, N_VIEWS, DIM)
    groups = torch.arange(N_IMAGES).view(N_TASKS, n)
    for task in range(N_TASKS):
        active = torch.zeros(N_TRUE, dtype=torch.bool)
        active[:SHARED] = True
        active[own_columns(task)] = True
        content = torch.randn(n, 1, N_TRUE, generator=generator) * STD * active                  # view-consistent
        noise = CONTAMINATION * torch.randn(n, N_VIEWS, N_TRUE, generator=generator) * STD * ~active
        z[groups[task]] = (content + noise) @ factors.T + 0.02 * torch.randn(n, N_VIEWS, DIM, generator=generator)
    order = torch.rand(N_IMAGES, N_VIEWS, generator=generator).argsort(1)
    return z, TaskSplit(groups=groups, support_idx=order[:, :2], query_idx=order[:, 2:], n_kept=N_IMAGES)


def lasso_coordinate_descent(z: torch.Tensor, basis: torch.Tensor, l1: float, sweeps: int = 200,
                             penalty: torch.Tensor | None = None) -> torch.Tensor:
    """argmin_w ‖z − w Vᵀ‖² + l1·Σ_r ω_r|w_r| per row (ω = ``penalty`` [R, n_f], default 1), by cyclic coordinate
    descent (no orthonormality assumed)."""
    z, basis = z.double(), basis.double()
    omega = torch.ones(z.shape[0], basis.shape[1], dtype=torch.float64) if penalty is None else penalty.double()
    w = torch.zeros(z.shape[0], basis.shape[1], dtype=torch.float64)
    col_sq = basis.square().sum(0)
    for _ in range(sweeps):
        for r in range(basis.shape[1]):
            residual = z - w @ basis.T + w[:, r:r + 1] * basis[:, r]
            rho = residual @ basis[:, r]
            w[:, r] = rho.sign() * (rho.abs() - l1 * omega[:, r] / 2).clamp(min=0) / col_sq[r]
    return w


def agreement_reference(z_views: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """ω [n·v, n_f] of one task, written out pair by pair: a_r = mean over images and ordered view pairs v ≠ w of
    c_v c_w, over the mean of c²; ρ = (1 − a)/a with a clamped to [0.05, 1]; ω = (ρ + 0.05)/(mean ρ + 0.05)."""
    coords = (z_views @ basis).double()                                   # [n, v, n_f]
    n_views = coords.shape[1]
    pairs = [coords[:, v] * coords[:, w] for v in range(n_views) for w in range(n_views) if v != w]
    agreement = (torch.stack(pairs).mean((0, 1)) / coords.square().mean((0, 1))).clamp(0.05, 1.0)
    noise_to_signal = (1 - agreement) / agreement
    omega = (noise_to_signal + 0.05) / (noise_to_signal.mean() + 0.05)
    return omega.expand(coords.shape[0] * n_views, -1).float()


def train_calibrator(presets: tuple[str, ...], overrides: tuple[str, ...] = ()):
    """The calibrator of ``presets`` after STEPS production stage-1 steps on fresh batches; a fresh batch, its V."""
    torch.manual_seed(0)
    factors = torch.linalg.qr(torch.randn(DIM, DIM)).Q[:, :N_TRUE]
    cfg = load_config(presets, ["plugin.name=tc2", "method.name=simclr", f"method.proj_output_dim={DIM}",
                           f"plugin.n_tasks={N_TASKS}", "model.backbone=small_cnn_tiny", *overrides])
    plugin = build_plugin(cfg, build_method(cfg.method, build_backbone(cfg.model, 1)), None)
    generator = torch.Generator().manual_seed(1)
    torch.set_num_threads(1)
    for step in range(STEPS):
        z, split = make_batch(factors, generator)
        plugin.calibrator.set_scale(z)
        plugin.stage1(plugin.calibrator.prep(z), split, None, seed=step)
    z, split = make_batch(factors, generator)
    calibrator = plugin.calibrator
    calibrator.set_scale(z)
    z = calibrator.prep(z)
    with torch.no_grad():
        basis = calibrator.factor_net(batch_statistics(z.reshape(-1, DIM)))
        calibrator.set_l1(z.reshape(-1, DIM), basis)
    return calibrator, factors, z, split, basis


@pytest.fixture(scope="module")
def trained():
    return train_calibrator(("calibrated",))


@pytest.fixture(scope="module")
def trained_magnitude():
    """The calibrated preset without the view agreement: one magnitude threshold for every factor."""
    return train_calibrator(("calibrated",), ("plugin.view_agreement=false",))


def task_rows(calibrator, z: torch.Tensor, split, basis: torch.Tensor, task: int):
    """Task ``task``'s rows [n·m, d], their task context and their ω (None unless plugin.view_agreement)."""
    views = z[split.groups[task]]                                                     # [n, m, d]
    rows = views.reshape(-1, DIM)
    penalty = calibrator.view_penalty(views, basis)
    if penalty is not None:                                      # the calibrator's ω against the one written here
        torch.testing.assert_close(penalty, agreement_reference(views, basis), rtol=1e-4, atol=1e-4)
    return rows, calibrator.context(rows), penalty


@pytest.fixture(scope="module")
def trained_default():
    """The default calibrator (MLP f_v from a random V0, V detached in L_w, sigmoid gates, absolute λ₁)."""
    return train_calibrator(())


def test_columns_of_v_align_with_the_true_factors(trained):
    _, factors, _, _, basis = trained
    best = (factors.T @ F.normalize(basis, dim=0)).abs().max(dim=1).values                      # [N_TRUE]
    assert best.mean() >= 0.9, best


def test_span_of_v_follows_the_batch(trained):
    _, _, z, _, basis = trained
    rows = z.reshape(-1, DIM)
    top = torch.linalg.svd(rows, full_matrices=False).Vh[:basis.shape[1]].T
    q_v = torch.linalg.qr(basis).Q
    assert (rows @ q_v).square().sum() >= 0.98 * (rows @ top).square().sum()


def test_the_calibrated_preset_weighs_factors_by_view_agreement(trained):
    calibrator = trained[0]
    assert calibrator.cfg.view_agreement and calibrator.weight_net.mode == "shrink"


def test_tasks_keep_their_own_factors_and_drop_the_others(trained):
    calibrator, factors, z, split, basis = trained
    match = (factors.T @ basis).abs().argmax(0)                          # the true factor each column of V is
    raw_ratios = []
    with torch.no_grad():
        for task in range(N_TASKS):
            rows, context, penalty = task_rows(calibrator, z, split, basis, task)
            z_hat = calibrator.calibrate(rows, basis, None, context, penalty)
            keep = factors[:, list(range(SHARED)) + own_columns(task)]
            others = factors[:, [f for f in range(SHARED, N_TRUE) if f not in own_columns(task)]]
            raw_ratio = (rows @ others).square().sum() / (rows @ keep).square().sum()
            ratio = (z_hat @ others).square().sum() / (z_hat @ keep).square().sum()
            raw_ratios.append(float(raw_ratio))
            assert ratio <= 0.3 and ratio < raw_ratio, (task, float(raw_ratio), float(ratio))
            gates = calibrator.weight_net.gates(rows, basis, context, penalty)
            own = [r for r in range(basis.shape[1]) if int(match[r]) in own_columns(task) + list(range(SHARED))]
            other = [r for r in range(basis.shape[1]) if SHARED <= int(match[r]) < N_TRUE
                     and int(match[r]) not in own_columns(task)]
            closed_on_other = (gates[:, other] < 0.1).float().mean()
            assert closed_on_other >= 0.6, (task, float(closed_on_other))
            assert gates[:, own].mean() >= 2 * gates[:, other].mean()
    assert max(raw_ratios) > 0.5 and sum(raw_ratios) / N_TASKS > 0.3, raw_ratios   # uncalibrated: above 0.3


def test_weights_reach_the_lasso_optimum_of_eq2(trained):
    """f_w's weights against Eq. 2's optimum for the batch's V and λ₁ (weighted by ω under view agreement)."""
    calibrator, _, z, split, basis = trained
    rows, context, penalty = task_rows(calibrator, z, split, basis, 0)
    l1 = float(calibrator.l1_value)
    optimum = lasso_coordinate_descent(rows, basis, l1, penalty=penalty)
    omega = torch.ones(rows.shape[0], basis.shape[1]) if penalty is None else penalty

    def objective(w):
        w = w.double()
        return ((rows.double() - w @ basis.double().T).square().sum(-1)
                + l1 * (omega.double() * w.abs()).sum(-1)).mean()

    with torch.no_grad():
        weights = calibrator.weights(rows, basis, None, context, penalty)
    assert objective(weights) <= 1.05 * objective(optimum)
    assert objective(torch.zeros_like(weights)) > 1.3 * objective(optimum)        # the problem is not trivial


def gates_on_own_factors_closed(trained) -> list[float]:
    """Per task, the fraction of its gates on its own and the shared factors that are closed (< 0.1)."""
    calibrator, factors, z, split, basis = trained
    match = (factors.T @ basis).abs().argmax(0)
    closed = []
    with torch.no_grad():
        for task in range(N_TASKS):
            rows, context, penalty = task_rows(calibrator, z, split, basis, task)
            gates = calibrator.weight_net.gates(rows, basis, context, penalty)
            own = [r for r in range(basis.shape[1]) if int(match[r]) in own_columns(task) + list(range(SHARED))]
            closed.append(float((gates[:, own] < 0.1).float().mean()))
    return closed


def test_gates_stay_open_on_each_tasks_own_factors(trained):
    closed = gates_on_own_factors_closed(trained)
    assert max(closed) <= 0.5, closed


@pytest.mark.xfail(strict=True, reason="not met without the view agreement: a magnitude threshold cannot keep a "
                   "weak task's own factors and drop the stronger contamination (measured: 70% of task 2's and 73% "
                   "of task 3's own/shared gates < 0.1)")
def test_gates_stay_open_on_own_factors_with_one_magnitude_threshold(trained_magnitude):
    closed = gates_on_own_factors_closed(trained_magnitude)
    assert max(closed) <= 0.5, closed


def test_without_view_agreement_the_rest_still_holds(trained_magnitude):
    """The recalibrated f_v and the shrink gates without the view agreement: V and the energy criteria hold."""
    test_columns_of_v_align_with_the_true_factors(trained_magnitude)
    test_span_of_v_follows_the_batch(trained_magnitude)
    test_tasks_keep_their_own_factors_and_drop_the_others(trained_magnitude)
    test_weights_reach_the_lasso_optimum_of_eq2(trained_magnitude)


# ---------------------------------------------------------------- the default calibrator, same data and budget
@pytest.mark.xfail(strict=True, reason="known (docs/tc2.md, R7): the default MLP f_v is a learned constant at the "
                   "production step size; its span keeps less of the batch than the top subspace")
def test_default_calibrator_span_follows_the_batch(trained_default):
    test_span_of_v_follows_the_batch(trained_default)


def test_default_calibrator_weights_reach_a_lasso_optimum_that_selects_almost_nothing(trained_default):
    """The default's sigmoid gates do reach Eq. 2's optimum for its V (objective within 5%), but at the absolute
    λ₁ = 0.05 that optimum zeroes only ~8% of the weights (the calibrated preset's: ~79%), and the gates zero none:
    the default calibration is near the identity on span(V) — a projection, not a selection (docs/tc2.md)."""
    test_weights_reach_the_lasso_optimum_of_eq2(trained_default)
    calibrator, _, z, _, basis = trained_default
    rows = z.reshape(-1, DIM)[:256]
    optimum = lasso_coordinate_descent(rows, basis, float(calibrator.l1_value))
    with torch.no_grad():
        weights = calibrator.weights(rows, basis, None, calibrator.context(rows))
    assert float((optimum == 0).float().mean()) < 0.15
    assert float((weights.abs() < 1e-6).float().mean()) == 0.0
