"""GeSSL's hypergradients: unrolled finite differences (AID-FD), implicit CG, exact and first order.

All four answer the same question: how does the outer loss L_out at the task-adapted parameters φ_K(θ) change with
the shared parameters θ? They are built on the functional engine (:mod:`tc2ssl.meta.functional`), which keeps
parameters as ``dict[str, Tensor]``, never writes to a live tensor, and takes every loss as a closure
``loss_fn(params) -> scalar``.

``"aid_fd"`` (default): φ_k = φ_{k−1} − α∇L_in(φ_{k−1}) for k = 1..K, then the vector v = ∇L_out(φ_K) is pulled
back through the unrolled steps, v ← v − α·H_in(φ_{k−1})·v for k = K..1, each Hessian-vector product taken by a
central finite difference of gradients,

    H(φ)·v ≈ [∇L_in(φ + εv) − ∇L_in(φ − εv)] / (2ε),      ε = r/‖v‖,                                  # Eq. (G3)

(DARTS' approximation; two extra gradient evaluations per step, no double back-propagation). This is the engine's
``"finite_difference"`` mode; its error against ``"exact"`` is O(ε²).

``"implicit_cg"`` (iMAML): the inner problem is the proximal one, φ*(θ) = argmin_φ L_in(φ) + (λ/2)‖φ − θ‖², solved
approximately by K steps φ_k = φ_{k−1} − α[∇L_in(φ_{k−1}) + λ(φ_{k−1} − θ)] from φ_0 = θ. The implicit function
theorem gives dφ*/dθ = (I + H_in(φ*)/λ)⁻¹, so the hypergradient is the solution g of

    (I + H_in(φ_K)/λ) g = v,      v = ∇L_out(φ_K),                                                       # Eq. (G4)

found by ``cg_steps`` conjugate-gradient iterations whose Hessian-vector products use Eq. (G3). CG needs a
positive-definite system: it stops early when it meets a direction of non-positive curvature (a non-convex L_in)
and returns the iterate it has, which is v itself when that happens at once.

``"exact"``: autograd through the unrolled steps (``create_graph=True``), for tests and small models.
``"first_order"``: g = v (FOMAML).

For the finite-difference probes the caller may pass ``probe_loss_fn``: the same inner loss on scratch copies of
the BatchNorm buffers (:func:`~tc2ssl.meta.functional.cloned_buffers`), so that probes never move running
statistics.
"""
from __future__ import annotations

import torch

from tc2ssl.errors import ConfigError
from tc2ssl.meta.functional import (HypergradResult, LossFn, Params, detached_leaves, grad_dict,
                                    hessian_vector_product_fd, hypergradient)

HYPERGRADIENT_MODES = ("aid_fd", "implicit_cg", "exact", "first_order")
#: the engine's name for each mode it implements itself
_ENGINE_MODE = {"aid_fd": "finite_difference", "exact": "exact", "first_order": "first_order"}


def _dot(a: Params, b: Params) -> torch.Tensor:
    return sum((a[n] * b[n]).sum() for n in a)


def _axpy(alpha: torch.Tensor | float, x: Params, y: Params) -> Params:
    """y + alpha·x as new tensors."""
    return {n: y[n] + alpha * x[n] for n in y}


def conjugate_gradient(matvec, rhs: Params, steps: int, tol: float = 1e-10) -> tuple[Params, int]:
    """Solve A·x = rhs for a symmetric positive-definite A given as ``matvec``, starting from x = 0.

    At most ``steps`` iterations; stops when the residual norm falls below ``tol``·‖rhs‖ or when a search
    direction has non-positive curvature pᵀAp <= 0 (A not positive definite there). Returns (x, iterations run).
    """
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"conjugate-gradient steps must be an integer >= 1, got {steps!r}")
    solution = {n: torch.zeros_like(r) for n, r in rhs.items()}
    residual = {n: r.clone() for n, r in rhs.items()}
    direction = {n: r.clone() for n, r in rhs.items()}
    rr = _dot(residual, residual)
    threshold = (tol ** 2) * rr
    done = 0
    for _ in range(steps):
        if rr <= threshold:
            break
        product = matvec(direction)
        curvature = _dot(direction, product)
        if curvature <= 0:
            break
        step = rr / curvature
        solution = _axpy(step, direction, solution)
        residual = _axpy(-step, product, residual)
        rr_new = _dot(residual, residual)
        direction = _axpy(rr_new / rr, direction, residual)
        rr = rr_new
        done += 1
    return solution, done


def proximal_adapt(inner_loss_fn: LossFn, params: Params, lr: float, steps: int, prox_lambda: float
                   ) -> tuple[Params, list[torch.Tensor], Params]:
    """K steps of gradient descent on L_in(φ) + (λ/2)‖φ − θ‖² from φ_0 = θ = ``params`` (iMAML's inner problem).

    Returns φ_K (detached leaves that require grad), L_in before each step and ∇L_in(θ) (detached)."""
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"inner steps must be an integer >= 1, got {steps!r}")
    anchor = {n: p.detach() for n, p in params.items()}
    current = detached_leaves(anchor)
    losses, first_grads = [], {}
    for step in range(steps):
        loss = inner_loss_fn(current)
        grads = grad_dict(loss, current)
        if step == 0:
            first_grads = {n: g.detach() for n, g in grads.items()}
        current = detached_leaves({n: p.detach() - lr * (grads[n] + prox_lambda * (p.detach() - anchor[n]))
                                   for n, p in current.items()})
        losses.append(loss.detach())
    return current, losses, first_grads


def unrolled_hypergradient(outer_loss_fn: LossFn, inner_loss_fn: LossFn, params: Params, lr: float,
                           mode: str = "aid_fd", steps: int = 1, fd_radius: float = 1e-2,
                           probe_loss_fn: LossFn | None = None, cg_steps: int = 5,
                           prox_lambda: float = 1.0) -> HypergradResult:
    """d/dθ L_out(φ_K(θ)) in one of :data:`HYPERGRADIENT_MODES` (see the module docstring).

    ``params``: θ, only read. ``lr``: the inner step size α. ``steps``: K inner steps. ``fd_radius``: r of
    Eq. (G3). ``probe_loss_fn``: the inner loss the finite-difference probes evaluate (default ``inner_loss_fn``).
    ``cg_steps``, ``prox_lambda``: CG iterations and λ of ``"implicit_cg"``. The result is detached.
    """
    if mode not in HYPERGRADIENT_MODES:
        raise ConfigError(f"hypergradient mode must be one of {', '.join(HYPERGRADIENT_MODES)}, got {mode!r}")
    if mode != "implicit_cg":
        return hypergradient(outer_loss_fn, inner_loss_fn, params, lr=lr, mode=_ENGINE_MODE[mode],
                             fd_radius=fd_radius, steps=steps, probe_loss_fn=probe_loss_fn)
    if not prox_lambda > 0:
        raise ConfigError(f"prox_lambda of implicit_cg must be > 0, got {prox_lambda!r}")
    if not fd_radius > 0:
        raise ConfigError(f"finite-difference radius must be > 0, got {fd_radius!r}")
    adapted, inner_losses, first_grads = proximal_adapt(inner_loss_fn, params, lr, steps, prox_lambda)
    outer_loss = outer_loss_fn(adapted)
    v = {n: g.detach() for n, g in grad_dict(outer_loss, adapted).items()}
    probe = probe_loss_fn or inner_loss_fn

    def matvec(vector: Params) -> Params:                                   # (I + H/λ)·p, Eq. (G4)
        hvp = hessian_vector_product_fd(probe, adapted, vector, fd_radius)
        return {n: vector[n] + hvp[n] / prox_lambda for n in vector}

    grads, iterations = conjugate_gradient(matvec, v, cg_steps)
    if iterations == 0:                                 # negative curvature at once (or v = 0): first order
        grads = v
    return HypergradResult(outer_loss=outer_loss.detach(), grads=grads, inner_losses=inner_losses,
                           adapted={n: p.detach() for n, p in adapted.items()},
                           inner_grads=first_grads)
