"""Coding rate R, class coding rate R_c and coding rate reduction ΔR = R − R_c (MCR², Yu et al. 2020).

Rows are samples: Z [n, d], usually ℓ2-normalised rows; ε² is the squared distortion; a partition of the rows
into k groups is either integer labels [n] (hard) or a membership matrix [n, k] of non-negative weights whose rows
sum to 1 (soft; Π_j = diag(membership[:, j])):

    R(Z; ε)       = ½ · logdet(I_d + d/(n ε²) · ZᵀZ)                                            # coding rate
    R_c(Z; ε | Π) = Σ_j tr(Π_j)/(2n) · logdet(I_d + d/(tr(Π_j) ε²) · ZᵀΠ_jZ)                     # per-group rate
    ΔR            = R − R_c ≥ 0                                                                # rate reduction

ΔR ≥ 0 because logdet is concave: I + d/(nε²)ZᵀZ = Σ_j (trΠ_j/n)(I + d/(trΠ_jε²)ZᵀΠ_jZ). Empty groups
contribute 0. When a group has fewer rows than dimensions, the log-determinant is taken on the smaller Gram
matrix by Sylvester's identity, logdet(I_d + a·ZᵀZ) = logdet(I_n + a·ZZᵀ); groups of equal size (e.g. the
"instance" partition, two views per image) are evaluated as one batched Cholesky factorisation. The matrices are
I + (PSD), with every eigenvalue ≥ 1, so the Cholesky needs no jitter in float32 either.

The computation runs in Z's dtype: the per-layer diagnostics pass float64, training losses float32. Everything
is differentiable in Z (ΔR is a training objective of UMM).
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class CodingRates(NamedTuple):
    """R, R_c and ΔR = R − R_c as 0-dim tensors (nats)."""

    R: torch.Tensor
    Rc: torch.Tensor
    dR: torch.Tensor


def _check_z(Z: torch.Tensor) -> None:
    if not isinstance(Z, torch.Tensor) or Z.dim() != 2 or Z.shape[0] == 0 or Z.shape[1] == 0:
        raise ValueError(f"Z must be a non-empty tensor [n_samples, dim], got shape {tuple(getattr(Z, 'shape', ()))}")
    if not Z.is_floating_point():
        raise ValueError(f"Z must be floating point, got {Z.dtype}")


def _check_eps2(eps2: float) -> None:
    if not eps2 > 0:
        raise ValueError(f"eps2 (the squared distortion ε²) must be > 0, got {eps2!r}")


def logdet_identity_plus_gram(Z: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """logdet(I_d + scale · ZᵀZ) for Z [..., n, d] (a batch of matrices); ``scale`` a number or a tensor [...].

    Takes the n×n Gram matrix ZZᵀ when n < d (Sylvester's identity) and ZᵀZ otherwise; returns a tensor [...].
    """
    n, d = Z.shape[-2:]
    gram = Z @ Z.mT if n < d else Z.mT @ Z                                     # [..., min(n,d), min(n,d)]
    scale = torch.as_tensor(scale, dtype=Z.dtype, device=Z.device)
    eye = torch.eye(gram.shape[-1], dtype=Z.dtype, device=Z.device)
    chol = torch.linalg.cholesky(eye + scale[..., None, None] * gram)
    return 2.0 * chol.diagonal(dim1=-2, dim2=-1).log().sum(dim=-1)


def coding_rate(Z: torch.Tensor, eps2: float = 0.5) -> torch.Tensor:
    """R(Z; ε) = ½ logdet(I + d/(n ε²) ZᵀZ) of Z [n, d] (a 0-dim tensor)."""
    _check_z(Z)
    _check_eps2(eps2)
    n, d = Z.shape
    return 0.5 * logdet_identity_plus_gram(Z, d / (n * eps2))               # R(Z; ε)


def _hard_class_rate(Z: torch.Tensor, labels: torch.Tensor, eps2: float) -> torch.Tensor:
    n, d = Z.shape
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    if bool((counts == counts[0]).all()):            # equal groups (e.g. instances): one batched factorisation
        size = int(counts[0])
        grouped = Z[torch.argsort(inverse, stable=True)].view(-1, size, d)    # [k, m, d]
        per_group = logdet_identity_plus_gram(grouped, d / (size * eps2))     # [k]
        return (size / (2.0 * n)) * per_group.sum()
    total = Z.new_zeros(())
    for group, size in enumerate(counts.tolist()):
        rows = Z[inverse == group]
        total = total + (size / (2.0 * n)) * logdet_identity_plus_gram(rows, d / (size * eps2))
    return total


def _soft_class_rate(Z: torch.Tensor, membership: torch.Tensor, eps2: float) -> torch.Tensor:
    n, d = Z.shape
    weights = membership.to(Z.dtype)                                          # [n, k]
    sizes = weights.sum(dim=0)                                                # tr(Π_j) [k]
    keep = sizes > 0                                                          # empty groups contribute 0
    weights, sizes = weights[:, keep], sizes[keep]
    weighted = weights.sqrt().mT[:, :, None] * Z[None]                       # Π_j^{1/2} Z  [k, n, d]
    per_group = logdet_identity_plus_gram(weighted, d / (sizes * eps2))     # [k]
    return (sizes / (2.0 * n) * per_group).sum()


def class_coding_rate(Z: torch.Tensor, membership: torch.Tensor, eps2: float = 0.5) -> torch.Tensor:
    """R_c(Z; ε | Π) of Z [n, d] under a partition: integer labels [n] or a soft membership [n, k]."""
    _check_z(Z)
    _check_eps2(eps2)
    n = Z.shape[0]
    if not isinstance(membership, torch.Tensor):
        raise ValueError("membership must be a tensor: integer labels [n] or weights [n, k]")
    if membership.is_floating_point():
        if membership.dim() != 2 or membership.shape[0] != n:
            raise ValueError(f"a soft membership must be [n, k] = [{n}, k], got shape {tuple(membership.shape)}")
        if bool((membership < 0).any()) or not torch.allclose(membership.sum(dim=1),
                                                              torch.ones_like(membership[:, 0]), atol=1e-5):
            raise ValueError("a soft membership must be non-negative with rows summing to 1")
        return _soft_class_rate(Z, membership, eps2)
    if membership.shape != (n,) or membership.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor of shape ({n},), got {membership.dtype} "
                         f"with shape {tuple(membership.shape)}")
    return _hard_class_rate(Z, membership.to(Z.device), eps2)


def coding_rate_reduction(Z: torch.Tensor, membership: torch.Tensor, eps2: float = 0.5) -> CodingRates:
    """(R, R_c, ΔR = R − R_c) of Z [n, d] under ``membership`` (labels [n] or weights [n, k])."""
    rate = coding_rate(Z, eps2)
    class_rate = class_coding_rate(Z, membership, eps2)
    return CodingRates(rate, class_rate, rate - class_rate)                 # ΔR = R − R_c


def instance_labels(n_images: int, n_views: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The instance partition of n_images·n_views rows laid out image-major ([image 0 view 0, image 0 view 1, …]):
    the views of one image form one group. Labels [n_images·n_views]."""
    if n_images < 1 or n_views < 1:
        raise ValueError(f"n_images and n_views must be >= 1, got {n_images}, {n_views}")
    return torch.arange(n_images, device=device).repeat_interleave(n_views)
