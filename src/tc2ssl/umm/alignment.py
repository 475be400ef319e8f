"""The alternative reading of UMM (``umm.objective=alignment``): two quadratic lower-level problems, solved exactly.

The paper describes UMM's learning objective as "a quadratic optimization problem" that "aligns last-layer feature
distributions with early-layer priors to maximise ΔR". This module reads that literally:

1. an early-layer prior: a partition Π_e of the batch by k-means on the (frozen) early features z_e (the quadratic
   k-means objective; independent of the tuned parameters θ);
2. a ridge alignment of the last-layer features z_l(θ) to the early ones,

       A(θ) = min_P [ ‖z_l − z_e P‖²_F + γ‖P‖²_F ] / ‖z_l‖²_F,   P* = (z_eᵀz_e + γI)⁻¹ z_eᵀ z_l        # alignment

   the share of last-layer energy that the early layer does not explain;
3. the upper level maximises J(θ) = ΔR(z_l; ε | Π_e) / d_l − μ·A(θ).

P* minimises a strongly convex quadratic in P, so by Danskin's (envelope) theorem the gradient of the minimum
is the partial gradient at P* held fixed: detaching P* is exact, not an approximation. The ridge penalty γ‖P‖²
belongs to the minimised objective for that to hold (with A defined without it, detaching P* would be only
approximate); ``ridge_alignment(..., danskin=False)`` differentiates through the solve instead, for the test.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tc2ssl.diagnostics.coding_rate import coding_rate_reduction


@torch.no_grad()
def kmeans(z: torch.Tensor, n_clusters: int, iters: int = 10, generator: torch.Generator | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with k-means++ seeding on rows of z [n, d]: (labels [n] int64, centroids [k, d]).

    An empty cluster keeps its previous centroid. Deterministic for a fixed ``generator``."""
    n = z.shape[0]
    if z.dim() != 2 or not 1 <= n_clusters <= n:
        raise ValueError(f"kmeans needs z [n, d] with 1 <= n_clusters <= n, got {tuple(z.shape)} and {n_clusters}")
    first = torch.randint(n, (1,), generator=generator)
    centroids = [z[int(first)]]
    for _ in range(1, n_clusters):                                            # k-means++: D² sampling
        distance = torch.cdist(z, torch.stack(centroids)).min(dim=1).values.pow(2)
        weights = distance.cpu().double()
        pick = torch.multinomial(weights / weights.sum() if weights.sum() > 0 else torch.ones(n, dtype=torch.double),
                                 1, generator=generator)
        centroids.append(z[int(pick)])
    centroids = torch.stack(centroids)
    labels = torch.cdist(z, centroids).argmin(dim=1)
    for _ in range(iters):
        one_hot = F.one_hot(labels, n_clusters).to(z.dtype)                  # [n, k]
        counts = one_hot.sum(dim=0)
        sums = one_hot.T @ z
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centroids)
        labels = torch.cdist(z, centroids).argmin(dim=1)
    return labels, centroids


def ridge_alignment(z_early: torch.Tensor, z_late: torch.Tensor, gamma: float = 0.1,
                    danskin: bool = True) -> torch.Tensor:
    """A = min_P [‖z_l − z_e P‖² + γ‖P‖²] / ‖z_l‖² for z_e [n, d_e] (fixed) and z_l [n, d_l] (tuned).

    ``danskin=True`` detaches P* (exact by the envelope theorem); ``False`` back-propagates through the solve."""
    if z_early.shape[0] != z_late.shape[0] or z_early.dim() != 2 or z_late.dim() != 2:
        raise ValueError(f"z_early [n, d_e] and z_late [n, d_l] must have the same rows, got {tuple(z_early.shape)}"
                         f" and {tuple(z_late.shape)}")
    if not gamma > 0:
        raise ValueError(f"the ridge γ must be > 0 (a strongly convex lower level), got {gamma!r}")
    z_early = z_early.detach()
    eye = torch.eye(z_early.shape[1], dtype=z_early.dtype, device=z_early.device)
    solution = torch.linalg.solve(z_early.T @ z_early + gamma * eye, z_early.T @ z_late)   # P* [d_e, d_l]
    if danskin:
        solution = solution.detach()
    residual = (z_late - z_early @ solution).pow(2).sum() + gamma * solution.pow(2).sum()
    return residual / z_late.pow(2).sum()                                              # A(θ)


def alignment_objective(z_early: torch.Tensor, z_late: torch.Tensor, n_clusters: int = 10, gamma: float = 0.1,
                        mu: float = 1.0, eps2: float = 0.5, generator: torch.Generator | None = None
                        ) -> dict[str, torch.Tensor]:
    """J = ΔR(z_l; ε | k-means(z_e)) / d_l − μ·A on ℓ2-normalised rows; returns J, ΔR/d_l, A and the loss −J."""
    early = F.normalize(z_early.detach(), dim=1)
    late = F.normalize(z_late, dim=1)
    prior, _ = kmeans(early, min(n_clusters, early.shape[0]), generator=generator)   # Π_e
    reduction = coding_rate_reduction(late, prior, eps2).dR / late.shape[1]
    alignment = ridge_alignment(early, late, gamma)
    objective = reduction - mu * alignment                                             # J(θ)
    return {"objective": objective, "dR_per_dim": reduction, "alignment": alignment, "loss": -objective}
