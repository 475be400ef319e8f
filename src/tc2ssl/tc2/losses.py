"""TC² losses: the regularisers of Eqs. 1-3 and the per-task SSL losses on calibrated representations.

- :func:`loss_v`: Eq. 1 with per-row means (D-TC-04): orthogonality of V plus reconstruction of Z_f in the factor span.
- :func:`loss_w`: Eq. 2 with per-row means (D-TC-04): per-sample reconstruction from the factor weights plus their
  ℓ1 norm.
- :func:`loss_tc2`: Eq. 3, L_v + λ_s·L_w.
- :func:`brier_query_loss`, :func:`proto_mse_loss`: L_sse^q of Eqs. 5/7, "the sum of squared errors on the
  query set" (D-TC-12, D-TC-12).
- :func:`nt_xent_multiview`: SimCLR's NT-Xent generalised to v >= 2 views per image (D-SSL-02).

Reference: TC² — "Exploring Transferability of Self-Supervised Learning by Task Conflict Calibration",
AAAI 2026, arXiv 2511.13787. Reductions (D-TC-04, D-TC-04): ``"mean"`` (default) averages over rows;
``"sum"`` is the paper's literal form.

Every function is a pure tensor function (no host syncs, no in-place ops on inputs, no value-dependent control flow),
so it can run under ``torch.func`` (grad, vmap, functional_call).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tc2ssl.errors import ConfigError
from tc2ssl.precision import float32_region

REDUCTIONS = ("mean", "sum")


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ConfigError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _check_positive(name: str, value: float, allow_zero: bool = False) -> None:
    """Validate a Python-number hyperparameter (tensors pass through: no host sync under torch.func)."""
    if isinstance(value, (int, float)) and (value < 0 or (value == 0 and not allow_zero)):
        raise ConfigError(f"{name} must be {'>=' if allow_zero else '>'} 0, got {value}")


def _at_least_float32(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return tuple(t.to(dtype) for t in tensors)


def _check_basis(basis: torch.Tensor, dim: int) -> None:
    if basis.dim() != 2 or basis.shape[0] != dim:
        raise ValueError(f"V must be [d, n_f] with d = {dim}, got shape {tuple(basis.shape)}")


def orthogonality_residual(basis: torch.Tensor) -> torch.Tensor:
    """VᵀV − I [n_f, n_f] for V = ``basis`` [d, n_f]."""
    if basis.dim() != 2:
        raise ValueError(f"V must be [d, n_f], got shape {tuple(basis.shape)}")
    return basis.T @ basis - torch.eye(basis.shape[1], dtype=basis.dtype, device=basis.device)


def loss_v(basis: torch.Tensor, zf: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """L_v = ‖VᵀV − I‖²_F + (1/R)‖Z_f − Z_f V Vᵀ‖²_F (Eq. 1 with ``reduction="mean"``, D-TC-04; no 1/R for "sum").

    Args:
        basis: V [d, n_f].
        zf: Z_f [R, d], all view representations of the batch.
    Computed in at least float32 (half-precision inputs are cast up, autocast is off inside).
    """
    _check_reduction(reduction)
    if zf.dim() != 2:
        raise ValueError(f"Zf must be [rows, d], got shape {tuple(zf.shape)}")
    _check_basis(basis, zf.shape[1])
    with float32_region(zf.device):                                   # autocast would cast the matmuls down
        basis, zf = _at_least_float32(basis, zf)
        orthogonality = orthogonality_residual(basis).square().sum()
        reconstruction = (zf - (zf @ basis) @ basis.T).square().sum()  # Eq. (1), second term
        if reduction == "mean":
            reconstruction = reconstruction / zf.shape[0]
        return orthogonality + reconstruction


def loss_v_optimum(zf: torch.Tensor, n_factors: int, reduction: str = "mean") -> torch.Tensor:
    """min_V L_v = Σ_{i>n_f} λ_i(Z_fᵀZ_f) (divided by R under ``"mean"``), attained by the orthonormal top-n_f
    eigenvectors of Z_fᵀZ_f (D-TC-18). Used as a health metric (L_v / optimum)."""
    _check_reduction(reduction)
    if zf.dim() != 2:
        raise ValueError(f"Zf must be [rows, d], got shape {tuple(zf.shape)}")
    if not 1 <= n_factors <= zf.shape[1]:
        raise ConfigError(f"n_factors must be in [1, d={zf.shape[1]}], got {n_factors}")
    (zf,) = _at_least_float32(zf)
    with float32_region(zf.device):
        singular_values = torch.linalg.svdvals(zf)                     # descending; λ_i(ZᵀZ) = s_i²
    optimum = singular_values[n_factors:].square().sum()
    return optimum / zf.shape[0] if reduction == "mean" else optimum


def loss_w(z: torch.Tensor, weights: torch.Tensor, basis: torch.Tensor, l1_coef: float = 0.05,
           reduction: str = "mean", penalty: torch.Tensor | None = None) -> torch.Tensor:
    """L_w = (1/|J|) Σ_j [‖z_j − W_j Vᵀ‖²₂ + λ₁‖W_j‖₁] (Eq. 2 with ``reduction="mean"``, D-TC-04; no 1/|J| for "sum").

    Args:
        z: the rows z_j [R, d].
        weights: W [R, n_f], the factor weights f_w(z_j). The caller computes them with a detached V when V is
            "pre-given" (D-TC-05); this function only evaluates the formula.
        basis: V [d, n_f].
        l1_coef: λ₁ (D-TC-04: 0.05 for ℓ2-normalised z; the literal value is 1).
        penalty: ω [R, n_f] ≥ 0, per-row, per-factor weights of the ℓ1 term (a weighted LASSO: λ₁ Σ_r ω_r|W_r|;
            ``plugin.view_agreement``); None = 1.
    """
    _check_reduction(reduction)
    _check_positive("l1_coef", l1_coef, allow_zero=True)
    if z.dim() != 2:
        raise ValueError(f"z must be [rows, d], got shape {tuple(z.shape)}")
    _check_basis(basis, z.shape[1])
    if weights.shape != (z.shape[0], basis.shape[1]):
        raise ValueError(f"W must be [R, n_f] = [{z.shape[0]}, {basis.shape[1]}], got shape {tuple(weights.shape)}")
    if penalty is not None and penalty.shape != weights.shape:
        raise ValueError(f"penalty must be [R, n_f] like W = {tuple(weights.shape)}, got shape {tuple(penalty.shape)}")
    with float32_region(z.device):
        z, weights, basis = _at_least_float32(z, weights, basis)
        magnitude = weights.abs() if penalty is None else penalty.to(weights.dtype) * weights.abs()
        per_row = (z - weights @ basis.T).square().sum(-1) + l1_coef * magnitude.sum(-1)  # Eq. (2) summand
        return per_row.mean() if reduction == "mean" else per_row.sum()


def loss_tc2(lv: torch.Tensor, lw: torch.Tensor, lam_s: float) -> torch.Tensor:
    """L_tc² = L_v + λ_s·L_w (Eq. 3)."""
    _check_positive("lam_s", lam_s, allow_zero=True)
    if lv.dim() != 0 or lw.dim() != 0:
        raise ValueError(f"L_v and L_w must be scalars, got shapes {tuple(lv.shape)} and {tuple(lw.shape)}")
    return lv + lam_s * lw                                              # Eq. (3)


def _check_query(z_query: torch.Tensor, anchors: torch.Tensor) -> None:
    if z_query.dim() != 3:
        raise ValueError(f"z_query must be [n_images, n_query_views, d], got shape {tuple(z_query.shape)}")
    n, _, d = z_query.shape
    if anchors.shape != (n, d):
        raise ValueError(f"anchors must be [n_images, d] = [{n}, {d}], got shape {tuple(anchors.shape)}")


def brier_query_loss(z_query: torch.Tensor, anchors: torch.Tensor, temperature: float,
                     reduction: str = "mean") -> torch.Tensor:
    """Brier score of n-way prototype classification (L_sse^q for contrastive methods, D-TC-12).

    p_{i,v} = softmax_j(cos(z_{i,v}, c_j)/τ) over the n anchors of the task; L = mean_{i,v} ‖p_{i,v} − e_i‖²₂
    (sum over (i, v) for ``"sum"``). All embeddings equal gives 1 − 1/n, so the outer step cannot collapse.

    Args:
        z_query: query views [n, q, d]; view v of image i is classified among the n images.
        anchors: one anchor per image [n, d], used as given (the caller detaches them).
    """
    _check_reduction(reduction)
    _check_positive("temperature", temperature)
    _check_query(z_query, anchors)
    n = z_query.shape[0]
    logits = torch.einsum("ivd,jd->ivj", F.normalize(z_query, dim=-1), F.normalize(anchors, dim=-1)) / temperature
    probs = logits.softmax(dim=-1)                                       # [n, q, n]
    targets = torch.eye(n, dtype=probs.dtype, device=probs.device)[:, None, :]
    per_query = (probs - targets).square().sum(-1)                      # [n, q]
    return per_query.mean() if reduction == "mean" else per_query.sum()


def proto_mse_loss(z_query: torch.Tensor, anchors: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """mean_{i,v} ‖n(z_{i,v}) − n(c_i)‖²₂ (``query_loss="proto_mse"``, D-TC-12; needs an anti-collapse term).

    Args:
        z_query: query views [n, q, d].
        anchors: the anchor of each image [n, d], used as given apart from the ℓ2 normalisation.
    """
    _check_reduction(reduction)
    _check_query(z_query, anchors)
    diff = F.normalize(z_query, dim=-1) - F.normalize(anchors, dim=-1)[:, None, :]
    per_query = diff.square().sum(-1)                                    # [n, q]
    return per_query.mean() if reduction == "mean" else per_query.sum()


def nt_xent_multiview(z: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent over v >= 2 views per image: the mean over view pairs u < w of the two-view NT-Xent (D-SSL-02).

    For a pair (u, w), anchor (i, u) has the positive (i, w) and the 2n − 2 negatives (j, u), (j, w), j ≠ i,
    exactly as in SimCLR (Chen et al., 2020) and lightly's ``NTXentLoss``, which this equals for v = 2.

    Args:
        z: embeddings [n, v, d] (ℓ2-normalised here).
        temperature: τ.
    """
    _check_positive("temperature", temperature)
    if z.dim() != 3 or z.shape[1] < 2 or z.shape[0] < 2:
        raise ValueError(f"z must be [n_images >= 2, n_views >= 2, d], got shape {tuple(z.shape)}")
    n, v, _ = z.shape
    u = F.normalize(z, dim=-1)
    sim = torch.einsum("iad,jbd->iajb", u, u) / temperature            # [n, v, n, v]
    same_view = torch.diagonal(sim, dim1=1, dim2=3)                    # [n, n, v]: sim[i, a, j, a]
    same_image = torch.eye(n, dtype=torch.bool, device=z.device)[:, :, None]
    lse_same_view = same_view.masked_fill(same_image, float("-inf")).logsumexp(dim=1)  # [n, v] over j != i
    lse_other_view = sim.logsumexp(dim=2)                              # [n, v, v]: over j of sim[i, a, j, b]
    positives = torch.diagonal(sim, dim1=0, dim2=2).permute(2, 0, 1)   # [n, v, v]: sim[i, a, i, b]
    per_anchor = torch.logaddexp(lse_same_view[:, :, None], lse_other_view) - positives   # [n, a, b]
    pairs = ~torch.eye(v, dtype=torch.bool, device=z.device)           # ordered pairs a != b
    return torch.where(pairs, per_anchor, 0.0).sum() / (n * v * (v - 1))
