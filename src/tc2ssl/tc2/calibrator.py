"""TC²'s calibrator: f_v, f_w, the batch statistics, the calibrated representation and its stage-1 update.

Per batch (docs/tc2.md has the equation-to-code table):

- statistics S = [mean; covariance] of the representations Z at θ (``tc2ssl.tc2.stats.batch_statistics``);
- f_v: V = f_v(S) [d, n_f], the task-conflict factors; f_w: W = f_w(z, V), the per-row weights;
- the calibrated representation ẑ = f_w(z)Vᵀ of the vector z', which is z ℓ2-normalised (``input_norm=l2``),
  z/s with s the batch RMS norm (``rms``; ẑ is then multiplied back by s, so calibration is scale-equivariant),
  or z itself (``none``) (D-TC-04);
- L_tc² = L_v + λ_s·L_w (Eqs. 1-3);
- stage 1 (Eqs. 4-5), the encoder fixed: a support step of f_v, f_w on L̄^s = (1/K)Σ_k L_ssl^s + L_tc², then a query
  step on L̄^q = (1/K)Σ_k L_sse^q + L_tc², through the bi-level engine (``tc2ssl.meta.functional.hypergradient``):
  ``stage1_mode=sequential`` steps from the adapted f' (Eq. 5 as written), ``fomaml`` applies ∇ at f' to f,
  ``maml`` differentiates through the support step (D-TC-09).

The task plug-in supplies the losses: the method's ``support_loss`` and its own ``query_loss``.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from tc2ssl.data.tasks import TaskSplit
from tc2ssl.errors import ConfigError
from tc2ssl.meta.functional import Params, grad_dict, hypergradient, sgd_step
from tc2ssl.methods.base import LossContext, sub_params
from tc2ssl.tc2.factor_net import FactorNet
from tc2ssl.tc2.health import gate_selectivity, health_metrics, subspace_metrics
from tc2ssl.tc2.losses import loss_tc2, loss_v, loss_w
from tc2ssl.tc2.stats import batch_statistics
from tc2ssl.tc2.weight_net import WeightNet

#: S and L_v of token-level representations use at most this many token rows (D-TC-29)
MAX_STATISTIC_TOKENS = 4096
#: the stream constant that derives the token subsample from the step seed
TOKEN_STREAM = 0x51E7
#: the pooled second moment of the health metrics is a running mean with this decay per batch
POOLED_DECAY = 0.95
#: the seed of the random regrouping that gate selectivity is measured against
SELECTIVITY_SEED = 0
#: plugin.view_agreement: the view agreement a_r is clamped to [AGREEMENT_FLOOR, 1] (so the noise-to-signal ratio
#: (1 − a)/a <= 19), and AGREEMENT_FLOOR is also the δ that keeps ω finite when every factor agrees perfectly
AGREEMENT_FLOOR = 0.05


@dataclass
class Calibration:
    """ẑ = s·f_w(z'/s)Vᵀ for rows z [R, d] with V = ``basis`` and f_w at ``phi`` (None: the live f_w): the
    ``calibrate`` callable the loss hooks receive (``LossContext.calibrate``) and the step's transform."""

    calibrator: "Calibrator"
    basis: torch.Tensor
    phi: Params | None = None

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """ẑ of one task's representations: views z [n, v, d] (same shape back) or rows [R, d] (their mean is the
        task context when f_w reads one; ``plugin.view_agreement`` needs the views)."""
        calibrator, d = self.calibrator, z.shape[-1]
        z_prepped = calibrator.prep(z)
        penalty = None
        if z.dim() == 3:
            penalty = calibrator.view_penalty(z_prepped, self.basis)
        elif calibrator.cfg.view_agreement:
            raise ValueError("plugin.view_agreement calibrates the views of a task: pass z as [images, views, d], "
                             f"got shape {tuple(z.shape)}")
        rows = z_prepped.reshape(-1, d)
        return calibrator.calibrated(rows, self.basis, self.phi, calibrator.context(rows), penalty).view(z.shape)


@dataclass
class Stage1Batch:
    """What the stage-1 objectives of one batch read.

    z_all:       [N, m, d] prepped representations at θ (or [N, m, T, d] token latents), detached.
    stats:       S of the statistic rows.
    split:       the batch's K tasks.
    stat_rows:   the token rows S and L_v use (None: all rows).
    row_tasks:   the task of every row [N·m(·T)] (the task of its image).
    context:     the task context of every row [N·m(·T), d] (None when f_w reads none).
    lw_rows:     rows of L_w per objective ("support", "query").
    views:       the step's views for a generative method's loss hooks (None otherwise).
    query_loss:  L_sse^q of one task (the plug-in's ``query_loss``).
    """

    z_all: torch.Tensor
    stats: torch.Tensor
    split: TaskSplit
    stat_rows: torch.Tensor | None
    row_tasks: torch.Tensor
    context: torch.Tensor | None
    lw_rows: dict[str, torch.Tensor]
    views: Any
    query_loss: Callable[..., torch.Tensor]

    @property
    def rows(self) -> torch.Tensor:
        """Every representation row [N·m(·T), d]."""
        return self.z_all.reshape(-1, self.z_all.shape[-1])


class Calibrator(nn.Module):
    """f_v and f_w with their stage-1 update; built by the TC² plug-in when ``plugin.calibration=true``."""

    def __init__(self, cfg, method, bilevel: bool, tasks_in_one_loss_call: bool):
        super().__init__()
        self.cfg = cfg
        object.__setattr__(self, "method", method)       # owned by the training loop, not checkpointed here
        self.bilevel = bilevel
        self.tasks_in_one_loss_call = tasks_in_one_loss_call
        self.input_norm = cfg.input_norm if cfg.input_norm != "auto" else ("l2" if method.cosine_based else "rms")
        self.scale = torch.ones(())  # s of input_norm=rms: the detached batch RMS norm of z (1 otherwise)
        dim = method.embed_dim
        self.n_factors = cfg.n_factors or max(1, dim // 2)
        if self.n_factors > dim:
            raise ConfigError(f"plugin.n_factors={self.n_factors} exceeds the representation dimension {dim}")
        if cfg.view_agreement and cfg.weight_mode != "shrink":
            raise ConfigError(f"plugin.view_agreement=true weights the soft threshold of weight_mode=shrink; got "
                              f"plugin.weight_mode={cfg.weight_mode} (use -p calibrated or plugin.weight_mode=shrink)")
        if cfg.view_agreement and method.generative:
            raise ConfigError(f"plugin.view_agreement=true needs views of whole images; {type(method).__name__} "
                              "calibrates token latents")
        self.factor_net = FactorNet(dim, self.n_factors, hidden=cfg.factor_hidden, mode=cfg.factor_mode,
                                    power_steps=cfg.factor_power_steps)
        self.weight_net = WeightNet(dim, self.n_factors, hidden=cfg.weight_hidden, mode=cfg.weight_mode,
                                    gate_bias_init=cfg.gate_bias_init, task_context=cfg.task_context)
        #: λ₁ of Eq. 2 for this batch: plugin.l1_coef, or l1_relative_coef × RMS(zV) (set at each stage 1)
        self.l1_value: torch.Tensor | float = cfg.l1_coef
        self.weight_net.threshold_scale = cfg.l1_coef / 2
        #: the running mean of Z_fᵀZ_f/R over batches (its top-n_f subspace is the pooled, batch-independent basis
        #: the health metrics compare V with); None before the first batch
        self.pooled_moment: torch.Tensor | None = None
        self.last_row_tasks: torch.Tensor | None = None   # the task of each statistic row of the last stage 1
        self.last_rows_per_image = 1                       # rows of one image in it (its views, or view tokens)
        self.last_n_tasks = 0
        self.stage1_optimizer = (torch.optim.Adam(self.parameter_dict().values(), lr=cfg.stage1_adam_lr)
                                 if cfg.stage1_optimizer == "adam" else None)
        self.factor_base_initialised = False   # plugin.factor_init=pca: set at the first stage 1 (checkpointed)
        self.frozen = False                    # the tc2_frozen control: stage 1 never updates f_v, f_w

    def parameter_dict(self) -> Params:
        """φ: the live parameters of f_v and f_w, named ``factor_net.*`` and ``weight_net.*``."""
        return {f"factor_net.{k}": v for k, v in self.factor_net.named_parameters()} | \
               {f"weight_net.{k}": v for k, v in self.weight_net.named_parameters()}

    # ------------------------------------------------------------------ ẑ (Eqs. 1-3)
    def prep(self, z: torch.Tensor) -> torch.Tensor:
        """z' = the vector that is calibrated: z ℓ2-normalised per row (l2), z/s (rms) or z (none)."""
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

    def calibrated(self, z_prepped: torch.Tensor, basis: torch.Tensor, phi: Params | None = None,
                   context: torch.Tensor | None = None, penalty: torch.Tensor | None = None) -> torch.Tensor:
        """ẑ in the scale the SSL loss expects: s·f_w(z/s)Vᵀ for rms (scale-equivariant), f_w(z)Vᵀ otherwise."""
        return self.scale * self.calibrate(z_prepped, basis, phi, context, penalty)

    def context(self, z_prepped: torch.Tensor, row_tasks: torch.Tensor | None = None,
                n_tasks: int = 0) -> torch.Tensor | None:
        """The task context of each row [R, d] (None unless ``plugin.task_context``): the detached mean of the rows
        of its task, the tasks given by ``row_tasks`` [R] with values in [0, ``n_tasks``) (None: all rows are one
        task)."""
        if not self.cfg.task_context:
            return None
        z = z_prepped.detach()
        if row_tasks is None:
            return z.mean(0, keepdim=True).expand_as(z)
        membership = F.one_hot(row_tasks, n_tasks).to(z.dtype)                      # [R, K]
        means = (membership.T @ z) / membership.sum(0).clamp_min(1)[:, None]          # [K, d]
        return means[row_tasks]

    def factor_penalty(self, z_views: torch.Tensor, basis: torch.Tensor, image_tasks: torch.Tensor | None = None,
                       n_tasks: int = 1) -> torch.Tensor | None:
        """ω [K, n_f] of ``plugin.view_agreement``, the per-task, per-factor weights of Eq. 2's ℓ1 term (a weighted
        LASSO), one row per task, from the views ``z_views`` [n, v, d]; None when the option is off.

        With c = zV (detached), factor r's view agreement in task k is
        a_kr = Σ_i Σ_{v≠w} c_ivr c_iwr / ((v − 1) Σ_i Σ_v c_ivr²) over the images i of task k: the share of the
        factor's energy that is the same in every view of an image (1 for a factor the task's views agree on, about
        0 for one that is view-specific noise). ρ_kr = (1 − a_kr)/a_kr (a clamped to [AGREEMENT_FLOOR, 1]) is the
        factor's noise-to-signal ratio in the task, and ω_kr = (ρ_kr + δ)/(mean_r ρ_kr + δ) with δ = AGREEMENT_FLOOR
        (mean 1 over the factors: the overall shrinkage stays the one λ₁ sets, and is moved from the factors the
        task's views agree on to those they do not; all factors equally consistent gives the plain LASSO, ω = 1).
        ``image_tasks`` [n]: each image's task in [0, ``n_tasks``) (None: one task).
        """
        if not self.cfg.view_agreement:
            return None
        if z_views.dim() != 3 or z_views.shape[1] < 2:
            raise ValueError("plugin.view_agreement needs at least 2 views of each image as [images, views, d], got "
                             f"shape {tuple(z_views.shape)}")
        n_images, n_views = z_views.shape[0], z_views.shape[1]
        coords = z_views.detach() @ basis.detach()                                      # [n, v, n_f]
        agreeing = coords.sum(1).square() - coords.square().sum(1)                     # Σ_{v≠w} c_v c_w [n, n_f]
        energy = (n_views - 1) * coords.square().sum(1)                                 # [n, n_f]
        if image_tasks is None:
            image_tasks = torch.zeros(n_images, dtype=torch.long, device=coords.device)
        membership = F.one_hot(image_tasks, n_tasks).to(coords.dtype)                   # [n, K]
        agreement = (membership.T @ agreeing) / (membership.T @ energy).clamp_min(torch.finfo(coords.dtype).tiny)
        agreement = agreement.clamp(AGREEMENT_FLOOR, 1.0)                                # [K, n_f]
        noise_to_signal = (1 - agreement) / agreement
        return (noise_to_signal + AGREEMENT_FLOOR) / (noise_to_signal.mean(1, keepdim=True) + AGREEMENT_FLOOR)

    def view_penalty(self, z_views: torch.Tensor, basis: torch.Tensor, image_tasks: torch.Tensor | None = None,
                     n_tasks: int = 1) -> torch.Tensor | None:
        """ω of every row of ``z_views`` [n, v, d] (image-major: [n·v, n_f]), from :meth:`factor_penalty`."""
        omega = self.factor_penalty(z_views, basis, image_tasks, n_tasks)
        if omega is None:
            return None
        if image_tasks is None:
            return omega.expand(z_views.shape[0] * z_views.shape[1], -1)
        return omega[image_tasks].repeat_interleave(z_views.shape[1], dim=0)

    def set_l1(self, z_rows: torch.Tensor, basis: torch.Tensor) -> None:
        """λ₁ for this batch (``plugin.l1_scale``) and the shrink threshold t₀ = λ₁/2 (the LASSO optimum for
        orthonormal V), from the prepped rows and the current V (both detached)."""
        if self.cfg.l1_scale == "relative":
            rms = (z_rows.detach() @ basis.detach()).square().mean().sqrt()
            self.l1_value = self.cfg.l1_relative_coef * rms
        else:
            self.l1_value = self.cfg.l1_coef
        self.weight_net.threshold_scale = self.l1_value / 2

    def factors(self, stats: torch.Tensor, phi: Params | None = None) -> torch.Tensor:
        """V = f_v(S) [d, n_f]."""
        if phi is None:
            return self.factor_net(stats)
        return functional_call(self.factor_net, sub_params(phi, "factor_net"), (stats,))

    def weights(self, z: torch.Tensor, basis: torch.Tensor, phi: Params | None = None,
                context: torch.Tensor | None = None, penalty: torch.Tensor | None = None) -> torch.Tensor:
        """W = f_w(z, V) [R, n_f] (``context``: the task context of each row, when f_w reads one; ``penalty``: ω of
        each row, :meth:`view_penalty`)."""
        if phi is None:
            return self.weight_net(z, basis, context, penalty)
        return functional_call(self.weight_net, sub_params(phi, "weight_net"), (z, basis, context, penalty))

    def calibrate(self, z: torch.Tensor, basis: torch.Tensor, phi: Params | None = None,
                  context: torch.Tensor | None = None, penalty: torch.Tensor | None = None) -> torch.Tensor:
        """ẑ = f_w(z) Vᵀ: the calibrated representation (the paper's answer to its question (iii))."""
        return self.weights(z, basis, phi, context, penalty) @ basis.T

    def loss_tc2(self, zf: torch.Tensor, basis: torch.Tensor, rows: torch.Tensor, phi: Params | None,
                 lv_rows: torch.Tensor | None = None, context: torch.Tensor | None = None,
                 penalty: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(L_tc², L_v, L_w): L_v on all rows (Eq. 1), or on ``lv_rows`` when given (token subsample), L_w on
        ``rows`` (Eq. 2; ``context`` [R, d]: the task context of every row of ``zf``; ``penalty`` [R, n_f]: ω of every
        row, the weighted LASSO of ``plugin.view_agreement``), L_tc² = L_v + λ_s·L_w (Eq. 3)."""
        p = self.cfg
        zero = zf.new_zeros(())
        z_lv = zf if lv_rows is None else zf[lv_rows]
        lv = loss_v(basis, z_lv, reduction=p.reduction) if p.use_loss_v else zero
        lw = zero
        if p.use_loss_w:
            basis_w = basis.detach() if p.detach_v_in_lw else basis  # "V is a pre-given matrix" (D-TC-05)
            z_rows = zf[rows]
            penalty_rows = None if penalty is None else penalty[rows]
            weights = self.weights(z_rows, basis_w, phi, None if context is None else context[rows], penalty_rows)
            lw = loss_w(z_rows, weights, basis_w, l1_coef=self.l1_value, reduction=p.reduction, penalty=penalty_rows)
        return loss_tc2(lv, lw, p.lam_s), lv, lw                                    # Eq. (3)

    # ------------------------------------------------------------------ stage 1 (Eqs. 4-5)
    def stage1(self, z_all: torch.Tensor, split: TaskSplit, views, seed: int,
               query_loss: Callable[..., torch.Tensor]) -> tuple[torch.Tensor, dict, torch.Tensor, torch.Tensor]:
        """Update f_v, f_w with the encoder fixed; return V* = f_v(S) (detached) for stage 2, the metrics, the
        statistic rows and S.

        z_all: [N, m, d] detached representations at θ (already prepped), or [N, m, T, d] token latents of a
        generative method, whose S and L_v use at most ``MAX_STATISTIC_TOKENS`` token rows drawn with ``seed``.
        views: the step's views; the loss hooks of generative methods get each task's views in ``ctx.views``.
        query_loss: L_sse^q of one task, ``query_loss(z_query, z_support, params, xs, xq, calibrate)``.
        """
        batch = self._stage1_batch(z_all, split.to(z_all.device), views, seed, query_loss)
        z_stats = batch.rows if batch.stat_rows is None else batch.rows[batch.stat_rows]
        if self.cfg.factor_init == "pca" and not self.factor_base_initialised:  # V0 from the first batch
            self.factor_net.init_base_from(z_stats)
            self.factor_base_initialised = True
        with torch.no_grad():
            self.set_l1(z_stats, self.factor_net(batch.stats))
        self.last_row_tasks = batch.row_tasks if batch.stat_rows is None else None
        self.last_rows_per_image = batch.row_tasks.shape[0] // batch.z_all.shape[0]
        self.last_n_tasks = split.n_tasks
        if self.frozen:
            metrics = {}
        else:
            with torch.enable_grad():              # stage 1 differentiates, whatever the caller's grad mode
                metrics = self._update(batch)
        with torch.no_grad():
            basis = self.factor_net(batch.stats).detach()                          # V* for stage 2 (D-TC-17)
        return basis, metrics, z_stats, batch.stats

    def _stage1_batch(self, z_all, split: TaskSplit, views, seed: int, query_loss) -> Stage1Batch:
        n_img, m, d = z_all.shape[0], z_all.shape[1], z_all.shape[-1]
        zf = z_all.reshape(-1, d)                                                   # [N·m(·T), d]
        stat_rows = None
        if z_all.dim() == 4 and zf.shape[0] > MAX_STATISTIC_TOKENS:                 # token rows: subsample
            generator = torch.Generator().manual_seed(seed ^ TOKEN_STREAM)
            stat_rows = torch.randperm(zf.shape[0], generator=generator)[:MAX_STATISTIC_TOKENS]
            stat_rows = stat_rows.to(zf.device, non_blocking=True)
        stats = batch_statistics(zf if stat_rows is None else zf[stat_rows])
        rows = torch.arange(zf.shape[0], device=zf.device).view(n_img, m, -1)      # [N, m, rows per view]
        images = torch.arange(n_img, device=zf.device)[:, None]
        task_of_image = torch.zeros(n_img, dtype=torch.long, device=zf.device)
        task_of_image[split.groups.reshape(-1)] = torch.arange(split.n_tasks, device=zf.device).repeat_interleave(
            split.task_size)
        row_tasks = task_of_image[:, None].expand(n_img, rows.shape[1] * rows.shape[2]).reshape(-1)
        lw_rows = {"support": rows[images, split.support_idx].reshape(-1),
                   "query": rows[images, split.query_idx].reshape(-1)}
        if self.cfg.lw_rows == "all":
            lw_rows = {"support": rows.reshape(-1), "query": rows.reshape(-1)}
        return Stage1Batch(z_all=z_all, stats=stats, split=split, stat_rows=stat_rows, row_tasks=row_tasks,
                           context=self.context(zf, row_tasks, split.n_tasks), lw_rows=lw_rows,
                           views=views if self.method.generative else None, query_loss=query_loss)

    def _update(self, batch: Stage1Batch) -> dict[str, torch.Tensor]:
        """One stage-1 update of φ: the support step (Eq. 4) then the query step (Eq. 5); returns the metrics."""
        p = self.cfg
        phi = self.parameter_dict()
        lr_support = {k: (p.alpha1 if k.startswith("factor_net.") else p.alpha2) for k in phi}
        lr_query = {k: (p.alpha3 if k.startswith("factor_net.") else p.alpha4) for k in phi}
        loss_s, (ssl_s, lv_s, lw_s) = self.objective(phi, batch, "support")       # Eq. (4) objective L̄^s
        metrics = {"tc2/stage1_ssl_support": ssl_s, "tc2/loss_v": lv_s, "tc2/loss_w": lw_s}
        if not self.bilevel:                                                        # Table-12 "no bi-level"
            self._write(sgd_step(_detached(phi), self._clip(grad_dict(loss_s, phi)), lr_support))
            return metrics
        if self.stage1_optimizer is not None:                                     # option: Adam, two steps
            self._adam_step(phi, self._clip(grad_dict(loss_s, phi)))
            loss_q, (ssl_q, lv_q, lw_q) = self.objective(phi, batch, "query")
            self._adam_step(phi, self._clip(grad_dict(loss_q, phi)))
        else:                             # f' = f − α∇L̄^s (Eq. 4); ∇L̄^q at f' (first order) or through f' (maml)
            result = hypergradient(partial(self.objective, batch=batch, which="query"),
                                   partial(self.objective_value, batch=batch, which="support"), phi, lr=lr_support,
                                   mode="exact" if p.stage1_mode == "maml" else "first_order",
                                   first_inner_loss=loss_s, has_aux=True, inner_grad_transform=self._clip)
            ssl_q, lv_q, lw_q = result.outer_aux
            start = result.adapted if p.stage1_mode == "sequential" else _detached(phi)   # Eq. (5): f = f' − α∇
            self._write(sgd_step(start, self._clip(result.grads), lr_query))
        metrics.update({"tc2/stage1_sse_query": ssl_q, "tc2/loss_v_query": lv_q, "tc2/loss_w_query": lw_q})
        return metrics

    def objective(self, phi: Params, batch: Stage1Batch, which: str) -> tuple[torch.Tensor, tuple]:
        """L̄^s (``which="support"``, Eq. 4) or L̄^q (``"query"``, Eq. 5) at φ = ``phi``, and its detached parts
        (the SSL term, L_v, L_w): ``stage1_ssl_weight``·(1/K)Σ_k L_k + L_tc²."""
        z_all, d = batch.z_all, batch.z_all.shape[-1]
        basis = self.factors(batch.stats, phi)
        support_only = which == "support" and self.bilevel   # the bi-level support objective reads no query rows
        image_tasks, n_tasks = batch.row_tasks.view(z_all.shape[0], -1)[:, 0], batch.split.n_tasks
        if support_only:
            images = torch.arange(z_all.shape[0], device=z_all.device)[:, None]
            z_support = z_all[images, batch.split.support_idx]                     # [N, m', (T,) d], batch order
            context = None
            if batch.context is not None:
                context = batch.context.view(z_all.shape)[images, batch.split.support_idx].reshape(-1, d)
            omega = self.factor_penalty(z_support, basis, image_tasks, n_tasks)    # from the support views only
            penalty = None if omega is None else omega[image_tasks].repeat_interleave(z_support.shape[1], dim=0)
            z_hat = self.calibrated(z_support.reshape(-1, d), basis, phi, context, penalty).view(z_support.shape)
        else:            # calibration is row-wise: ONE f_w call over the rows of all K tasks
            omega = self.factor_penalty(z_all, basis, image_tasks, n_tasks)
            penalty = None if omega is None else omega[batch.row_tasks]
            z_hat = self.calibrated(batch.rows, basis, phi, batch.context, penalty).view(z_all.shape)  # [N, m, (T,) d]
        calibration = Calibration(self, basis, phi)
        tasks = [None] if self.tasks_in_one_loss_call else range(batch.split.n_tasks)
        losses = [self._task_loss(task, z_hat, support_only, batch, calibration) for task in tasks]
        ssl = torch.stack(losses).mean()                                            # (1/K)Σ_k in Eqs. 4-5
        tc2, lv, lw = self.loss_tc2(batch.rows, basis, batch.lw_rows[which], phi, lv_rows=batch.stat_rows,
                                    context=batch.context, penalty=None if omega is None else omega[batch.row_tasks])
        return self.cfg.stage1_ssl_weight * ssl + tc2, (ssl.detach(), lv.detach(), lw.detach())

    def objective_value(self, phi: Params, batch: Stage1Batch, which: str) -> torch.Tensor:
        """The objective alone (the engine's inner loss)."""
        return self.objective(phi, batch, which)[0]

    def _task_loss(self, task: int | None, z_hat: torch.Tensor, support_only: bool, batch: Stage1Batch,
                   calibration: Calibration) -> torch.Tensor:
        """Task k's SSL loss on calibrated rows (task None: all K tasks' rows as one task, the same number when
        ``tasks_in_one_loss_call``). ``z_hat``: the support views' rows when ``support_only``, else all views'."""
        split, views = batch.split, batch.views
        members = split.members(task)
        xs = None if views is None else split.support_views(views, task)
        if support_only:
            return self.method.support_loss(z_hat[members], LossContext(views=xs, calibrate=calibration))
        if not self.bilevel:                         # joint variant: the SSL loss over all views of the task
            joint_views = None if views is None else views[members]
            return self.method.support_loss(z_hat[members], LossContext(views=joint_views, calibrate=calibration))
        xq = None if views is None else split.query_views(views, task)
        return batch.query_loss(split.query_views(z_hat, task), split.support_views(z_hat, task), None, xs, xq,
                                calibration)

    def _clip(self, grads: Params) -> Params:
        """Scale a stage-1 gradient to global norm <= plugin.stage1_grad_clip (0 = off, the literal update)."""
        limit = self.cfg.stage1_grad_clip
        if not limit:
            return grads
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()]))
        factor = (limit / (norm + 1e-12)).clamp(max=1.0)
        return {k: g * factor for k, g in grads.items()}

    def _write(self, new: Params) -> None:
        live = self.parameter_dict()
        with torch.no_grad():
            for k, v in new.items():
                live[k].copy_(v)

    def _adam_step(self, phi: Params, grads: Params) -> None:
        for k, t in phi.items():
            t.grad = grads[k].detach()
        self.stage1_optimizer.step()
        self.stage1_optimizer.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------ health and state
    def health(self, basis: torch.Tensor, zf: torch.Tensor) -> dict[str, torch.Tensor]:
        """The calibration's health metrics (``tc2ssl.tc2.health``) for V = ``basis`` on rows ``zf``."""
        with torch.no_grad():
            lv = loss_v(basis, zf, reduction=self.cfg.reduction)
            grouped = self.last_row_tasks is not None and self.last_row_tasks.shape[0] == zf.shape[0]
            penalty = self._row_penalty(zf, basis, self.last_row_tasks) if grouped else None
            health = health_metrics(basis, zf, self.weight_net, zf, lv, self.n_factors, self.cfg.reduction,
                                    penalty=penalty)
            moment = zf.float().T @ zf.float() / zf.shape[0]                       # this batch's Z_fᵀZ_f / R
            pooled_moment = moment if self.pooled_moment is None else self.pooled_moment.to(moment)
            pooled = torch.linalg.eigh(pooled_moment).eigenvectors[:, -self.n_factors:]   # fitted on past batches
            health |= subspace_metrics(basis, zf, pooled)
            self.pooled_moment = moment if self.pooled_moment is None else \
                POOLED_DECAY * pooled_moment + (1 - POOLED_DECAY) * moment
            if grouped and self.weight_net.mode != "free":
                def gates_of(row_tasks: torch.Tensor) -> torch.Tensor:     # the gates under a grouping of the rows
                    return self.weight_net.gates(zf, basis, self.context(zf, row_tasks, self.last_n_tasks),
                                                 self._row_penalty(zf, basis, row_tasks))

                health["gate_selectivity"] = gate_selectivity(gates_of(self.last_row_tasks), self.last_row_tasks,
                                                              self.last_n_tasks,
                                                              torch.Generator().manual_seed(SELECTIVITY_SEED),
                                                              rows_per_image=self.last_rows_per_image,
                                                              gates_of=gates_of)
        return {f"tc2/{k}": v for k, v in health.items()}

    def _row_penalty(self, zf: torch.Tensor, basis: torch.Tensor, row_tasks: torch.Tensor) -> torch.Tensor | None:
        """ω of the statistic rows ``zf`` (image-major, ``last_rows_per_image`` views each) grouped by ``row_tasks``."""
        if not self.cfg.view_agreement:
            return None
        image_tasks = row_tasks.view(-1, self.last_rows_per_image)[:, 0]
        return self.view_penalty(zf.view(image_tasks.shape[0], self.last_rows_per_image, -1), basis, image_tasks,
                                 self.last_n_tasks)

    def extra_state(self) -> dict:
        state = {"factor_base_initialised": self.factor_base_initialised}
        if self.stage1_optimizer is not None:
            state["stage1_optimizer"] = self.stage1_optimizer.state_dict()
        return state

    def load_extra_state(self, state: dict) -> None:
        self.factor_base_initialised = bool(state.get("factor_base_initialised", False))
        if "stage1_optimizer" in state and self.stage1_optimizer is not None:
            self.stage1_optimizer.load_state_dict(state["stage1_optimizer"])


def _detached(params: Params) -> Params:
    return {k: v.detach() for k, v in params.items()}
