"""One UMM bi-level step through the functional engine (``tc2ssl.meta.functional``): the DARTS hypergradient.

θ are the tuned parameters (late backbone layers, projection head, and the method's other heads), a dict named
like the method's parameters. With one inner SGD step of size α on L_in (the inner objective) and the outer
objective L_out evaluated at the adapted parameters,

    θ' = θ − α ∇L_in(θ)
    g  = ∇L_out(θ') − α · [∇L_in(θ + εv) − ∇L_in(θ − εv)] / (2ε),   v = ∇L_out(θ'),  ε = r/‖v‖     # DARTS

(``mode="finite_difference"``, r = ``fd_radius`` = 0.01 as DARTS and the authors' code). ``mode="exact"``
back-propagates through the inner step instead (third-order terms through the JS weights: small models and
tests only); ``"first_order"`` drops the Hessian term. The engine builds perturbed parameter dicts: the live
parameters are never written (the authors' meta-learning library left them perturbed after the probe).

BatchNorm: the first inner forward at θ runs on the module's own running statistics (updated once per step, as a
plain training step would); the finite-difference probes and the outer forward run on scratch copies.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from tc2ssl.meta.functional import HypergradResult, Params, cloned_buffers, detached_leaves, hypergradient
from tc2ssl.umm.objectives import inner_objective, outer_objective

#: (θ, buffers or None for the module's own, early features [B, ...]) -> embeddings z [B, d], rows image-major
LateEmbed = Callable[[Params, "Params | None", torch.Tensor], torch.Tensor]
#: (z [N, n_views, d], θ) -> the method's SSL loss
SSLLoss = Callable[[torch.Tensor, Params], torch.Tensor]


@dataclass
class BilevelSettings:
    """The numbers of one UMM bi-level step (``umm.*`` keys of the plug-in)."""

    beta: float = 1.0            # weight of JS(p ‖ u) in the inner objective
    lam: float = 0.1             # weight of ΔR in the outer objective
    eps2: float = 0.1            # ε² of the outer ΔR
    gamma: float = 1.0           # weight of R_c in the outer ΔR (1 = ΔR proper)
    inner_lr: float = 1e-2       # α, the inner SGD step
    mode: str = "finite_difference"
    fd_radius: float = 1e-2


@dataclass
class UMMObjectives:
    """L_in and L_out of one batch as closures over parameter dicts, for the engine; ``last`` holds the most
    recent values of their parts (detached) for logging."""

    late_embed: LateEmbed
    ssl_loss: SSLLoss
    early_features: torch.Tensor         # [N·n_views, ...] from the frozen early layers, image-major rows
    n_views: int
    settings: BilevelSettings
    #: z [B, ...] -> the rows [B, d] whose ΔR the outer objective maximises (None: z itself, e.g. MAE: token mean)
    rate_rows: Callable[[torch.Tensor], torch.Tensor] | None = None
    last: dict[str, torch.Tensor] = field(default_factory=dict)

    def _ssl(self, params: Params, buffers: Params | None, early: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.late_embed(params, buffers, early)
        n_images = z.shape[0] // self.n_views
        # the loss sees the buffers too: heads applied inside it (predictors) then run on the same scratch copies
        tensors = params if buffers is None else {**params, **buffers}
        return self.ssl_loss(z.view(n_images, self.n_views, *z.shape[1:]), tensors), z

    def inner(self, params: Params, buffers: Params | None = None) -> torch.Tensor:
        """L_in(θ) = L_ssl + β·JS(p ‖ u), p from the per-row gradients at the early features."""
        early = self.early_features.detach().requires_grad_(self.settings.beta != 0)
        ssl, _ = self._ssl(params, buffers, early)
        loss, divergence = inner_objective(ssl, early, self.settings.beta)
        self.last.update({"inner_ssl": ssl.detach(), "js": divergence.detach()})
        return loss

    def outer(self, params: Params, buffers: Params | None = None) -> torch.Tensor:
        """L_out(θ) = L_ssl − λ·ΔR(z | instances)."""
        ssl, z = self._ssl(params, buffers, self.early_features.detach())
        s = self.settings
        rows = z if self.rate_rows is None else self.rate_rows(z)
        loss, reduction = outer_objective(ssl, rows, self.n_views, s.lam, s.eps2, s.gamma)
        self.last.update({"outer_ssl": ssl.detach(), "dR_instance": reduction.detach()})
        return loss


def bilevel_step(objectives: UMMObjectives, params: Params, module: torch.nn.Module | None = None) -> HypergradResult:
    """The hypergradient of one UMM step at θ = ``params`` (read only). ``module``: the module whose buffers the
    closures run on; its running statistics see the first inner forward only (None: every forward on the
    module's own buffers)."""
    s = objectives.settings
    theta = detached_leaves(params)
    first_inner = objectives.inner(theta)                        # the live BN statistics see this forward
    if module is None:
        return hypergradient(objectives.outer, objectives.inner, theta, s.inner_lr, s.mode, s.fd_radius,
                             first_inner_loss=first_inner)
    scratch = cloned_buffers(module)

    def on_scratch(loss_fn):
        return lambda p: loss_fn(p, scratch)

    return hypergradient(on_scratch(objectives.outer), on_scratch(objectives.inner), theta, s.inner_lr, s.mode,
                         s.fd_radius, first_inner_loss=first_inner, probe_loss_fn=on_scratch(objectives.inner))
