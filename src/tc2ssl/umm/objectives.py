"""The two objectives of UMM's bi-level problem, as the authors' code structures it, with its defects fixed.

Inner (lower-level) loss, on the tuned late layers θ with the early features H_e = f_e(x) fixed:

    L_in(θ)  = L_ssl(θ) + β · JS(p(θ) ‖ u)                                                # inner objective
    p_i(θ)  ∝ 1 / ‖∂L_ssl/∂H_e,i‖                                                         # per-sample weights

over the 2N augmented rows i (u uniform). p is built from the per-row gradient of the SSL loss with respect to the
early-layer features; the JS term pushes every augmented sample to carry the same share of the loss's sensitivity
(a memorised sample has a vanishing gradient). In the authors' code this term contributes no gradient at all:
the per-sample gradient is taken without ``create_graph`` and ``F.kl_div`` receives probabilities where it
expects log-probabilities (so the value is not a divergence either). Here p is a differentiable function of θ
(the gradient is taken with ``create_graph=True``) and :func:`js_divergence` is the true Jensen–Shannon
divergence, in nats, bounded by log 2.

Outer (upper-level) loss, on the projector outputs z of the same 2N rows, ℓ2-normalised:

    L_out(θ) = L_ssl(θ) − λ · [R(z; ε) − γ · R_c(z; ε | instances)]                      # outer objective

with the instance partition (the two views of an image form one group). The paper maximises ΔR; the authors'
code adds it to a minimised loss (it minimises ΔR): here it is subtracted. ε² = 0.1 matches their constant
(their ``eps`` enters as d/(n·eps), i.e. it is ε²).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tc2ssl.diagnostics.coding_rate import class_coding_rate, coding_rate, instance_labels


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen–Shannon divergence ½KL(p‖m) + ½KL(q‖m), m = (p + q)/2, of distributions over the last dim (nats)."""
    if p.shape != q.shape or p.dim() < 1:
        raise ValueError(f"p and q must be distributions of the same shape [..., k], got {tuple(p.shape)} and "
                         f"{tuple(q.shape)}")
    middle = 0.5 * (p + q)
    # xlogy: a zero probability contributes 0, not nan
    kl_p = torch.xlogy(p, p).sum(-1) - torch.xlogy(p, middle).sum(-1)
    kl_q = torch.xlogy(q, q).sum(-1) - torch.xlogy(q, middle).sum(-1)
    return 0.5 * (kl_p + kl_q)                                                   # JS(p ‖ q)


def js_to_uniform(p: torch.Tensor) -> torch.Tensor:
    """JS(p ‖ uniform) of a distribution p [k] (0 iff p is uniform; at most log 2)."""
    return js_divergence(p, torch.full_like(p, 1.0 / p.shape[-1]))


def gradient_norm_distribution(loss: torch.Tensor, early_features: torch.Tensor,
                               create_graph: bool = True) -> torch.Tensor:
    """p_i ∝ 1/‖∂loss/∂early_features[i]‖ over the rows of ``early_features`` [B, ...] (a leaf of the graph of
    ``loss``); differentiable in the parameters that ``loss`` depends on when ``create_graph``. Returns p [B]."""
    if not early_features.requires_grad:
        raise ValueError("early_features must require grad (a detached leaf the loss was computed from)")
    (grads,) = torch.autograd.grad(loss, early_features, create_graph=create_graph)
    squared_norms = grads.flatten(1).pow(2).sum(dim=1)                                 # ‖∂L/∂H_e,i‖² [B]
    # rsqrt(‖g‖² + tiny): finite for a row with a zero gradient; p does not depend on the loss's scale
    inverse_norms = (squared_norms + torch.finfo(squared_norms.dtype).tiny).rsqrt()
    return inverse_norms / inverse_norms.sum()                                        # p_i ∝ 1/‖g_i‖


def inner_objective(ssl_loss: torch.Tensor, early_features: torch.Tensor, beta: float) -> tuple[torch.Tensor,
                                                                                                   torch.Tensor]:
    """L_in = L_ssl + β·JS(p ‖ u), p from :func:`gradient_norm_distribution`. Returns (L_in, JS)."""
    if beta == 0:
        return ssl_loss, ssl_loss.new_zeros(())
    divergence = js_to_uniform(gradient_norm_distribution(ssl_loss, early_features))
    return ssl_loss + beta * divergence, divergence                                   # inner objective


def instance_rate_reduction(z: torch.Tensor, n_views: int, eps2: float = 0.1, gamma: float = 1.0) -> torch.Tensor:
    """R(z) − γ·R_c(z | instances) of ℓ2-normalised rows of z [N·n_views, d] laid out image-major."""
    if z.dim() != 2 or z.shape[0] % n_views:
        raise ValueError(f"z must be [n_images·n_views, d] with n_views={n_views}, got {tuple(z.shape)}")
    unit = F.normalize(z, dim=1)
    groups = instance_labels(z.shape[0] // n_views, n_views, z.device)
    return coding_rate(unit, eps2) - gamma * class_coding_rate(unit, groups, eps2)      # ΔR (γ = 1)


def outer_objective(ssl_loss: torch.Tensor, z: torch.Tensor, n_views: int, lam: float, eps2: float = 0.1,
                    gamma: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """L_out = L_ssl − λ·ΔR(z | instances) (ΔR maximised). Returns (L_out, ΔR)."""
    reduction = instance_rate_reduction(z, n_views, eps2, gamma)
    return ssl_loss - lam * reduction, reduction                                      # outer objective


#: the largest value of :func:`js_to_uniform`, approached when p puts all mass on one sample
JS_MAX = math.log(2.0)
