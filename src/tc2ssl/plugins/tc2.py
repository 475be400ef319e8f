"""TC², Task Conflict Calibration (AAAI 2026), and its "+T" ablation, as a training plug-in.

Per batch (SPEC §3.10):

1. tasks: the batch is split into K tasks, each image has m views, m' to the support set and m - m' to the query
   set (``tc2ssl.data.tasks``).
2. statistics: one no-grad forward of all N·m views at θ gives Z; S = [mean; covariance] (§3.3). Where it is
   exact (no batch-statistics BatchNorm; ``plugin.share_support_forward``), the support rows of Z come instead
   from each task's support forward at θ, which stage 2 reuses with its graph for Eq. 6 (``statistics_forward``).
3. stage 1 (Eqs. 4-5), encoder fixed: f_v (V = f_v(S)) and f_w (weights W = f_w(z, V)) take a support step on
   L̄^s = (1/K)Σ_k L_ssl^s(calibrated support of task k) + L_tc², then a query step on
   L̄^q = (1/K)Σ_k L_sse^q(calibrated query of task k) + L_tc² (Eq. 3 = Eq. 1 + λ_s·Eq. 2).
4. stage 2 (Eqs. 6-7), f_v and f_w held: per task, θ^k = θ − β₁∇L_ssl^s(cal(f_θ(support))) (Eq. 6), and the outer
   gradient of Σ_k L_sse^q(cal(f_{θ^k}(query))) (Eq. 7) in first-order, finite-difference or exact mode, through the
   functional bi-level engine (``tc2ssl.meta.functional``). The loop's optimiser then applies it (β₂ = the baseline's
   optimiser and schedule).

``plugin.name=tasks`` ("+T", Fig. 1) is the same with calibration off: stage 1 is skipped and cal = identity.
Every [CHOICE] of the spec is a ``plugin.*`` config key; see docs/tc2.md for the equation-to-code map.

Generative methods (a method with ``generative = True``, e.g. MAE; SPEC §3.2 G-SSL): each image gets ONE augmented
view and ``method.task_views`` turns it into m masked views (m random patch masks); the support of a task holds m'
masked views plus the unmasked image (the reconstruction target, carried by the views), the query the other m − m'
masked views. The views are then whatever object the method returns (indexable like [N, m, ...]); the loss hooks
receive them in ``LossContext.views``, in stage 1 as well. Their calibration point is per token (``embed`` ->
[B, T, d]): f_w calibrates token rows, S and L_v use a random subsample of at most 4096 token rows (seeded by the
step seed, SPEC §3.5.3) and L_w the support (resp. query) token rows.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from tc2ssl.data.tasks import TaskSplit, build_tasks
from tc2ssl.diagnostics.conflict import ConflictTracker, epoch_summary_dict, task_gradient_cosines
from tc2ssl.errors import ConfigError
from tc2ssl.meta.functional import Params, assign_grads, detached_leaves, grad_dict, hypergradient
from tc2ssl.methods.base import LossContext, sub_params
from tc2ssl.plugins.base import PLUGINS, Plugin, StepInfo
from tc2ssl.precision import at_least_float32, encoder_input, float32_region
from tc2ssl.tc2.factor_net import FactorNet
from tc2ssl.tc2.health import health_metrics, health_warnings
from tc2ssl.tc2.losses import loss_v, loss_w, proto_mse_loss
from tc2ssl.tc2.stats import batch_statistics
from tc2ssl.tc2.weight_net import WeightNet
from tc2ssl.timing import SectionTimer, section

#: S and L_v of token-level representations use at most this many token rows (SPEC §3.5.3)
MAX_STATISTIC_TOKENS = 4096
#: stream constants that derive the task split, the masks and the token subsample from the step seed
_TASK_STREAM, _MASK_STREAM, _TOKEN_STREAM = 0x7A5C, 0x3D1F, 0x51E7


@dataclass
class SharedSupport:
    """The support representations at θ computed once per step and used twice (``share_support_forward``):
    detached, as the support rows of S (§3.3); with their graph on ``theta``, as the inner loss of Eq. 6.

    theta:   detached leaves of θ (``detached_leaves``) the forwards ran on.
    support: per task k, f_θ(support views of k) [n, m', d] (or [n, m', T, d]), with graph.
    """

    theta: Params
    support: list[torch.Tensor]


def batch_coupled_layers(module: nn.Module) -> list[str]:
    """Names of the sub-modules whose output for one sample depends on the other samples of the call: BatchNorm
    layers normalising with batch statistics (training mode, or no running statistics)."""
    return [name for name, layer in module.named_modules()
            if isinstance(layer, nn.modules.batchnorm._BatchNorm)
            and (layer.training or not layer.track_running_stats or layer.running_mean is None)]


class TaskPlugin(Plugin):
    """K tasks per batch with the two-stage bi-level update; calibration on (TC²) or off (+T)."""

    with_calibration: bool = True
    uses_tasks = True
    supports_distributed = True

    @classmethod
    def check_config(cls, cfg) -> None:
        """The task keys: a query set of at least one view, enough support views for the method's support loss,
        K <= the batch, and the remainder policy; ``share_support_forward=always`` needs one process."""
        from tc2ssl.methods import METHODS

        p = cfg.plugin
        if p.n_support_views >= p.n_views:
            raise ConfigError(f"plugin.n_support_views={p.n_support_views} must be < plugin.n_views={p.n_views} "
                              "(the query set needs at least one view)")
        minimum = getattr(METHODS.get(cfg.method.name), "min_support_views", 1)
        if p.n_support_views < minimum:
            raise ConfigError(f"plugin.n_support_views={p.n_support_views} is too small for "
                              f"method.name={cfg.method.name}: its support loss needs at least {minimum} views per "
                              f"image; allowed: {minimum} <= plugin.n_support_views < plugin.n_views={p.n_views}")
        batch, k = cfg.train.batch_size, p.n_tasks
        if k > batch:
            raise ConfigError(f"plugin.n_tasks={k} exceeds train.batch_size={batch}")
        if p.remainder == "error" and batch % k:
            raise ConfigError(f"plugin.remainder=error needs train.batch_size divisible by plugin.n_tasks, got "
                              f"train.batch_size={batch} and plugin.n_tasks={k}: use a multiple of {k} (e.g. "
                              f"train.batch_size={batch - batch % k}) or plugin.remainder=drop")
        if cfg.train.devices > 1 and p.share_support_forward == "always":
            raise ConfigError(f"plugin.share_support_forward=always is not supported with train.devices="
                              f"{cfg.train.devices}: the statistics forward normalises over the whole batch across "
                              "processes; use auto (shares where it is exact) or never")

    def __init__(self, cfg, method, view_maker):
        super().__init__(cfg, method, view_maker)
        p = self.cfg
        self.n_views = p.n_views
        if p.n_support_views < method.min_support_views:
            raise ConfigError(f"plugin.n_support_views={p.n_support_views} is too small for {method.name}: its "
                              f"support loss needs at least {method.min_support_views} views per image")
        self.use_calibration = self.with_calibration and p.calibration
        self.generative = method.generative
        if self.generative and p.query_loss == "proto_mse":
            raise ConfigError(f"plugin.query_loss=proto_mse compares embeddings with embedding anchors; "
                              f"{method.name}'s anchors are images: use plugin.query_loss=default or native")
        # Table-12 "no bi-level", and "+T" in its joint multi-task reading (AMB-TC-27 b)
        self.bilevel = p.bilevel and not (not self.with_calibration and p.plus_t_mode == "joint")
        self.input_norm = p.input_norm if p.input_norm != "auto" else ("l2" if method.cosine_based else "rms")
        # stage 1 evaluates the K tasks' SSL losses in one call when that is the same number (SPEC §3.8, Eqs. 4-5:
        # a mean over tasks of per-task means): per-view losses and no layer that couples the samples of a call
        self.tasks_in_one_loss_call = method.per_view_losses and not batch_coupled_layers(method)
        self.scale = torch.ones(())  # s of input_norm=rms: the detached batch RMS norm of z (1 otherwise)
        dim = method.embed_dim
        self.n_factors = p.n_factors or max(1, dim // 2)
        if self.n_factors > dim:
            raise ConfigError(f"plugin.n_factors={self.n_factors} exceeds the representation dimension {dim}")
        if self.use_calibration:
            self.factor_net = FactorNet(dim, self.n_factors, hidden=p.factor_hidden)
            self.weight_net = WeightNet(dim, self.n_factors, hidden=p.weight_hidden, mode=p.weight_mode,
                                        gate_bias_init=p.gate_bias_init)
            self.stage1_optimizer = (torch.optim.Adam(self.calibrator_parameters().values(), lr=p.stage1_adam_lr)
                                     if p.stage1_optimizer == "adam" else None)
        self.factor_base_initialised = False   # plugin.factor_init=pca: set at the first stage 1 (checkpointed)
        self.conflict = ConflictTracker()
        self.inner_gain_hits = [0, 0]  # (tasks where the inner step lowered L_ssl^s, tasks measured) this epoch
        self.last_health: dict[str, torch.Tensor] = {}
        self._warned_small_tasks = False
        self.timer: SectionTimer | None = None  # set by benchmarks/throughput.py to time the parts of a step

    # ------------------------------------------------------------------ calibration (Eqs. 1-3)
    def calibrator_parameters(self) -> dict[str, torch.Tensor]:
        return {f"factor_net.{k}": v for k, v in self.factor_net.named_parameters()} | \
               {f"weight_net.{k}": v for k, v in self.weight_net.named_parameters()}

    def prep(self, z: torch.Tensor) -> torch.Tensor:
        """The vector that is calibrated (SPEC §3.5.3): z ℓ2-normalised per row (input_norm=l2), z/s with s the
        batch RMS norm (input_norm=rms), or z as it is (none)."""
        if self.input_norm == "l2":
            return F.normalize(z, dim=-1)
        if self.input_norm == "rms":
            return z / self.scale
        return z

    def set_scale(self, z: torch.Tensor) -> None:
        """Fix s for this batch from the stage-1 representations (detached; shared by both stages)."""
        if self.input_norm == "rms":
            self.scale = z.detach().pow(2).sum(-1).mean().sqrt().clamp_min(1e-6)
        else:
            self.scale = torch.ones((), device=z.device, dtype=z.dtype)

    def calibrated(self, z_prepped: torch.Tensor, basis: torch.Tensor, phi: dict | None = None) -> torch.Tensor:
        """ẑ in the scale the SSL loss expects: s·f_w(z/s)Vᵀ for rms (scale-equivariant), f_w(z)Vᵀ otherwise."""
        return self.scale * self.calibrate(z_prepped, basis, phi)

    def factors(self, stats: torch.Tensor, phi: dict | None = None) -> torch.Tensor:
        """V = f_v(S) [d, n_f]."""
        if phi is None:
            return self.factor_net(stats)
        return functional_call(self.factor_net, sub_params(phi, "factor_net"), (stats,))

    def weights(self, z: torch.Tensor, basis: torch.Tensor, phi: dict | None = None) -> torch.Tensor:
        """W = f_w(z, V) [R, n_f]."""
        if phi is None:
            return self.weight_net(z, basis)
        return functional_call(self.weight_net, sub_params(phi, "weight_net"), (z, basis))

    def calibrate(self, z: torch.Tensor, basis: torch.Tensor, phi: dict | None = None) -> torch.Tensor:
        """ẑ = f_w(z) Vᵀ: the calibrated representation (paper's answer to question (iii))."""
        return self.weights(z, basis, phi) @ basis.T

    def loss_tc2(self, zf: torch.Tensor, basis: torch.Tensor, rows: torch.Tensor, phi: dict | None,
                 lv_rows: torch.Tensor | None = None) -> tuple:
        """L_tc² = L_v + λ_s·L_w (Eq. 3), with L_v on all rows (Eq. 1), or on ``lv_rows`` when given (token
        subsample), and L_w on ``rows`` (Eq. 2)."""
        p = self.cfg
        zero = zf.new_zeros(())
        z_lv = zf if lv_rows is None else zf[lv_rows]
        lv = loss_v(basis, z_lv, reduction=p.reduction) if p.use_loss_v else zero
        lw = zero
        if p.use_loss_w:
            basis_w = basis.detach() if p.detach_v_in_lw else basis  # "V is a pre-given matrix" (AMB-TC-05)
            z_rows = zf[rows]
            lw = loss_w(z_rows, self.weights(z_rows, basis_w, phi), basis_w, l1_coef=p.l1_coef, reduction=p.reduction)
        return lv + p.lam_s * lw, lv, lw

    # ------------------------------------------------------------------ per-task losses
    def _query_loss(self, z_query, z_support, params, support_views, query_views, cal) -> torch.Tensor:
        """L_sse^q of one task: query embeddings against anchors built from the same task's support views."""
        mode = self.cfg.query_loss
        if mode == "native":
            both = None if support_views is None else _join_views(support_views, query_views)
            return self.method.native_query_loss(z_query, z_support,
                                                 LossContext(params=params, views=both, calibrate=cal))
        anchors = self.method.anchors(z_support, LossContext(params=params, views=support_views, calibrate=cal))
        if mode == "proto_mse":
            return proto_mse_loss(z_query, anchors)
        return self.method.query_loss(z_query, anchors,
                                      LossContext(params=params, views=query_views, calibrate=cal))

    def _reduce_tasks(self, values: list[torch.Tensor]) -> torch.Tensor:
        total = torch.stack(values).sum()
        return total / len(values) if self.cfg.task_reduction == "mean" else total

    # ------------------------------------------------------------------ stage 1 (Eqs. 4-5)
    def stage1(self, z_all: torch.Tensor, split: TaskSplit, views, seed: int = 0) -> tuple[torch.Tensor, dict]:
        """Update f_v, f_w with the encoder fixed; return V* = f_v(S) (detached) for stage 2 and metrics.

        z_all: [N, m, d] detached representations at θ (already prepped), or [N, m, T, d] token latents of a
        generative method, whose S and L_v use at most ``MAX_STATISTIC_TOKENS`` token rows drawn with ``seed``.
        views: the step's views; the loss hooks of generative methods get each task's views in ``ctx.views``.
        """
        p = self.cfg
        n_img, m, d = z_all.shape[0], z_all.shape[1], z_all.shape[-1]
        zf = z_all.reshape(-1, d)                                                   # [N·m(·T), d]
        stat_rows = None
        if z_all.dim() == 4 and zf.shape[0] > MAX_STATISTIC_TOKENS:                 # token rows: subsample
            generator = torch.Generator().manual_seed(seed ^ _TOKEN_STREAM)
            stat_rows = torch.randperm(zf.shape[0], generator=generator)[:MAX_STATISTIC_TOKENS]
            stat_rows = stat_rows.to(zf.device, non_blocking=True)
        z_stats = zf if stat_rows is None else zf[stat_rows]
        stats = batch_statistics(z_stats)
        if p.factor_init == "pca" and not self.factor_base_initialised:   # V0 from the first batch (docs/tc2.md)
            self.factor_net.init_base_from(z_stats)
            self.factor_base_initialised = True
        split = split.to(zf.device)                                                 # a no-op in training_step
        rows = torch.arange(zf.shape[0], device=zf.device).view(n_img, m, -1)      # [N, m, rows per view]
        images = torch.arange(n_img, device=zf.device)[:, None]
        s_idx, q_idx = split.support_idx, split.query_idx
        support_rows = rows[images, s_idx].reshape(-1)
        query_rows = rows[images, q_idx].reshape(-1)
        if p.lw_rows == "all":
            support_rows = query_rows = rows.reshape(-1)
        task_views = views if self.generative else None   # masks and targets of the views for generative losses

        support_only = self.bilevel                   # the support objective of the bi-level step needs no query rows
        z_support_all = z_all[images, s_idx]                                        # [N, m', (T,) d]

        def task_losses(phi, which: str) -> torch.Tensor:
            basis = self.factors(stats, phi)
            # calibration is row-wise: ONE f_w call over the rows of all K tasks, then each task takes its rows
            if which == "support" and support_only:
                zs_hat_all = self.calibrated(z_support_all.reshape(-1, d), basis, phi).view(z_support_all.shape)
            else:
                z_hat_all = self.calibrated(zf, basis, phi).view(z_all.shape)       # [N, m, (T,) d]

            def loss_of(task):                  # task k's SSL loss; task None: all K tasks' rows as one task
                members = split.members(task)
                xs = None if task_views is None else split.support_views(task_views, task)
                ctx = LossContext(views=xs, calibrate=lambda z, b=basis, f=phi: self.calibrated(self.prep(z), b, f))
                if which == "support" and support_only:
                    return self.method.support_loss(zs_hat_all[members], ctx)           # [n, m', (T,) d]
                if not self.bilevel:              # joint variant: the SSL loss over all views of the task
                    ctx = LossContext(views=None if task_views is None else task_views[members],
                                      calibrate=ctx.calibrate)
                    return self.method.support_loss(z_hat_all[members], ctx)
                zs_hat = split.support_views(z_hat_all, task)                           # [n, m', (T,) d]
                zq_hat = split.query_views(z_hat_all, task)                             # [n, m-m', (T,) d]
                xq = None if task_views is None else split.query_views(task_views, task)
                return self._query_loss(zq_hat, zs_hat, None, xs, xq, ctx.calibrate)

            if self.tasks_in_one_loss_call:   # per-view losses, equal-size tasks: (1/K)Σ_k L_k = L(all rows)
                losses = [loss_of(None)]
            else:
                losses = [loss_of(k) for k in range(split.n_tasks)]
            ssl = torch.stack(losses).mean()                                        # (1/K)Σ_k in Eqs. 4-5
            tc2, lv, lw = self.loss_tc2(zf, basis, support_rows if which == "support" else query_rows, phi,
                                        lv_rows=stat_rows)
            return p.stage1_ssl_weight * ssl + tc2, (ssl.detach(), lv.detach(), lw.detach())

        phi = self.calibrator_parameters()
        names = list(phi)
        lr_support = {k: (p.alpha1 if k.startswith("factor_net.") else p.alpha2) for k in names}
        lr_query = {k: (p.alpha3 if k.startswith("factor_net.") else p.alpha4) for k in names}
        metrics = {}

        loss_s, (ssl_s, lv_s, lw_s) = task_losses(phi, "support")                # Eq. (4) objective L̄^s
        metrics.update({"tc2/stage1_ssl_support": ssl_s, "tc2/loss_v": lv_s, "tc2/loss_w": lw_s})
        if not self.bilevel:                                                          # Table-12 "no bi-level"
            self._apply_stage1(phi, self._clip(grad_dict(loss_s, phi)), lr_support)
        elif self.stage1_optimizer is not None:                                     # option: Adam, two steps
            self._adam_step(phi, self._clip(grad_dict(loss_s, phi)))
            phi = self.calibrator_parameters()
            loss_q, (ssl_q, lv_q, lw_q) = task_losses(phi, "query")
            self._adam_step(phi, self._clip(grad_dict(loss_q, phi)))
            metrics.update({"tc2/stage1_sse_query": ssl_q, "tc2/loss_v_query": lv_q, "tc2/loss_w_query": lw_q})
        else:
            create_graph = p.stage1_mode == "maml"
            g_s = self._clip(grad_dict(loss_s, phi, create_graph=create_graph))
            phi_support = {k: phi[k] - lr_support[k] * g_s[k] for k in names}     # Eq. (4): f' = f − α∇L̄^s
            if not create_graph:
                phi_support = {k: v.detach().requires_grad_(True) for k, v in phi_support.items()}
            loss_q, (ssl_q, lv_q, lw_q) = task_losses(phi_support, "query")        # Eq. (5) objective L̄^q at f'
            metrics.update({"tc2/stage1_sse_query": ssl_q, "tc2/loss_v_query": lv_q, "tc2/loss_w_query": lw_q})
            if p.stage1_mode == "sequential":                                      # Eq. (5): f = f' − α∇_{f'}L̄^q
                g_q = self._clip(grad_dict(loss_q, phi_support))
                new = {k: phi_support[k].detach() - lr_query[k] * g_q[k] for k in names}
            elif p.stage1_mode == "fomaml":                                        # ∇ at f', applied to f
                g_q = self._clip(grad_dict(loss_q, phi_support))
                new = {k: phi[k].detach() - lr_query[k] * g_q[k] for k in names}
            else:                                                                  # maml: ∇_f L̄^q(f − α∇L̄^s(f))
                g_q = self._clip(grad_dict(loss_q, phi))
                new = {k: phi[k].detach() - lr_query[k] * g_q[k] for k in names}
            self._write_calibrator(new)
        with torch.no_grad():
            basis = self.factor_net(stats).detach()                                 # V* for stage 2 (AMB-TC-17)
        return basis, metrics, z_stats, stats

    def _clip(self, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Scale a stage-1 gradient to global norm <= plugin.stage1_grad_clip (0 = off, the literal update)."""
        limit = self.cfg.stage1_grad_clip
        if not limit:
            return grads
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()]))
        factor = (limit / (norm + 1e-12)).clamp(max=1.0)
        return {k: g * factor for k, g in grads.items()}

    def _apply_stage1(self, phi, grads, lrs) -> None:
        self._write_calibrator({k: phi[k].detach() - lrs[k] * grads[k] for k in phi})

    def _write_calibrator(self, new: dict[str, torch.Tensor]) -> None:
        live = self.calibrator_parameters()
        with torch.no_grad():
            for k, v in new.items():
                live[k].copy_(v)

    def _adam_step(self, phi, grads) -> None:
        for k, t in phi.items():
            t.grad = grads[k].detach()
        self.stage1_optimizer.step()
        self.stage1_optimizer.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------ stage 2 (Eqs. 6-7)
    def stage2(self, views: torch.Tensor, split: TaskSplit, basis: torch.Tensor | None,
               info: StepInfo, shared: SharedSupport | None = None) -> dict[str, torch.Tensor]:
        """Set the encoder's meta-gradient (Eq. 7) on ``method.online_parameters()``.

        shared: the support representations at θ from the statistics forward (``share_support_forward``), with
        their graph on ``shared.theta``; the inner loss of Eq. 6 is then built on them instead of a new forward.
        """
        p = self.cfg
        method = self.method
        theta = method.online_parameters()
        d = method.embed_dim

        if self.use_calibration:
            for t in self.calibrator_parameters().values():
                t.requires_grad_(False)  # "held": gradients flow through f_w into z, never into f_w

            def cal(z):
                return self.calibrated(self.prep(z), basis)
        else:
            def cal(z):
                return z

        def calibrated_views(z):                               # z [n, v, d] (or [n, v, T, d]) -> ẑ, same shape
            return cal(z.reshape(-1, d)).view(z.shape)

        def embed_views(params, x):                            # x [n, v, ...] -> ẑ [n, v, d] (or [n, v, T, d])
            n, v = x.shape[:2]
            z = method.embed(self._encoder_input(x.flatten(0, 1)), params)
            return calibrated_views(z.view(n, v, *z.shape[1:]))

        health_step = info.step % max(1, p.health_every) == 0
        children = {name.split(".", 1)[0] for name in theta}              # the modules θ routes to (embed's)
        probe_buffers = ({n: b for n, b in method.named_buffers() if n.split(".", 1)[0] in children}
                         if p.stage2_mode == "finite_difference" else {})
        meta_grads: dict | None = None
        task_support_grads = []
        inner_losses, query_losses = [], []
        for k in range(split.n_tasks):
            xs, xq = split.support_views(views, k), split.query_views(views, k)

            if not self.bilevel:                                                       # Table-12 "no bi-level"
                x_all = views[split.groups[k]]
                joint = method.support_loss(embed_views(None, x_all), LossContext(views=x_all, calibrate=cal))
                grads = grad_dict(joint, theta)
                task_support_grads.append(grads)
                query_losses.append(joint.detach())
                meta_grads = _accumulate(meta_grads, grads)
                continue

            def inner_loss(params, xs=xs):                                          # L_ssl^s of Eq. (6)
                ctx = LossContext(params=params, views=xs, calibrate=cal)
                return method.support_loss(embed_views(params, xs), ctx)

            def probe_loss(params, inner_loss=inner_loss):    # the FD probes: BN running statistics untouched
                return inner_loss({**params, **{n: b.detach().clone() for n, b in probe_buffers.items()}})

            at_adapted = {}

            def outer_loss(params, xs=xs, xq=xq, at_adapted=at_adapted):            # L_sse^q summand of Eq. (7)
                with torch.no_grad():
                    z_support = embed_views(params, xs)                             # anchors at θ^k (stop-grad)
                at_adapted["z_support"] = z_support                                 # reused by the R8 check below
                return self._query_loss(embed_views(params, xq), z_support, params, xs, xq, cal)

            if shared is not None:                       # Eq. (6) objective on the shared forward at θ
                first = method.support_loss(calibrated_views(shared.support[k]),
                                            LossContext(params=shared.theta, views=xs, calibrate=cal))
                result = hypergradient(outer_loss, inner_loss, shared.theta, lr=p.beta1, mode=p.stage2_mode,
                                       fd_radius=p.fd_radius, first_inner_loss=first, probe_loss_fn=probe_loss)
            else:
                result = hypergradient(outer_loss, inner_loss, theta, lr=p.beta1, mode=p.stage2_mode,
                                       fd_radius=p.fd_radius, probe_loss_fn=probe_loss)
            task_support_grads.append(result.inner_grads)
            inner_losses.append(result.inner_losses[0].detach())
            query_losses.append(result.outer_loss.detach())
            meta_grads = _accumulate(meta_grads, result.grads)
            if health_step:                              # R8: does the inner step help? L_ssl^s(θ^k) < L_ssl^s(θ)
                with torch.no_grad():                    # on the support embeddings at θ^k the anchors used
                    after = method.support_loss(at_adapted["z_support"],
                                                LossContext(params=result.adapted, views=xs, calibrate=cal))
                self.inner_gain_hits[0] = self.inner_gain_hits[0] + (after < result.inner_losses[0]).long()
                self.inner_gain_hits[1] += 1             # a tensor sum: no host sync in the step

        scale = 1.0 / split.n_tasks_total if p.task_reduction == "mean" else 1.0   # Eq. (7): Σ_k (or mean)
        assign_grads(theta, {k: g * scale for k, g in meta_grads.items()})
        if self.use_calibration:
            for t in self.calibrator_parameters().values():
                t.requires_grad_(True)

        metrics = {"tc2/stage2_sse_query": torch.stack(query_losses).mean()}
        if inner_losses:
            metrics["tc2/stage2_ssl_support"] = torch.stack(inner_losses).mean()
        if p.conflict_every and info.step % p.conflict_every == 0:
            names = list(theta) if p.conflict_params == "all" else method.backbone_parameter_names()
            cos = task_gradient_cosines(self.distributed.gather_task_gradients(     # all K tasks' gradients
                [{n: g[n] for n in names} for g in task_support_grads]))
            self.conflict.update(info.epoch, info.step, cos)
            metrics.update({"conflict/cos_mean": cos["mean"], "conflict/cos_min": cos["min"],
                            "conflict/frac_negative": cos["frac_negative"]})
        return metrics

    # ------------------------------------------------------------------ the step
    def training_step(self, images: torch.Tensor, info: StepInfo) -> dict[str, torch.Tensor]:
        p = self.cfg
        rest = images.shape[0] % p.n_tasks
        if rest:                                  # AMB-TC-21: K must divide N; the batch order is already random
            if p.remainder == "error":
                raise ConfigError(f"batch size {images.shape[0]} is not divisible by plugin.n_tasks={p.n_tasks}; "
                                  f"use a multiple of {p.n_tasks} or plugin.remainder=drop")
            warnings.warn(f"batch size {images.shape[0]} is not divisible by plugin.n_tasks={p.n_tasks}: dropping "
                          f"the last {rest} image(s) of the batch", stacklevel=2)
            images = images[: images.shape[0] - rest]
        task_gen = torch.Generator().manual_seed(info.seed ^ _TASK_STREAM)
        split = build_tasks(images.shape[0], p.n_tasks, p.n_views, p.n_support_views, task_gen,
                            remainder=p.remainder, min_support=self.method.min_support_views)
        self._warn_small_tasks(images.shape[0] // p.n_tasks)
        shard = self.distributed.task_shard(split)          # this process's tasks and images (one process: all)
        split, local_split = split.to(images.device), shard.split.to(images.device)
        with section(self.timer, "augmentation"):
            views = self.make_views(images, info.seed, rows=shard.images)           # [n, m, ...] of shard.images
        metrics: dict[str, torch.Tensor] = {}
        basis, shared = None, None
        if self.use_calibration:
            with section(self.timer, "statistics_forward"), self.distributed.global_batch_norm(self.method):
                z, shared = self.statistics_forward(views, local_split)             # Z at θ for S (§3.3)
                z = shard.gather_images(z)                                          # all N images, batch order
            with section(self.timer, "stage1"), float32_region(z.device):           # S, f_v, f_w, L_v in fp32
                z = at_least_float32(z)
                self.set_scale(z)
                z = self.prep(z)
                basis, stage1_metrics, zf, stats = self.stage1(z, split, views, seed=info.seed)
            metrics.update(stage1_metrics)
            if info.step % p.health_every == 0:
                with section(self.timer, "health"), float32_region(z.device):
                    self.last_health = self._health(basis, zf, split)
                metrics.update(self.last_health)
        with section(self.timer, "stage2"):
            metrics.update(self.stage2(views, local_split, basis, info, shared=shared))
        metrics["loss"] = metrics["tc2/stage2_sse_query"]
        return metrics

    def shares_support_forward(self) -> bool:
        """Whether this step takes S's support rows from the stage-2 support forward (``share_support_forward``).

        It is exact only when the encoder treats samples independently: a BatchNorm that normalises with batch
        statistics makes a view's representation depend on the other views of its forward call, and the statistics
        forward (all N·m views, SPEC §3.10) and the inner forward (task k's support views only, AMB-TC-22) then
        see different batches. ``auto`` shares only where no such layer is active; ``always`` shares anyway (S
        then holds the support views under task-level BN statistics; docs/performance.md); ``never`` never shares.
        """
        mode = self.cfg.share_support_forward
        if not (self.use_calibration and self.bilevel) or mode == "never":
            return False
        return mode == "always" or not batch_coupled_layers(self.method)

    def statistics_forward(self, views, split: TaskSplit) -> tuple[torch.Tensor, SharedSupport | None]:
        """Z at θ for the batch statistics, [N, m, d] (or [N, m, T, d]), detached; and the shared support forward.

        Not shared: ONE no-grad forward of all N·m views (SPEC §3.10). Shared: each task's support views are
        embedded once WITH graph on detached leaves θ (task-level batches, as stage 2's inner forward, Eq. 6) and
        their detached rows go into Z; the query views get one no-grad forward. Either way every row of Z is a
        representation at θ.
        """
        method, m = self.method, self.n_views
        n_img = split.n_kept
        if not self.shares_support_forward():
            with torch.no_grad():
                z = method.embed(self._encoder_input(views.flatten(0, 1)))
            return z.view(n_img, m, *z.shape[1:]), None
        theta = detached_leaves(method.online_parameters())
        support = []
        for k in range(split.n_tasks):
            xs = split.support_views(views, k)                                      # [n, m', ...]
            zs = method.embed(self._encoder_input(xs.flatten(0, 1)), theta)
            support.append(zs.view(*xs.shape[:2], *zs.shape[1:]))
        images = torch.arange(n_img, device=split.query_idx.device)[:, None]
        query_views = views[images, split.query_idx]                                # [N, m-m', ...]
        with torch.no_grad():
            zq = method.embed(self._encoder_input(query_views.flatten(0, 1)))
        z = zq.new_empty(n_img, m, *zq.shape[1:])
        z[images, split.query_idx] = zq.view(n_img, m - split.support_idx.shape[1], *zq.shape[1:])
        for k, zs in enumerate(support):
            members = split.groups[k]
            z[members[:, None], split.support_idx[members]] = zs.detach().to(z.dtype)
        return z, SharedSupport(theta=theta, support=support)

    def _encoder_input(self, x):
        return encoder_input(x, self.channels_last and getattr(x, "is_cuda", False))

    def _warn_small_tasks(self, images_per_task: int) -> None:
        """Once per run: a whitening loss (Barlow Twins, VICReg) on tasks of n <= d images has a rank-deficient
        target, and measured on digits it trains a poor encoder (docs/results.md §5)."""
        dim = self.method.embed_dim
        if self.method.needs_more_images_than_dims and images_per_task <= dim and not self._warned_small_tasks:
            self._warned_small_tasks = True
            warnings.warn(f"{self.method.name}'s loss whitens its {dim}-dim embedding over each task's "
                          f"{images_per_task} images, a rank-deficient target (n <= d): raise train.batch_size, "
                          f"lower plugin.n_tasks or lower method.proj_output_dim so that batch / n_tasks > {dim}",
                          stacklevel=3)

    def make_views(self, images: torch.Tensor, seed: int, rows: torch.Tensor | None = None):
        """The m views per image of one step: m augmented views [N, m, C, H, W], or, for a generative method, one
        augmented view per image turned into m masked views by ``method.task_views`` (SPEC §3.2 G-SSL).
        Augmentation runs in float32 even under autocast."""
        if not self.generative:
            return self.augmented_views(images, self.n_views, seed, rows=rows)
        one_view = self.augmented_views(images, 1, seed)[:, 0]
        return self.method.task_views(one_view, self.n_views, torch.Generator().manual_seed(seed ^ _MASK_STREAM))

    def _health(self, basis, zf, split) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            lv = loss_v(basis, zf, reduction=self.cfg.reduction)
            health = health_metrics(basis, zf, self.weight_net, zf, lv, self.n_factors, self.cfg.reduction)
        return {f"tc2/{k}": v for k, v in health.items()}

    # ------------------------------------------------------------------ bookkeeping
    def epoch_summary(self, epoch: int) -> dict[str, float]:
        summary = dict(epoch_summary_dict(self.conflict))
        hits, total = int(self.inner_gain_hits[0]), self.inner_gain_hits[1]   # the epoch's one host sync for R8
        hits, total = self.distributed.sum_counts([hits, total])             # over all processes' tasks
        if total:
            summary["tc2/inner_gain_rate"] = hits / total
            if hits / total < 0.8:
                warnings.warn(f"epoch {epoch}: the inner step (Eq. 6) lowered the support loss in only "
                              f"{hits}/{total} tasks (SPEC R8 wants >= 80%); tune plugin.beta1", stacklevel=2)
        self.inner_gain_hits = [0, 0]
        if self.last_health:
            health = {k: float(v) for k, v in self.last_health.items()}
            summary.update(health)
            summary["tc2/health_warnings"] = float(len(self.check_health(health, epoch)))
        return summary

    def check_health(self, metrics: dict[str, float], epoch: int) -> list[str]:
        found = health_warnings({k.removeprefix("tc2/"): v for k, v in metrics.items() if k.startswith("tc2/")},
                                epoch)
        for message in found:
            warnings.warn(message, stacklevel=2)
        return found

    def extra_state(self) -> dict:
        state = {"factor_base_initialised": self.factor_base_initialised}
        if getattr(self, "stage1_optimizer", None) is not None:
            state["stage1_optimizer"] = self.stage1_optimizer.state_dict()
        return state

    def load_extra_state(self, state: dict) -> None:
        self.factor_base_initialised = bool(state.get("factor_base_initialised", False))
        if "stage1_optimizer" in state and getattr(self, "stage1_optimizer", None) is not None:
            self.stage1_optimizer.load_state_dict(state["stage1_optimizer"])


def _join_views(support_views, query_views):
    """A task's support and query views side by side on the view axis: tensors, or a method's view objects."""
    if isinstance(support_views, torch.Tensor):
        return torch.cat([support_views, query_views], dim=1)
    return support_views.cat(query_views, dim=1)


def _accumulate(total: dict | None, grads: dict) -> dict:
    if total is None:
        return {k: g.detach().clone() for k, g in grads.items()}
    for k, g in grads.items():
        total[k] += g.detach()
    return total


@PLUGINS.register("tc2")
class TC2(TaskPlugin):
    """Task Conflict Calibration: tasks + calibration + two-stage bi-level optimisation."""

    with_calibration = True


@PLUGINS.register("tasks")
class PlusT(TaskPlugin):
    """The paper's "+T" (Fig. 1): tasks and the Eq. 6-7 bi-level on raw representations, no calibration."""

    with_calibration = False

