"""Runtime health metrics and guards of the TC² calibration (D-TC-33).

:func:`health_metrics` returns 0-dim tensors (no host sync; log them when convenient), and
:func:`health_warnings` turns their float values into human-readable warnings:

| metric           | healthy                       | outside the range means                               |
|------------------|-------------------------------|-------------------------------------------------------|
| gate_sparsity    | [0.05, 0.95]                  | > 0.95: ẑ → 0 (λ₁ too large); < 0.05: ℓ1 has no effect |
| cal_norm_ratio   | [0.3, 1.05]                   | < 0.3: ẑ → 0 (λ₁ too large); > 1.05: ẑ inflates z      |
| orth_error       | <= 0.1 from epoch index 1 on  | V departs from orthogonality (α too large; use Adam)  |
| energy_share     | >= 0.95 × pooled_share, epoch >= 1 | span(V) keeps less of the batch's energy than the best |
|                  |                               | batch-independent basis (the pooled subspace)          |
| gate_std         | >= 0.01 (gated/shrink)        | every gate has the same value: f_w is a fixed scaling  |
| v_sigma_min      | >= 0.5                        | V is nearly rank-deficient ("factor collapse") |
| embed_std_scaled | >= 0.01                       | SSL collapse: √d · min_j std_j of the ℓ2-normalised z |
| any              | finite                        | NaN/inf: fp32 for S and the orthogonality term         |
"""
from __future__ import annotations

from collections.abc import Callable

import math

import torch

from tc2ssl.tc2.losses import loss_v_optimum, orthogonality_residual
from tc2ssl.tc2.weight_net import WeightNet

SPARSITY_RANGE = (0.05, 0.95)
NORM_RATIO_RANGE = (0.3, 1.05)
MAX_ORTH_ERROR = 0.1
MAX_LV_RATIO = 1.5             # the original check R7: L_v / L_v^PCA <= 1.5 (logged, no longer warned about)
MIN_ENERGY_VS_POOLED = 0.95    # check R7: span(V)'s energy share >= 0.95 × the pooled subspace's, from epoch 1 on
SELECTIVITY_SHUFFLES = 16      # random regroupings the per-task gate variance is compared with
MIN_GATE_STD = 0.01            # gates whose spread over rows and factors is below this are a constant
MIN_SIGMA = 0.5
MIN_EMBED_STD_SCALED = 0.01    # D-TC-33: per-dimension std of ℓ2-normalised embeddings < 0.01/√d = collapse
CLOSED_GATE = 0.1              # a gate below this counts as closed (gated mode)
ZERO_WEIGHT_FRACTION = 1e-3    # free mode: |W| below this fraction of max|W| counts as zero


def health_metrics(basis: torch.Tensor, zf: torch.Tensor, weight_net: WeightNet, z_rows: torch.Tensor,
                   lv_value: torch.Tensor, n_factors: int, reduction: str = "mean",
                   penalty: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Guard metrics of one batch, as 0-dim tensors.

    Args:
        basis: V [d, n_f].
        zf: Z_f [R, d], the rows L_v was computed on (for its optimum).
        weight_net: f_w.
        z_rows: the rows to calibrate for the gate and norm metrics [R', d].
        lv_value: L_v(V, Z_f) under ``reduction``.
        n_factors: n_f.
        reduction: the reduction of ``lv_value``.
        penalty: ω [R', n_f] of ``plugin.view_agreement`` for the rows of ``z_rows`` (None: off).

    Returns ``orth_error`` ‖VᵀV − I‖_F; ``lv_ratio`` L_v / min L_v (1 at the optimum; ε-regularised so that a zero
    optimum, e.g. n_f = d, does not divide by zero); ``gate_sparsity`` the fraction of gates < 0.1 (gated) or of
    |W| < 1e-3·max|W| (free); ``cal_norm_ratio`` mean ‖ẑ‖/‖z‖; ``v_sigma_min`` the smallest singular value of V;
    ``embed_std_scaled`` √d times the smallest per-dimension std of the ℓ2-normalised rows of ``zf`` (about 1 for
    embeddings spread over the sphere, 0 when the encoder collapses: D-TC-33's collapse detector).
    """
    with torch.no_grad():
        basis, zf, z_rows = basis.detach(), zf.detach(), z_rows.detach()
        optimum = loss_v_optimum(zf, n_factors, reduction)
        energy = zf.float().square().sum() / (zf.shape[0] if reduction == "mean" else 1)
        eps = 1e-6 * energy + torch.finfo(torch.float32).tiny
        context = None if not weight_net.task_context else z_rows.mean(0, keepdim=True).expand_as(z_rows)
        weights = weight_net(z_rows, basis, context, penalty)
        gate_std = None
        if weight_net.mode != "free":
            gates = weight_net.gates(z_rows, basis, context, penalty)
            sparsity = (gates < CLOSED_GATE).float().mean()
            gate_std = gates.std()
        else:
            magnitude = weights.abs()
            sparsity = (magnitude < ZERO_WEIGHT_FRACTION * magnitude.max()).float().mean()
        z_hat = weights @ basis.T
        norm_ratio = (z_hat.norm(dim=-1) / z_rows.norm(dim=-1).clamp_min(1e-12)).mean()
        extra = {} if gate_std is None else {"gate_std": gate_std}
        return extra | {
            "orth_error": orthogonality_residual(basis.float()).norm(),
            "lv_ratio": (lv_value.detach() + eps) / (optimum + eps),
            "gate_sparsity": sparsity,
            "cal_norm_ratio": norm_ratio,
            "v_sigma_min": _finite_or_nan_sigma_min(basis.float()),
            "embed_std_scaled": torch.nn.functional.normalize(zf.float(), dim=-1).std(dim=0).min()
            * zf.shape[-1] ** 0.5,
        }


def subspace_metrics(basis: torch.Tensor, zf: torch.Tensor, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
    """How well span(V) captures this batch, against the batch's own top-n_f subspace and the pooled one.

    Args:
        basis: V [d, n_f] (any full-rank basis; its span is what counts).
        zf: Z_f [R, d], the batch rows.
        pooled: an orthonormal [d, n_f] basis fitted on other batches (the best batch-independent basis).

    Returns ``energy_share`` ‖Z_f Q_V‖²/‖Z_f‖² (Q_V an orthonormal basis of span(V)), ``top_share`` the same for the
    batch's top-n_f principal subspace (the most any n_f-dimensional subspace keeps), ``pooled_share`` for
    ``pooled``, and ``subspace_cos2`` the mean squared cosine of the principal angles between span(V) and the
    batch's top subspace (1: the same subspace; n_f/d for a random one).
    """
    n_factors = basis.shape[1]
    zf = zf.float()
    q_v = torch.linalg.qr(basis.float()).Q
    top = torch.linalg.svd(zf, full_matrices=False).Vh[:n_factors].T
    energy = zf.square().sum().clamp_min(torch.finfo(torch.float32).tiny)
    return {"energy_share": (zf @ q_v).square().sum() / energy,
            "top_share": (zf @ top).square().sum() / energy,
            "pooled_share": (zf @ pooled.float()).square().sum() / energy,
            "subspace_cos2": (q_v.T @ top).square().sum() / n_factors}


def gate_selectivity(gates: torch.Tensor, row_tasks: torch.Tensor, n_tasks: int,
                     generator: torch.Generator, rows_per_image: int = 1,
                     gates_of: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Var over tasks of the per-task mean gates, divided by the same for random groups of the same sizes (mean
    over factors; the random groups: the mean of 16 shuffles of the images' task labels): about 1 when the gates do
    not depend on the task, > 1 when tasks keep different factors.

    The shuffles move whole images: the ``rows_per_image`` consecutive rows of an image (its views) always share
    a task, and their gates are correlated, so shuffling single rows would understate the chance level (measured:
    a ratio of 1.8-2.7 for random tasks on colored_mnist with row shuffles).

    When the gates themselves depend on the grouping (a per-task statistic such as ``plugin.view_agreement``'s ω,
    or the task context), pass ``gates_of``: the gates of every row under another grouping (row labels [R] ->
    [R, n_f]); each random grouping then recomputes the gates, so a statistic that merely differs between any two
    groups of images (estimation noise) scores about 1, not above.

    Args:
        gates: [R, n_f]; row_tasks: the task of each row [R] (0..K-1 with K = ``n_tasks``, every task non-empty),
        image-major: rows i·r .. i·r + r − 1 are image i's.
    """

    def between_task_variance(group_gates: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        membership = torch.nn.functional.one_hot(labels, n_tasks).to(group_gates.dtype)  # [R, K]
        means = (membership.T @ group_gates) / membership.sum(0)[:, None]                # [K, n_f]
        return means.var(dim=0, unbiased=False).mean()

    image_tasks = row_tasks.view(-1, rows_per_image)[:, 0]
    shuffles = [image_tasks[torch.randperm(image_tasks.shape[0], generator=generator).to(row_tasks.device)]
                .repeat_interleave(rows_per_image) for _ in range(SELECTIVITY_SHUFFLES)]
    reference = torch.stack([between_task_variance(gates if gates_of is None else gates_of(labels), labels)
                             for labels in shuffles]).mean()
    return between_task_variance(gates, row_tasks) / reference.clamp_min(1e-12)


def _finite_or_nan_sigma_min(basis: torch.Tensor) -> torch.Tensor:
    """The smallest singular value of V, NaN when V is not finite, without a host sync (no ``bool(tensor)``):
    the SVD runs on V with non-finite entries zeroed (LAPACK may fail on NaN input) and the result is masked."""
    finite = torch.isfinite(basis).all()
    sigma = torch.linalg.svdvals(torch.where(finite, basis, torch.zeros_like(basis))).min()
    return torch.where(finite, sigma, torch.full_like(sigma, float("nan")))


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def health_warnings(metrics: dict[str, float], epoch: int) -> list[str]:
    """Warnings for the metrics outside their healthy range (D-TC-33); missing keys are skipped.

    ``epoch`` is 0-indexed; the orthogonality guard applies from epoch index 1 on (after the first epoch).
    """
    found = [f"tc2 health: {name} is not finite ({value}); keep S and the orthogonality term in fp32 and check "
             "the temperature" for name, value in metrics.items() if not math.isfinite(value)]
    finite = {name: value for name, value in metrics.items() if math.isfinite(value)}
    sparsity, ratio = finite.get("gate_sparsity"), finite.get("cal_norm_ratio")
    if sparsity is not None and sparsity > SPARSITY_RANGE[1] or ratio is not None and ratio < NORM_RATIO_RANGE[0]:
        found.append(f"tc2 health: the calibration collapses ẑ towards 0 (gate_sparsity={_fmt(sparsity)}, "
                     f"cal_norm_ratio={_fmt(ratio)}; healthy: sparsity <= {SPARSITY_RANGE[1]}, ratio >= "
                     f"{NORM_RATIO_RANGE[0]}): plugin.l1_coef is too large for the scale of z")
    if sparsity is not None and sparsity < SPARSITY_RANGE[0]:
        found.append(f"tc2 health: gate_sparsity={sparsity:.3g} < {SPARSITY_RANGE[0]}: the ℓ1 term selects no "
                     "factors; plugin.l1_coef may be too small for the scale of z")
    if ratio is not None and ratio > NORM_RATIO_RANGE[1]:
        found.append(f"tc2 health: cal_norm_ratio={ratio:.3g} > {NORM_RATIO_RANGE[1]}: the calibration inflates "
                     "the representations (V is not orthonormal or the free f_w overshoots)")
    orth_error = finite.get("orth_error")
    if epoch >= 1 and orth_error is not None and orth_error > MAX_ORTH_ERROR:
        found.append(f"tc2 health: ‖VᵀV − I‖_F = {orth_error:.3g} > {MAX_ORTH_ERROR} at epoch {epoch}: V departs "
                     "from orthogonality; lower plugin.alpha1/alpha3 or use plugin.stage1_optimizer=adam")
    share, pooled = finite.get("energy_share"), finite.get("pooled_share")
    if epoch >= 1 and share is not None and pooled is not None and share < MIN_ENERGY_VS_POOLED * pooled:
        found.append(f"tc2 health: span(V) keeps {share:.3g} of the batch's energy, less than {MIN_ENERGY_VS_POOLED} × "
                     f"the {pooled:.3g} of the pooled (batch-independent) subspace at epoch {epoch} (check R7): f_v "
                     "does not follow the batch statistics; -p calibrated (docs/tc2.md) has a subspace f_v that does")
    gate_std = finite.get("gate_std")
    if gate_std is not None and gate_std < MIN_GATE_STD:
        found.append(f"tc2 health: the gates of f_w are a constant (std {gate_std:.3g} < {MIN_GATE_STD}): the "
                     "calibration is a fixed scaling of VVᵀz; -p calibrated (docs/tc2.md) has shrink gates that close")
    sigma_min = finite.get("v_sigma_min")
    if sigma_min is not None and sigma_min < MIN_SIGMA:
        found.append(f"tc2 health: σ_min(V) = {sigma_min:.3g} < {MIN_SIGMA}: V is nearly rank-deficient "
                     "(factor collapse)")
    collapse = finite.get("embed_std_scaled")
    if collapse is not None and collapse < MIN_EMBED_STD_SCALED:
        found.append(f"tc2 health: the embeddings collapse (√d · min per-dimension std of ℓ2-normalised z = "
                     f"{collapse:.3g} < {MIN_EMBED_STD_SCALED}): the outer loss lacks a repulsive term; use the "
                     "default plugin.query_loss")
    return found
