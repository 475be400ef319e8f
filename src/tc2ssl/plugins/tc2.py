"""TC², Task Conflict Calibration (AAAI 2026): the generic bi-level task step plus TC²'s calibrator.

Per batch, on top of the task step of ``tc2ssl.plugins.bilevel`` (tasks, views, the bi-level update):

1. statistics: one no-grad forward of all N·m views at θ gives Z (S = [mean; covariance]). Where it is exact (no
   batch-statistics BatchNorm; ``plugin.share_support_forward``), the support rows of Z come instead from each
   task's support forward at θ, which the bi-level step reuses with its graph for Eq. 6 (``statistics_forward``).
2. stage 1 (Eqs. 4-5), encoder fixed: the calibrator's f_v and f_w take a support step and a query step
   (``tc2ssl.tc2.calibrator``).
3. stage 2 (Eqs. 6-7): the generic bi-level step on the calibrated representations ẑ = f_w(z)V*ᵀ with f_v, f_w
   held (gradients flow through them into the encoder, never into them).

``plugin.calibration=false`` gives the bi-level step on raw representations, as "+T" (``plugin.name=tasks``).
docs/tc2.md maps every equation to its code; docs/decisions.md lists the choices the paper leaves open.
"""
from __future__ import annotations

import warnings

import torch

from tc2ssl.data.tasks import TaskSplit
from tc2ssl.distributed import TaskShard
from tc2ssl.meta.functional import detached_leaves, held
from tc2ssl.plugins.base import PLUGINS, StepInfo
from tc2ssl.plugins.bilevel import (
    BilevelTaskPlugin,
    SharedSupport,
    StepPreparation,
    batch_coupled_layers,
    identity,
)
from tc2ssl.precision import at_least_float32, float32_region
from tc2ssl.tc2.calibrator import Calibration, Calibrator
from tc2ssl.tc2.health import health_warnings
from tc2ssl.timing import section


@PLUGINS.register("tc2")
class TC2(BilevelTaskPlugin):
    """Task Conflict Calibration: tasks + calibration + two-stage bi-level optimisation."""

    reads_plus_t_mode = False

    def __init__(self, cfg, method, view_maker):
        super().__init__(cfg, method, view_maker)
        self.use_calibration = self.cfg.calibration
        # stage 1 evaluates the K tasks' SSL losses in one call when that is the same number (Eqs. 4-5: a mean
        # over tasks of per-task means): per-view losses and no layer that couples the samples of a call
        in_one_call = method.per_view_losses and not batch_coupled_layers(method)
        self.calibrator = (Calibrator(self.cfg, method, self.bilevel, in_one_call) if self.use_calibration
                           else None)
        self.last_health: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ before the bi-level step
    def prepare_step(self, views, split: TaskSplit, shard: TaskShard, info: StepInfo) -> StepPreparation:
        """Z at θ, stage 1 (updates f_v, f_w) and the health metrics; the calibration with V* for stage 2."""
        if self.calibrator is None:
            return StepPreparation()
        z, shared = self.batch_representations(views, split, shard)
        with section(self.timer, "stage1"), float32_region(z.device):               # S, f_v, f_w, L_v in fp32
            basis, metrics, zf, _ = self.stage1(z, split, views, seed=info.seed)
        if info.step % self.cfg.health_every == 0:
            with section(self.timer, "health"), float32_region(z.device):
                self.last_health = self.calibrator.health(basis, zf)
            metrics.update(self.last_health)
        return StepPreparation(transform=Calibration(self.calibrator, basis), shared=shared, metrics=metrics)

    def batch_representations(self, views, split: TaskSplit,
                              shard: TaskShard) -> tuple[torch.Tensor, SharedSupport | None]:
        """Z at θ of all N images in batch order, at least float32 and prepped (``Calibrator.prep``, its scale s
        set from this batch), and the shared support forward (None when not shared)."""
        with section(self.timer, "statistics_forward"), self.distributed.global_batch_norm(self.method):
            z, shared = self.statistics_forward(views, shard.split.to(split.groups.device))
            z = shard.gather_images(z)                                              # all N images, batch order
        with float32_region(z.device):
            z = at_least_float32(z)
            self.calibrator.set_scale(z)
            return self.calibrator.prep(z), shared

    def stage1(self, z_all: torch.Tensor, split: TaskSplit, views, seed: int = 0):
        """Stage 1 (Eqs. 4-5) on prepped representations ``z_all``: see ``Calibrator.stage1``."""
        return self.calibrator.stage1(z_all, split, views, seed, self.query_loss)

    # ------------------------------------------------------------------ the bi-level step (stage 2)
    def bilevel_step(self, views, split: TaskSplit, info: StepInfo,
                     preparation: StepPreparation | None = None) -> dict[str, torch.Tensor]:
        """The generic step with f_v and f_w held: gradients flow through them into z, never into them."""
        if self.calibrator is None:
            return super().bilevel_step(views, split, info, preparation)
        with held(self.calibrator.parameters()):
            return super().bilevel_step(views, split, info, preparation)

    def stage2(self, views, split: TaskSplit, basis: torch.Tensor | None, info: StepInfo,
               shared: SharedSupport | None = None) -> dict[str, torch.Tensor]:
        """Stage 2 (Eqs. 6-7) alone, with the calibration of V = ``basis`` (None: no calibration)."""
        transform = identity if basis is None else Calibration(self.calibrator, basis)
        return self.bilevel_step(views, split, info, StepPreparation(transform=transform, shared=shared))

    # ------------------------------------------------------------------ the statistics forward
    def shares_support_forward(self) -> bool:
        """Whether this step takes S's support rows from the stage-2 support forward (``share_support_forward``).

        It is exact only when the encoder treats samples independently: a BatchNorm that normalises with batch
        statistics makes a view's representation depend on the other views of its forward call, and the statistics
        forward (all N·m views) and the inner forward (task k's support views only, D-TC-22) then see different
        batches. ``auto`` shares only where no such layer is active; ``always`` shares anyway (S then holds the
        support views under task-level BN statistics; docs/performance.md); ``never`` never shares.
        """
        mode = self.cfg.share_support_forward
        if not (self.use_calibration and self.bilevel) or mode == "never":
            return False
        return mode == "always" or not batch_coupled_layers(self.method)

    def statistics_forward(self, views, split: TaskSplit) -> tuple[torch.Tensor, SharedSupport | None]:
        """Z at θ for the batch statistics, [N, m, d] (or [N, m, T, d]), detached; and the shared support forward.

        Not shared: ONE no-grad forward of all N·m views. Shared: each task's support views are embedded once WITH
        graph on detached leaves θ (task-level batches, as stage 2's inner forward, Eq. 6) and their detached rows
        go into Z; the query views get one no-grad forward. Either way every row of Z is a representation at θ.
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

    # ------------------------------------------------------------------ bookkeeping
    def epoch_summary(self, epoch: int) -> dict[str, float]:
        summary = super().epoch_summary(epoch)
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
        return {} if self.calibrator is None else self.calibrator.extra_state()

    def load_extra_state(self, state: dict) -> None:
        if self.calibrator is not None:
            self.calibrator.load_extra_state(state)
