"""The generic bi-level task step, and ``plugin.name=tasks`` (the paper's "+T", Fig. 1), which is exactly it.

Per batch (docs/architecture.md draws it):

1. tasks: the batch is split into K tasks; each image has m views, m' to the support set and m − m' to the query
   set (``tc2ssl.data.tasks``). With several processes each takes K/W whole tasks (``tc2ssl.distributed``).
2. ``prepare_step``: what a subclass computes before the bi-level step; here nothing. It returns the
   representation transform of the step (TC²: the calibration after its stage 1; here the identity) and,
   optionally, the support forward at θ already made (``SharedSupport``).
3. the bi-level step, per task k: θ^k = θ − β₁∇L_ssl^s(T(f_θ(support_k))) (the inner step, Eq. 6), then the
   gradient of L_sse^q(T(f_{θ^k}(query_k))) (the outer loss, Eq. 7) with respect to θ, first order, by finite
   differences or exactly, through the engine (``tc2ssl.meta.functional.hypergradient``); summed over the tasks
   (mean under ``plugin.task_reduction=mean``) and handed to the loop's optimiser in ``.grad``.

Generative methods (a method with ``generative = True``, e.g. MAE): each image gets ONE augmented view and
``method.task_views`` turns it into m masked views; the support of a task holds m' masked views plus the unmasked
image (the reconstruction target, carried by the views), the query the other m − m' (D-TC-28).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import torch
import torch.nn as nn

from tc2ssl.data.tasks import TaskSplit, build_tasks, pixel_descriptor
from tc2ssl.diagnostics.conflict import ConflictTracker, epoch_summary_dict, task_gradient_cosines
from tc2ssl.distributed import TaskShard
from tc2ssl.errors import ConfigError
from tc2ssl.meta.functional import (HypergradResult, Params, accumulate, assign_grads, cloned_buffers, grad_dict,
                                    hypergradient)
from tc2ssl.methods.base import LossContext
from tc2ssl.plugins.base import PLUGINS, Plugin, StepInfo
from tc2ssl.precision import encoder_input
from tc2ssl.tc2.losses import proto_mse_loss
from tc2ssl.timing import SectionTimer, section

#: stream constants that derive the task split and the masks from the step seed
TASK_STREAM, MASK_STREAM = 0x7A5C, 0x3D1F
#: the share of tasks whose inner step must lower the support loss (warned about per epoch; check R8)
MIN_INNER_GAIN_RATE = 0.8


def identity(z: torch.Tensor) -> torch.Tensor:
    """The representation transform of a step without calibration."""
    return z


@dataclass
class SharedSupport:
    """The support representations at θ computed once per step and used twice (TC²'s ``share_support_forward``):
    detached, as rows of the batch statistics; with their graph on ``theta``, as the inner loss of Eq. 6.

    theta:   detached leaves of θ (``detached_leaves``) the forwards ran on.
    support: per task k, f_θ(support views of k) [n, m', d] (or [n, m', T, d]), with graph.
    """

    theta: Params
    support: list[torch.Tensor]


@dataclass
class StepPreparation:
    """What ``prepare_step`` hands the bi-level step: the representation transform T (one task's views [n, v, d] ->
    [n, v, d], or rows [R, d] -> [R, d]; it must accept both),
    an optional shared support forward, and metrics."""

    transform: Callable[[torch.Tensor], torch.Tensor] = identity
    shared: SharedSupport | None = None
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class Task:
    """One task's views: ``support`` [n, m', ...] and ``query`` [n, m − m', ...]; ``index`` = k."""

    index: int
    support: Any
    query: Any


def batch_coupled_layers(module: nn.Module) -> list[str]:
    """Names of the sub-modules whose output for one sample depends on the other samples of the call: BatchNorm
    layers normalising with batch statistics (training mode, or no running statistics)."""
    return [name for name, layer in module.named_modules()
            if isinstance(layer, nn.modules.batchnorm._BatchNorm)
            and (layer.training or not layer.track_running_stats or layer.running_mean is None)]


@PLUGINS.register("tasks")
class BilevelTaskPlugin(Plugin):
    """K tasks per batch and the bi-level update of Eqs. 6-7 on raw representations ("+T"); the base of TC²."""

    uses_tasks = True
    supports_distributed = True
    #: whether ``plugin.plus_t_mode=joint`` (the joint multi-task reading of "+T", D-TC-27) applies
    reads_plus_t_mode = True

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
        if p.conflict_every and k < 2:   # the inter-task gradient cosine needs a pair of tasks
            raise ConfigError(f"plugin.conflict_every={p.conflict_every} measures the gradient conflict between tasks, "
                              f"which needs plugin.n_tasks >= 2, got {k}: set plugin.conflict_every=0 with one task")
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
        self.generative = method.generative
        if self.generative and p.query_loss == "proto_mse":
            raise ConfigError(f"plugin.query_loss=proto_mse compares embeddings with embedding anchors; "
                              f"{method.name}'s anchors are images: use plugin.query_loss=default or native")
        # Table-12 "no bi-level", and "+T" in its joint multi-task reading
        self.bilevel = p.bilevel and not (self.reads_plus_t_mode and p.plus_t_mode == "joint")
        self.conflict = ConflictTracker()
        self.inner_gain_hits = [0, 0]  # (tasks where the inner step lowered L_ssl^s, tasks measured) this epoch
        self._warned_small_tasks = False
        self.timer: SectionTimer | None = None  # set by benchmarks/throughput.py to time the parts of a step

    # ------------------------------------------------------------------ the step
    def training_step(self, images: torch.Tensor, info: StepInfo) -> dict[str, torch.Tensor]:
        p = self.cfg
        images = self._drop_remainder(images)
        split = build_tasks(images.shape[0], p.n_tasks, p.n_views, p.n_support_views,
                            torch.Generator().manual_seed(info.seed ^ TASK_STREAM),
                            remainder=p.remainder, min_support=self.method.min_support_views,
                            task_features=pixel_descriptor(images) if p.task_split == "pixel_clusters" else None)
        self._warn_small_tasks(images.shape[0] // p.n_tasks)
        shard = self.distributed.task_shard(split)          # this process's tasks and images (one process: all)
        split, local_split = split.to(images.device), shard.split.to(images.device)
        with section(self.timer, "augmentation"):
            views = self.make_views(images, info.seed, rows=shard.images)           # [n, m, ...] of shard.images
        preparation = self.prepare_step(views, split, shard, info)
        with section(self.timer, "stage2"):
            metrics = {**preparation.metrics, **self.bilevel_step(views, local_split, info, preparation)}
        metrics["loss"] = metrics["tc2/stage2_sse_query"]
        if split.between_share is not None:
            metrics["tasks/between_share"] = torch.tensor(split.between_share)
        return metrics

    def prepare_step(self, views, split: TaskSplit, shard: TaskShard, info: StepInfo) -> StepPreparation:
        """Before the bi-level step: ``views`` of this process's images, ``split`` all K tasks of the batch,
        ``shard`` this process's part (``shard.split`` indexes ``views``). "+T": nothing to prepare."""
        return StepPreparation()

    def bilevel_step(self, views, split: TaskSplit, info: StepInfo,
                     preparation: StepPreparation | None = None) -> dict[str, torch.Tensor]:
        """Set the meta-gradient of Eq. 7 on ``method.online_parameters()`` for the tasks of ``split`` (this
        process's); return the step's metrics."""
        p = self.cfg
        preparation = preparation or StepPreparation()
        theta = self.method.online_parameters()
        health_step = info.step % max(1, p.health_every) == 0
        meta_grads: Params | None = None
        task_support_grads, inner_losses, query_losses = [], [], []
        for k in range(split.n_tasks):
            task = Task(k, split.support_views(views, k), split.query_views(views, k))
            if not self.bilevel:                                                       # Table-12 "no bi-level"
                grads, joint_loss = self.joint_task_gradient(views[split.groups[k]], theta, preparation.transform)
                task_support_grads.append(grads)
                query_losses.append(joint_loss)
                meta_grads = accumulate(meta_grads, grads)
                continue
            result = self.task_hypergradient(task, theta, preparation)
            task_support_grads.append(result.inner_grads)
            inner_losses.append(result.inner_losses[0].detach())
            query_losses.append(result.outer_loss.detach())
            meta_grads = accumulate(meta_grads, result.grads)
            if health_step:
                self._count_inner_gain(task, result, preparation.transform)

        scale = 1.0 / split.n_tasks_total if p.task_reduction == "mean" else 1.0   # Eq. (7): Σ_k (or mean)
        assign_grads(theta, {k: g * scale for k, g in meta_grads.items()})
        metrics = {"tc2/stage2_sse_query": torch.stack(query_losses).mean()}
        if inner_losses:
            metrics["tc2/stage2_ssl_support"] = torch.stack(inner_losses).mean()
        if p.conflict_every and info.step % p.conflict_every == 0:
            metrics.update(self._conflict_metrics(task_support_grads, list(theta), info))
        return metrics

    def task_hypergradient(self, task: Task, theta: Params, preparation: StepPreparation) -> HypergradResult:
        """One task's hypergradient d/dθ L_sse^q(θ^k) with θ^k = θ − β₁∇L_ssl^s(θ) (Eqs. 6-7), through the engine
        in ``plugin.stage2_mode``; ``outer_aux`` holds the support embeddings at θ^k (the query anchors)."""
        p = self.cfg
        transform = preparation.transform
        inner = partial(self.inner_loss, support_views=task.support, transform=transform)
        probe = partial(self.probe_loss, support_views=task.support, transform=transform)
        outer = partial(self.outer_loss, support_views=task.support, query_views=task.query, transform=transform)
        params, first = theta, None
        shared = preparation.shared
        if shared is not None:                       # Eq. (6) objective on the shared forward at θ
            params = shared.theta
            first = self.method.support_loss(self.transform_views(shared.support[task.index], transform),
                                             LossContext(params=shared.theta, views=task.support, calibrate=transform))
        return hypergradient(outer, inner, params, lr=p.beta1, mode=p.stage2_mode, fd_radius=p.fd_radius,
                             first_inner_loss=first, probe_loss_fn=probe, has_aux=True)

    # ------------------------------------------------------------------ the losses of one task
    def embed_views(self, params: Params | None, views, transform: Callable) -> torch.Tensor:
        """views [n, v, ...] -> T(f_params(views)) [n, v, d] (or [n, v, T, d])."""
        n, v = views.shape[:2]
        z = self.method.embed(self._encoder_input(views.flatten(0, 1)), params)
        return self.transform_views(z.view(n, v, *z.shape[1:]), transform)

    def transform_views(self, z: torch.Tensor, transform: Callable) -> torch.Tensor:
        """z [n, v, d] -> T(z) [n, v, d] (T sees each image's views, e.g. for TC²'s view agreement); token latents
        [n, v, T, d] -> T of their rows, same shape."""
        if z.dim() == 3:
            return transform(z)
        return transform(z.reshape(-1, self.method.embed_dim)).view(z.shape)

    def inner_loss(self, params: Params, support_views, transform: Callable) -> torch.Tensor:
        """L_ssl^s of Eq. (6) at ``params``."""
        ctx = LossContext(params=params, views=support_views, calibrate=transform)
        return self.method.support_loss(self.embed_views(params, support_views, transform), ctx)

    def probe_loss(self, params: Params, support_views, transform: Callable) -> torch.Tensor:
        """The inner loss that the finite-difference probes evaluate: on scratch copies of the BatchNorm buffers
        of the modules θ routes to, so that the probes leave the running statistics alone."""
        children = {name.split(".", 1)[0] for name in params}
        return self.inner_loss({**params, **cloned_buffers(self.method, children)}, support_views, transform)

    def outer_loss(self, params: Params, support_views, query_views,
                   transform: Callable) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_sse^q summand of Eq. (7) at ``params``, the support embeddings at ``params`` it anchored on)."""
        with torch.no_grad():
            z_support = self.embed_views(params, support_views, transform)          # anchors at θ^k (stop-grad)
        z_query = self.embed_views(params, query_views, transform)
        return self.query_loss(z_query, z_support, params, support_views, query_views, transform), z_support

    def query_loss(self, z_query, z_support, params, support_views, query_views, transform) -> torch.Tensor:
        """L_sse^q of one task: query embeddings against anchors built from the same task's support views
        (``plugin.query_loss``: the method's default, its native loss, or proto_mse)."""
        mode = self.cfg.query_loss
        if mode == "native":
            both = None if support_views is None else _join_views(support_views, query_views)
            return self.method.native_query_loss(z_query, z_support,
                                                 LossContext(params=params, views=both, calibrate=transform))
        anchors = self.method.anchors(z_support, LossContext(params=params, views=support_views,
                                                             calibrate=transform))
        if mode == "proto_mse":
            return proto_mse_loss(z_query, anchors)
        return self.method.query_loss(z_query, anchors,
                                      LossContext(params=params, views=query_views, calibrate=transform))

    def joint_task_gradient(self, task_views, theta: Params, transform: Callable) -> tuple[Params, torch.Tensor]:
        """Table 12's "no bi-level": the SSL loss over all m views of the task, its gradient at θ and value."""
        joint = self.method.support_loss(self.embed_views(None, task_views, transform),
                                         LossContext(views=task_views, calibrate=transform))
        return grad_dict(joint, theta), joint.detach()

    # ------------------------------------------------------------------ diagnostics
    def _count_inner_gain(self, task: Task, result: HypergradResult, transform: Callable) -> None:
        """Does the inner step help? L_ssl^s(θ^k) < L_ssl^s(θ), on the support embeddings at θ^k that the outer
        loss anchored on (``result.outer_aux``). A tensor sum: no host sync in the step."""
        with torch.no_grad():
            after = self.method.support_loss(result.outer_aux, LossContext(params=result.adapted, views=task.support,
                                                                           calibrate=transform))
        self.inner_gain_hits[0] = self.inner_gain_hits[0] + (after < result.inner_losses[0]).long()
        self.inner_gain_hits[1] += 1

    def _conflict_metrics(self, task_grads: list[Params], names: list[str], info: StepInfo) -> dict:
        """Inter-task cosines of the K tasks' support gradients (all processes' tasks)."""
        if self.cfg.conflict_params != "all":
            names = self.method.backbone_parameter_names()
        cos = task_gradient_cosines(self.distributed.gather_task_gradients(
            [{n: g[n] for n in names} for g in task_grads]))
        self.conflict.update(info.epoch, info.step, cos)
        return {"conflict/cos_mean": cos["mean"], "conflict/cos_min": cos["min"],
                "conflict/frac_negative": cos["frac_negative"]}

    # ------------------------------------------------------------------ views and tasks
    def make_views(self, images: torch.Tensor, seed: int, rows: torch.Tensor | None = None):
        """The m views per image of one step: m augmented views [N, m, C, H, W], or, for a generative method, one
        augmented view per image turned into m masked views by ``method.task_views``. Augmentation runs in
        float32 even under autocast."""
        if not self.generative:
            return self.augmented_views(images, self.n_views, seed, rows=rows)
        one_view = self.augmented_views(images, 1, seed)[:, 0]
        return self.method.task_views(one_view, self.n_views, torch.Generator().manual_seed(seed ^ MASK_STREAM))

    def shares_support_forward(self) -> bool:
        """Whether ``prepare_step`` hands the step the support forward at θ (TC²; never for "+T")."""
        return False

    def _encoder_input(self, x):
        return encoder_input(x, self.channels_last and getattr(x, "is_cuda", False))

    def _drop_remainder(self, images: torch.Tensor) -> torch.Tensor:
        """K must divide N (D-TC-21): drop the last images with a warning, or raise (``plugin.remainder``)."""
        p = self.cfg
        rest = images.shape[0] % p.n_tasks
        if not rest:
            return images
        if p.remainder == "error":
            raise ConfigError(f"batch size {images.shape[0]} is not divisible by plugin.n_tasks={p.n_tasks}; "
                              f"use a multiple of {p.n_tasks} or plugin.remainder=drop")
        warnings.warn(f"batch size {images.shape[0]} is not divisible by plugin.n_tasks={p.n_tasks}: dropping "
                      f"the last {rest} image(s) of the batch", stacklevel=3)
        return images[: images.shape[0] - rest]

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

    # ------------------------------------------------------------------ bookkeeping
    def epoch_summary(self, epoch: int) -> dict[str, float]:
        summary = dict(epoch_summary_dict(self.conflict))
        hits, total = int(self.inner_gain_hits[0]), self.inner_gain_hits[1]   # the epoch's one host sync
        hits, total = self.distributed.sum_counts([hits, total])             # over all processes' tasks
        if total:
            summary["tc2/inner_gain_rate"] = hits / total
            if hits / total < MIN_INNER_GAIN_RATE:
                warnings.warn(f"epoch {epoch}: the inner step (Eq. 6) lowered the support loss in only "
                              f"{hits}/{total} tasks (we want >= {MIN_INNER_GAIN_RATE:.0%}, check R8); tune "
                              "plugin.beta1", stacklevel=2)
        self.inner_gain_hits = [0, 0]
        return summary


def _join_views(support_views, query_views):
    """A task's support and query views side by side on the view axis: tensors, or a method's view objects."""
    if isinstance(support_views, torch.Tensor):
        return torch.cat([support_views, query_views], dim=1)
    return support_views.cat(query_views, dim=1)
