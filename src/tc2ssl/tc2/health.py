"""Runtime health metrics and guards of the TC² calibration (D-TC-33).

:func:`health_metrics` returns 0-dim tensors (no host sync; log them when convenient), and
:func:`health_warnings` turns their float values into human-readable warnings:

| metric           | healthy                       | outside the range means                               |
|------------------|-------------------------------|-------------------------------------------------------|
| gate_sparsity    | [0.05, 0.95]                  | > 0.95: ẑ → 0 (λ₁ too large); < 0.05: ℓ1 has no effect |
| cal_norm_ratio   | [0.3, 1.05]                   | < 0.3: ẑ → 0 (λ₁ too large); > 1.05: ẑ inflates z      |
| orth_error       | <= 0.1 from epoch index 1 on  | V departs from orthogonality (α too large; use Adam)  |
| lv_ratio         | <= 1.5 from epoch index 1 on  | V misses the batch's principal subspace (check R7)     |
| v_sigma_min      | >= 0.5                        | V is nearly rank-deficient ("factor collapse") |
| embed_std_scaled | >= 0.01                       | SSL collapse: √d · min_j std_j of the ℓ2-normalised z |
| any              | finite                        | NaN/inf: fp32 for S and the orthogonality term         |
"""
from __future__ import annotations

import math

import torch

from tc2ssl.tc2.losses import loss_v_optimum, orthogonality_residual
from tc2ssl.tc2.weight_net import WeightNet

SPARSITY_RANGE = (0.05, 0.95)
NORM_RATIO_RANGE = (0.3, 1.05)
MAX_ORTH_ERROR = 0.1
MAX_LV_RATIO = 1.5             # check R7: L_v / L_v^PCA <= 1.5 after the first epoch (<= 1.2 at the end)
MIN_SIGMA = 0.5
MIN_EMBED_STD_SCALED = 0.01    # D-TC-33: per-dimension std of ℓ2-normalised embeddings < 0.01/√d = collapse
CLOSED_GATE = 0.1              # a gate below this counts as closed (gated mode)
ZERO_WEIGHT_FRACTION = 1e-3    # free mode: |W| below this fraction of max|W| counts as zero


def health_metrics(basis: torch.Tensor, zf: torch.Tensor, weight_net: WeightNet, z_rows: torch.Tensor,
                   lv_value: torch.Tensor, n_factors: int, reduction: str = "mean") -> dict[str, torch.Tensor]:
    """Guard metrics of one batch, as 0-dim tensors.

    Args:
        basis: V [d, n_f].
        zf: Z_f [R, d], the rows L_v was computed on (for its optimum).
        weight_net: f_w.
        z_rows: the rows to calibrate for the gate and norm metrics [R', d].
        lv_value: L_v(V, Z_f) under ``reduction``.
        n_factors: n_f.
        reduction: the reduction of ``lv_value``.

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
        weights = weight_net(z_rows, basis)
        if weight_net.mode == "gated":
            sparsity = (weight_net.gates(z_rows, basis) < CLOSED_GATE).float().mean()
        else:
            magnitude = weights.abs()
            sparsity = (magnitude < ZERO_WEIGHT_FRACTION * magnitude.max()).float().mean()
        z_hat = weights @ basis.T
        norm_ratio = (z_hat.norm(dim=-1) / z_rows.norm(dim=-1).clamp_min(1e-12)).mean()
        return {
            "orth_error": orthogonality_residual(basis.float()).norm(),
            "lv_ratio": (lv_value.detach() + eps) / (optimum + eps),
            "gate_sparsity": sparsity,
            "cal_norm_ratio": norm_ratio,
            "v_sigma_min": _finite_or_nan_sigma_min(basis.float()),
            "embed_std_scaled": torch.nn.functional.normalize(zf.float(), dim=-1).std(dim=0).min()
            * zf.shape[-1] ** 0.5,
        }


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
    lv_ratio = finite.get("lv_ratio")
    if epoch >= 1 and lv_ratio is not None and lv_ratio > MAX_LV_RATIO:
        found.append(f"tc2 health: L_v = {lv_ratio:.3g} × its batch-PCA optimum > {MAX_LV_RATIO} at epoch {epoch} "
                     "(check R7): V does not track the batch's principal subspace; plugin.stage1_optimizer=adam "
                     "narrows the gap (docs/tc2.md)")
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
