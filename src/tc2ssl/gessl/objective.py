"""GeSSL's bi-level objective on mini-batch tasks (the plug-in's maths, independent of the training loop).

For one task τ (a mini-batch of n images with two views each) and the shared parameters θ:

    φ_0 = θ,   φ_k = φ_{k−1} − α ∇L_ssl(φ_{k−1}; τ),   k = 1..K_in                      inner level    # Eq. (G7)
    ψ_0 = sg(φ_K),   ψ_l = ψ_{l−1} − α_Λ ∇L_ssl(ψ_{l−1}; τ),   l = 1..Λ      look-ahead, no gradient  # Eq. (G8)
    L_out(φ_K) = mean_rows KL(π_ψ ‖ π_{φ_K})      (or KL(one-hot ‖ π_{φ_K}), ``target=onehot``)      # Eq. (G2)
    g_τ = d L_out(φ_K(θ)) / dθ      (aid_fd, implicit_cg, exact or first_order; tc2ssl.meta.unrolled)

and for M tasks (the multi-batch collaborative update) G = (1/M) Σ_i g_{τ_i}, which the outer optimiser applies
to θ (Eq. (G9)). L_ssl is the method's own loss (``support_loss`` on the task's two views); π is Eq. (G1) on the
method's projector or on a separate :class:`~tc2ssl.gessl.head.PiHead`. A separate head is not part of θ: it is
trained with the model by its own InfoNCE (Eq. (G2') on the detached backbone features of the outer forward), so
that it stays a classifier and cannot make the KL small by collapsing.

BatchNorm: the first forward of each task at θ (the inner loss of step 1) runs on the live buffers, as the
baseline's one training forward does; every other forward (later inner steps, look-ahead, π at φ_K and ψ, the
finite-difference probes) runs on scratch copies, so only real training forwards move the running statistics.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from tc2ssl.errors import ConfigError
from tc2ssl.gessl.head import PiHead, pair_log_probs
from tc2ssl.gessl.target import kl_to_target, onehot_cross_entropy
from tc2ssl.meta.functional import Params, accumulate, cloned_buffers
from tc2ssl.meta.unrolled import HYPERGRADIENT_MODES, proximal_adapt, unrolled_hypergradient
from tc2ssl.methods.base import LossContext, SSLMethod

TARGETS = ("lookahead", "onehot")
OUTER_DATA = ("same_views", "fresh_views")


@dataclass
class GeSSLSettings:
    """The knobs of the objective (the plug-in's config block; defaults are the recommended values)."""

    inner_steps: int = 1            # K_in
    lookahead_steps: int = 1        # Λ
    inner_lr: float = 0.05          # α
    lookahead_lr: float = 0.0       # α_Λ; 0 = α
    hypergradient: str = "aid_fd"
    fd_radius: float = 1e-2         # r of the finite-difference probes
    cg_steps: int = 5
    prox_lambda: float = 1.0
    tau_pi: float = 0.5             # π's temperature
    target: str = "lookahead"
    outer_data: str = "same_views"
    outer_ssl_weight: float = 0.0   # w of the optional w·L_ssl(φ_K) term of the outer loss (not in the sources)

    def __post_init__(self):
        if self.hypergradient not in HYPERGRADIENT_MODES:
            raise ConfigError(f"hypergradient={self.hypergradient!r}; valid values: {', '.join(HYPERGRADIENT_MODES)}")
        if self.target not in TARGETS:
            raise ConfigError(f"target={self.target!r}; valid values: {', '.join(TARGETS)}")
        if self.outer_data not in OUTER_DATA:
            raise ConfigError(f"outer_data={self.outer_data!r}; valid values: {', '.join(OUTER_DATA)}")
        if self.inner_steps < 1 or self.lookahead_steps < 0:
            raise ConfigError(f"inner_steps must be >= 1 and lookahead_steps >= 0, got {self.inner_steps} and "
                              f"{self.lookahead_steps}")
        if not self.tau_pi > 0:
            raise ConfigError(f"tau_pi must be > 0, got {self.tau_pi}")
        if self.outer_ssl_weight < 0:
            raise ConfigError(f"outer_ssl_weight must be >= 0, got {self.outer_ssl_weight}")


@dataclass
class TaskOutcome:
    """One task's hypergradient and what it measured (all detached)."""

    grads: Params
    outer_loss: torch.Tensor         # L_out(φ_K), Eq. (G2)
    inner_loss: torch.Tensor         # L_ssl(θ; τ) before the first inner step
    sigma: torch.Tensor              # Eq. (G2') at φ_K on the outer views: the task's training σ
    features: torch.Tensor | None    # backbone features at φ_K of the outer views [n, 2, f] (PiHead training)
    inner_grads: Params | None = None  # ∇L_ssl(θ; τ), the first inner gradient (the task-conflict diagnostic)


class GeSSLObjective:
    """Eqs. (G7)-(G9) for ``method``; π on the projector (``pi_head=None``) or on ``pi_head``."""

    def __init__(self, method: SSLMethod, settings: GeSSLSettings, pi_head: PiHead | None = None):
        self.method = method
        self.settings = settings
        self.pi_head = pi_head
        self._routed: set[str] | None = None

    # ------------------------------------------------------------------ forwards
    def _with(self, params: Params, buffers: Params | None) -> Params:
        return params if buffers is None else {**params, **buffers}

    def ssl_loss(self, params: Params, views: torch.Tensor, buffers: Params | None) -> torch.Tensor:
        """L_ssl(params; τ): the method's support loss on the task's views [n, 2, C, H, W]."""
        n, v = views.shape[:2]
        merged = self._with(params, buffers)
        z = self.method.embed(views.flatten(0, 1), merged).view(n, v, -1)
        return self.method.support_loss(z, LossContext(params=merged, views=views))

    def pi_embeddings(self, params: Params, views: torch.Tensor, buffers: Params | None
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """h of π for views [n, 2, ...] -> ([n, 2, d_π], backbone features [n, 2, f] or None)."""
        n, v = views.shape[:2]
        merged = self._with(params, buffers)
        flat = views.flatten(0, 1)
        if self.pi_head is None:
            return self.method.embed(flat, merged).view(n, v, -1), None
        features = self.method.call_child("backbone", flat, merged)
        return self.pi_head(features).view(n, v, -1), features.view(n, v, -1)

    def head_loss(self, features: torch.Tensor) -> torch.Tensor:
        """The separate head's own training loss: InfoNCE (Eq. (G2')) of π on detached backbone features."""
        if self.pi_head is None:
            raise ValueError("head_loss needs a separate PiHead (pi_head=projector trains with θ)")
        n, v = features.shape[:2]
        z = self.pi_head(features.detach().flatten(0, 1)).view(n, v, -1)
        return onehot_cross_entropy(pair_log_probs(z, self.settings.tau_pi))

    def scratch_buffers(self) -> Params:
        """Copies of the buffers of the modules θ routes through (backbone, heads): BatchNorm statistics that a
        forward may move without touching the live ones. Target networks keep their own (``LossContext``)."""
        if self._routed is None:
            self._routed = {name.split(".", 1)[0] for name in self.method.online_parameters()}
        return cloned_buffers(self.method, self._routed)

    def lookahead(self, adapted: Params, views: torch.Tensor) -> Params:
        """ψ of Eq. (G8): Λ SSL steps from sg(φ_K) on the task's views, on scratch buffers; detached."""
        s = self.settings
        start = {n: p.detach() for n, p in adapted.items()}
        if s.lookahead_steps == 0:
            return start
        with torch.enable_grad():                                   # plain SGD steps: no proximal pull
            psi, _, _ = proximal_adapt(lambda p: self.ssl_loss(p, views, self.scratch_buffers()), start,
                                       s.lookahead_lr or s.inner_lr, steps=s.lookahead_steps, prox_lambda=0.0)
        return {n: p.detach() for n, p in psi.items()}

    # ------------------------------------------------------------------ one task, M tasks
    def task_hypergradient(self, theta: Params, views: torch.Tensor, outer_views: torch.Tensor | None = None
                           ) -> TaskOutcome:
        """g_τ for one task; ``outer_views`` (fresh views of the same images) default to ``views``."""
        s = self.settings
        outer_views = views if outer_views is None else outer_views
        calls = [0]
        stash: dict[str, torch.Tensor] = {}

        def inner_loss(params: Params) -> torch.Tensor:                      # Eq. (G7)
            calls[0] += 1                   # the task's first forward at θ is a training forward: live BN buffers
            return self.ssl_loss(params, views, None if calls[0] == 1 else self.scratch_buffers())

        def probe_loss(params: Params) -> torch.Tensor:
            return self.ssl_loss(params, views, self.scratch_buffers())

        def outer_loss(params: Params) -> torch.Tensor:                      # Eq. (G2) at φ_K
            z, features = self.pi_embeddings(params, outer_views, self.scratch_buffers())
            log_probs = pair_log_probs(z, s.tau_pi)
            stash["sigma"] = onehot_cross_entropy(log_probs.detach())
            if features is not None:
                stash["features"] = features.detach()
            if s.target == "onehot":
                loss = onehot_cross_entropy(log_probs)                       # Eq. (G2')
            else:
                psi = self.lookahead(params, views)                          # Eq. (G8)
                with torch.no_grad():
                    z_target, _ = self.pi_embeddings(psi, outer_views, self.scratch_buffers())
                    target = pair_log_probs(z_target, s.tau_pi)
                loss = kl_to_target(target, log_probs)
            if s.outer_ssl_weight:                                           # our addition, off by default
                loss = loss + s.outer_ssl_weight * self.ssl_loss(params, outer_views, self.scratch_buffers())
            return loss

        result = unrolled_hypergradient(outer_loss, inner_loss, theta, lr=s.inner_lr, mode=s.hypergradient,
                                        steps=s.inner_steps, fd_radius=s.fd_radius, probe_loss_fn=probe_loss,
                                        cg_steps=s.cg_steps, prox_lambda=s.prox_lambda)
        return TaskOutcome(grads=result.grads, outer_loss=result.outer_loss, inner_loss=result.inner_losses[0],
                           sigma=stash["sigma"], features=stash.get("features"), inner_grads=result.inner_grads)

    def collaborative_update(self, theta: Params, tasks: list[tuple[torch.Tensor, torch.Tensor | None]]
                             ) -> tuple[Params, list[TaskOutcome]]:
        """Eq. (G9): G = (1/M) Σ_i g_{τ_i} over the M tasks (views, outer views or None); returns G and the
        per-task outcomes."""
        if not tasks:
            raise ValueError("the collaborative update needs at least one task")
        total: Params | None = None
        outcomes = []
        for views, outer_views in tasks:
            outcome = self.task_hypergradient(theta, views, outer_views)
            total = accumulate(total, outcome.grads, 1.0 / len(tasks))
            outcomes.append(outcome)
        return total, outcomes
