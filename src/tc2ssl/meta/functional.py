"""The functional bi-level engine: inner steps and hypergradients on ``dict[str, Tensor]`` parameters.

Everything here is built on ``torch.func.functional_call`` and ``torch.autograd.grad``. Parameters are plain
``dict[str, Tensor]`` (see :func:`module_params`) and every loss is a closure ``loss_fn(params) -> scalar`` that
the caller writes over its data, e.g.::

    buffers = cloned_buffers(model)                 # BN running statistics live in a scratch copy
    def inner_loss(p):
        return criterion(functional_call(model, (p, buffers), (x_support,)))

The engine never writes to a parameter (no in-place update, no ``.grad`` set, no ``backward()``): it only reads
the tensors it is given and returns new ones. The one function that touches live state is :func:`assign_grads`,
which the caller uses to hand a finished meta-gradient to the outer optimiser.

**The three hypergradient modes.** For one inner step of size α on L_in,

    φ(θ) = θ − α ∇L_in(θ)                                                            # TC² Eq. 6 (α = β₁)
    d/dθ L_out(φ(θ)) = (I − α H_in(θ)) v,      v = ∇L_out(φ),  H_in = ∇²L_in         # the summand of TC² Eq. 7

- ``"exact"``: autograd through the inner step (``create_graph=True``), i.e. second-order MAML. This is TC²
  ``stage2_mode="second_order"`` / ``stage1_mode="maml"`` and GeSSL ``mode="exact"``; memory ≈ 2–3×, for tests
  and small models.
- ``"first_order"``: g = v, the gradient at the adapted parameters applied to θ (FOMAML). This drops the
  α·H_in·v term of Eq. 7 and is TC²'s default ``stage2_mode``.
- ``"finite_difference"``: g = v − α·[∇L_in(θ + εv) − ∇L_in(θ − εv)]/(2ε), ε = r/‖v‖ (D-EN-01, DARTS-style).
  This is the unrolled AID-FD hypergradient of GeSSL (D-EN-01): two extra gradient evaluations per task and
  no double back-propagation; its error against ``"exact"`` is O(ε²).

For ``steps`` = K > 1 inner steps the trajectory φ_0 = θ, …, φ_K is kept and the vector is pulled back with
v ← (I − α H_in(φ_{k−1})) v for k = K..1, the Hessian-vector product taken by (D-EN-01) in ``"finite_difference"``
mode and by autograd through the whole unroll in ``"exact"`` mode. With α = 0 every mode returns ∇L_out(θ)
exactly.

The losses must be deterministic functions of the parameters: the finite-difference probes re-evaluate L_in
on the same data and augmentations, and must not update module state, hence :func:`cloned_buffers`.

**Sharing the first inner forward.** A caller that needs the encoder's forward at θ anyway (TC² computes the
support representations at θ once, uses them detached for its batch statistics and with their graph for Eq. 6)
passes ``first_inner_loss`` = L_in(θ) already evaluated on leaves it made with :func:`detached_leaves`, and those
leaves as ``params``. The engine then takes the first inner gradient from that graph instead of calling
``inner_loss_fn(θ)``; later inner steps and the finite-difference probes still call ``inner_loss_fn``. The result
is the same as without the argument (up to float rounding), and nothing is written to any tensor either way.
"""
from __future__ import annotations

import contextlib
import math
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn as nn
from torch.func import functional_call

from tc2ssl.errors import ConfigError

Params = dict[str, torch.Tensor]
LossFn = Callable[[Params], torch.Tensor]
#: an inner learning rate: one number, or one per parameter name (e.g. TC²'s α₁ for f_v and α₂ for f_w)
LearningRate = float | Params | dict[str, float]

HYPERGRADIENT_MODES = ("first_order", "finite_difference", "exact")


@dataclass
class HypergradResult:
    """The outcome of one bi-level probe.

    outer_loss:   L_out(φ_K), detached scalar.
    grads:        d/dθ L_out(φ_K(θ)) in the requested approximation, detached, keyed like θ.
    inner_losses: L_in(φ_k) for k = 0..K−1 (the loss before each inner step), detached scalars.
    adapted:      φ_K, detached.
    inner_grads:  ∇L_in(θ), the first inner gradient, detached (free for diagnostics such as task conflict).
    outer_aux:    what ``outer_loss_fn`` returned beside the loss (``has_aux=True``), else None.
    """

    outer_loss: torch.Tensor
    grads: Params
    inner_losses: list[torch.Tensor]
    adapted: Params
    inner_grads: Params
    outer_aux: Any = None


def module_params(module: nn.Module, requires_grad_only: bool = True) -> Params:
    """The live parameters of ``module`` by name (the tensors themselves, not copies)."""
    return {name: p for name, p in module.named_parameters() if p.requires_grad or not requires_grad_only}


_TIED_TENSORS: "weakref.WeakKeyDictionary[nn.Module, bool]" = weakref.WeakKeyDictionary()


def has_tied_tensors(module: nn.Module) -> bool:
    """Whether one parameter or buffer of ``module`` is registered under two names (tied weights).

    Computed once per module and cached (a module whose weights are tied after its first functional call must be
    a new module object for this to see it)."""
    tied = _TIED_TENSORS.get(module)
    if tied is None:
        tied = (sum(1 for _ in module.named_parameters(remove_duplicate=False)) != sum(1 for _ in module.parameters())
                or sum(1 for _ in module.named_buffers(remove_duplicate=False)) != sum(1 for _ in module.buffers()))
        _TIED_TENSORS[module] = tied
    return tied


def functional_forward(module: nn.Module, tensors: Params | tuple[Params, ...], args: tuple, strict: bool = False):
    """``torch.func.functional_call(module, tensors, args)``, without its per-call tied-weight scan when the
    module ties none (that scan walks every submodule on each call: about 3% of a TC² step at K = 16, where the
    step makes 6K such calls). Modules with tied weights get ``functional_call``'s default handling."""
    return functional_call(module, tensors, args, tie_weights=has_tied_tensors(module), strict=strict)


def cloned_buffers(module: nn.Module, children: Iterable[str] | None = None) -> Params:
    """Copies of the module's buffers, for ``functional_call(module, (params, buffers), ...)``.

    BatchNorm in training mode updates the running statistics of whatever buffers it is given; passing these
    copies keeps every inner, outer and finite-difference forward from touching the module's own statistics.
    ``children``: only the buffers of these direct children (e.g. the ones a parameter dict routes to).
    """
    keep = None if children is None else set(children)
    return {name: b.detach().clone() for name, b in module.named_buffers()
            if keep is None or name.split(".", 1)[0] in keep}


@contextlib.contextmanager
def held(tensors: Iterable[torch.Tensor]) -> Iterator[None]:
    """Within the block the ``tensors`` do not require grad (a network "held" while another is trained through
    it: gradients flow through it, never into it); their previous flags are restored afterwards, also on error."""
    tensors = list(tensors)
    before = [t.requires_grad for t in tensors]
    try:
        for t in tensors:
            t.requires_grad_(False)
        yield
    finally:
        for t, flag in zip(tensors, before):
            t.requires_grad_(flag)


def _check_params(params: Params, what: str = "params") -> None:
    if not isinstance(params, dict) or not params:
        raise ValueError(f"{what} must be a non-empty dict[str, Tensor]")
    for name, p in params.items():
        if not isinstance(p, torch.Tensor) or not p.is_floating_point():
            raise ValueError(f"{what}[{name!r}] must be a floating-point tensor")


def _check_same_keys(reference: Params, other: Params, what: str) -> None:
    if reference.keys() != other.keys():
        missing = sorted(reference.keys() - other.keys())
        extra = sorted(other.keys() - reference.keys())
        raise ValueError(f"{what} has different names than the parameters: missing {missing}, unexpected {extra}")


def _check_scalar(loss: torch.Tensor) -> None:
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError(f"a loss must be a scalar tensor, got {type(loss).__name__} "
                         f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else ''}")


def _leaves(params: Params) -> Params:
    """Detached aliases of ``params`` that require grad: the graph of a probe never reaches the live tensors."""
    return {name: p.detach().requires_grad_(True) for name, p in params.items()}


def detached_leaves(params: Params) -> Params:
    """Detached aliases of ``params`` that require grad (no copy of the data): the θ on which a caller evaluates a
    ``first_inner_loss`` for :func:`hypergradient`, so that no graph reaches the live parameters."""
    _check_params(params)
    return _leaves(params)


def _check_first_inner_loss(loss: torch.Tensor, params: Params) -> None:
    _check_scalar(loss)
    not_leaves = sorted(n for n, p in params.items() if not (p.is_leaf and p.requires_grad))
    if not_leaves:
        raise ValueError("with first_inner_loss, params must be the leaves the loss was computed from (see "
                         f"detached_leaves); these are not leaves that require grad: {not_leaves}")
    if not loss.requires_grad:
        raise ValueError("first_inner_loss has no graph: evaluate it on params (detached_leaves) with grad enabled")


def grad_dict(loss: torch.Tensor, params: Params, create_graph: bool = False, allow_unused: bool = True) -> Params:
    """∇ loss w.r.t. every tensor of ``params``; zeros for tensors the loss does not depend on.

    Uses ``torch.autograd.grad``, so no ``.grad`` attribute is written. ``allow_unused=False`` raises instead of
    returning zeros for an unused tensor (or one that does not require grad).
    """
    _check_scalar(loss)
    names = [n for n, p in params.items() if p.requires_grad]
    found: tuple[torch.Tensor | None, ...] = ()
    if names and loss.requires_grad:
        found = torch.autograd.grad(loss, [params[n] for n in names], create_graph=create_graph, allow_unused=True)
    grads = {n: g for n, g in zip(names, found) if g is not None}
    if not allow_unused and len(grads) != len(params):
        raise ValueError(f"the loss does not depend on {sorted(params.keys() - grads.keys())}")
    return {n: grads[n] if n in grads else torch.zeros_like(p) for n, p in params.items()}


def _lr_of(lr: LearningRate, name: str):
    return lr[name] if isinstance(lr, dict) else lr


def _check_lr(lr: LearningRate, params: Params) -> None:
    if isinstance(lr, dict):
        _check_same_keys(params, lr, "the learning rates")
    for value in (lr.values() if isinstance(lr, dict) else [lr]):
        if not math.isfinite(value):
            raise ConfigError(f"inner learning rate must be finite, got {value!r}")


def sgd_step(params: Params, grads: Params, lr: LearningRate) -> Params:
    """One plain gradient step p − lr·g as new tensors (never in place); ``lr`` one number or one per name."""
    _check_same_keys(params, grads, "grads")
    return {name: p - _lr_of(lr, name) * grads[name] for name, p in params.items()}


def _unroll(inner_loss_fn: LossFn, params: Params, lr: LearningRate, steps: int, create_graph: bool,
            first_loss: torch.Tensor | None = None,
            grad_transform: Callable[[Params], Params] | None = None
            ) -> tuple[list[Params], list[torch.Tensor], Params]:
    """The trajectory φ_0 = params, …, φ_steps of plain inner steps, L_in(φ_k) for k < steps, and ∇L_in(φ_0).

    ``first_loss``: L_in(φ_0) already evaluated on ``params`` (leaves), used instead of calling ``inner_loss_fn``.
    ``grad_transform``: applied to every inner gradient before its step (e.g. clipping).
    """
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"inner steps must be an integer >= 1, got {steps!r}")
    _check_params(params)
    _check_lr(lr, params)
    current = params if create_graph or first_loss is not None else _leaves(params)
    trajectory, losses, first_grads = [current], [], {}
    for step in range(steps):
        loss = first_loss if step == 0 and first_loss is not None else inner_loss_fn(current)
        grads = grad_dict(loss, current, create_graph=create_graph)
        if step == 0:
            first_grads = {n: g.detach() for n, g in grads.items()}
        if grad_transform is not None:
            grads = grad_transform(grads)
        current = sgd_step(current, grads, lr)                                   # Eq. 6
        if not create_graph:
            current = _leaves(current)
        trajectory.append(current)
        losses.append(loss.detach())
    return trajectory, losses, first_grads


def _global_norm(vector: Params) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(v) for v in vector.values()]))


def hessian_vector_product_fd(loss_fn: LossFn, params: Params, vector: Params, radius: float) -> Params:
    """H(θ)·v ≈ [∇L(θ + εv) − ∇L(θ − εv)] / (2ε), ε = radius/‖v‖ (D-EN-01); detached.

    A zero vector gives a zero product (the probes then coincide); no host synchronisation.
    """
    if not radius > 0:
        raise ConfigError(f"finite-difference radius must be > 0, got {radius!r}")
    _check_params(params)
    _check_same_keys(params, vector, "vector")
    eps = radius / _global_norm(vector).clamp_min(1e-12)
    plus = _leaves({n: p.detach() + eps * vector[n] for n, p in params.items()})
    grad_plus = grad_dict(loss_fn(plus), plus)
    minus = _leaves({n: p.detach() - eps * vector[n] for n, p in params.items()})
    grad_minus = grad_dict(loss_fn(minus), minus)
    return {n: (grad_plus[n] - grad_minus[n]) / (2 * eps) for n in params}            # (D-EN-01)


def hypergradient(outer_loss_fn: Callable[[Params], Any], inner_loss_fn: LossFn, params: Params,
                  lr: LearningRate, mode: str = "first_order", fd_radius: float = 1e-2, steps: int = 1,
                  first_inner_loss: torch.Tensor | None = None,
                  probe_loss_fn: LossFn | None = None, has_aux: bool = False,
                  inner_grad_transform: Callable[[Params], Params] | None = None) -> HypergradResult:
    """d/dθ L_out(φ_K(θ)) where φ_K is ``steps`` inner SGD steps of size ``lr`` on L_in from θ = ``params``.

    ``mode``: ``"first_order"`` (FOMAML, g = ∇L_out(φ_K)), ``"finite_difference"`` (unrolled AID-FD, D-EN-01,
    radius ``fd_radius``) or ``"exact"`` (autograd through the unroll). See the module docstring for how they
    relate to TC² Eqs. 6–7. ``params`` is only read: the result is detached and no ``.grad`` is written.

    ``first_inner_loss``: L_in(θ) already evaluated by the caller on ``params``, which must then be leaves that
    require grad (:func:`detached_leaves`); it replaces the engine's own first call of ``inner_loss_fn`` (a shared
    forward, see the module docstring). In ``"exact"`` mode its graph must be differentiable twice, as usual.

    ``probe_loss_fn``: the inner loss that the finite-difference probes θ ± εv evaluate (default
    ``inner_loss_fn``). The probes are numerical devices, not training forwards: a caller whose inner loss runs a
    module with train-mode BatchNorm passes one that runs on scratch buffers (:func:`cloned_buffers`), so that the
    probes leave the running statistics alone.

    ``lr``: one inner step size, or one per parameter name. ``has_aux``: ``outer_loss_fn`` returns
    ``(loss, aux)``; aux comes back as ``outer_aux`` (e.g. tensors computed at φ_K that the caller reuses).
    ``inner_grad_transform``: applied to each inner gradient before its step (e.g. clipping to a norm); not with
    ``"finite_difference"``, whose Hessian-vector product is that of the untransformed step.
    """
    if mode not in HYPERGRADIENT_MODES:
        raise ConfigError(f"hypergradient mode must be one of {HYPERGRADIENT_MODES}, got {mode!r}")
    if mode == "finite_difference" and not fd_radius > 0:
        raise ConfigError(f"finite-difference radius must be > 0, got {fd_radius!r}")
    if mode == "finite_difference" and inner_grad_transform is not None:
        raise ValueError("inner_grad_transform is not supported in finite_difference mode")
    if first_inner_loss is not None:
        _check_params(params)
        _check_first_inner_loss(first_inner_loss, params)
        theta = params                                    # the caller's leaves: its loss graph ends on them
    else:
        theta = _leaves(params)
    exact = mode == "exact"
    trajectory, inner_losses, inner_grads = _unroll(inner_loss_fn, theta, lr, steps, create_graph=exact,
                                                    first_loss=first_inner_loss, grad_transform=inner_grad_transform)
    adapted = trajectory[-1]
    outer_loss, outer_aux = outer_loss_fn(adapted) if has_aux else (outer_loss_fn(adapted), None)
    if exact:
        grads = grad_dict(outer_loss, theta)                                        # (I − αH)·v through autograd
    else:
        grads = grad_dict(outer_loss, adapted)                                      # v = ∇L_out(φ_K)
        if mode == "finite_difference":
            for phi in reversed(trajectory[:-1]):                                   # v ← v − α·H(φ_{k−1})·v
                hvp = hessian_vector_product_fd(probe_loss_fn or inner_loss_fn, phi, grads, fd_radius)
                grads = {n: g - _lr_of(lr, n) * hvp[n] for n, g in grads.items()}
    return HypergradResult(
        outer_loss=outer_loss.detach(),
        grads={n: g.detach() for n, g in grads.items()},
        inner_losses=inner_losses,
        adapted={n: p.detach() for n, p in adapted.items()},
        inner_grads=inner_grads,
        outer_aux=outer_aux,
    )


def accumulate(into: Params | None, grads: Params, scale: float = 1.0) -> Params:
    """``into + scale·grads`` as a new dict of new tensors (``into=None`` starts from zero); e.g. Σ_k of Eq. 7."""
    if scale == 1.0:                             # exactly the same numbers, one multiplication fewer per tensor
        if into is None:
            return {n: g.detach().clone() for n, g in grads.items()}
        _check_same_keys(into, grads, "grads")
        return {n: acc + grads[n].detach() for n, acc in into.items()}
    if into is None:
        return {n: scale * g.detach() for n, g in grads.items()}
    _check_same_keys(into, grads, "grads")
    return {n: acc + scale * grads[n].detach() for n, acc in into.items()}


def assign_grads(module_or_params: nn.Module | Params, grads: Params) -> None:
    """Write ``grads`` into ``.grad`` of the live parameters (adding to an existing ``.grad``), for the optimiser.

    ``module_or_params`` is a module (its parameters by name) or a dict of live parameters; every name in
    ``grads`` must be one of them, parameters absent from ``grads`` are left alone.
    """
    targets = (module_params(module_or_params, requires_grad_only=False)
               if isinstance(module_or_params, nn.Module) else module_or_params)
    unknown = sorted(grads.keys() - targets.keys())
    if unknown:
        raise ValueError(f"gradients for unknown parameters: {unknown}")
    for name, g in grads.items():
        p = targets[name]
        if g.shape != p.shape:
            raise ValueError(f"gradient for {name!r} has shape {tuple(g.shape)}, parameter has {tuple(p.shape)}")
        g = g.detach().to(dtype=p.dtype, device=p.device)
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.add_(g)
