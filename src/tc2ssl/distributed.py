"""Multi-process data parallelism (``train.devices`` > 1) with the semantics of one process on the whole batch.

Lightning Fabric launches the processes (``ddp_spawn``, or ``ddp``, which re-runs the command once per process),
sets up the process group (gloo on CPU, NCCL on CUDA), places each process on its device and runs autocast.
Gradients are synchronised here, explicitly, instead of by Fabric's DDP wrapper: TC²'s gradients are computed
functionally (``torch.autograd.grad`` / ``torch.func``) and written into ``.grad``, which DDP's backward hooks
never see. See docs/distributed.md for the user-facing description.

The contract, for ``W`` processes:

- ``train.batch_size`` is the **global** batch: every process reads the same N images per step (same seeded
  order), and works on N/W of them. The run optimises exactly the single-process objective, so a run on W
  devices matches a run on one device with the same config (the test checks 2 × B against 1 × 2B).
- **Views**: every process draws the augmentation parameters of the whole batch from the step seed (a few numbers
  per image) and transforms only its own images (``ViewMaker(..., rows=)``): the views are bit-identical to the
  rows of a single-process run, at 1/W of its augmentation cost.
- **Tasks** (TC², +T): every process builds the same K-task split of the whole batch from the step seed and owns
  K/W whole tasks (``task_shard``), i.e. the images of those tasks. Every encoder pass of stage 2 (support, inner
  step, query, anchors, probes) is within one task, so it runs entirely inside one process, BatchNorm included.
- **Statistics** (TC² stage 1): each process embeds its images (no grad, BatchNorm over the global batch through
  :meth:`DistributedContext.global_batch_norm`), the representations are all-gathered into batch order, and
  stage 1 (S, L_v over all rows, L_w, the f_v / f_w updates) runs on the whole batch in every process. It needs no
  gradient communication; its result is broadcast from rank 0 after each step so that nondeterministic kernels
  can never make the processes drift apart.
- **Gradients**: each process leaves its *share* of the global-batch gradient in ``.grad`` and
  :meth:`DistributedContext.all_reduce_gradients_` sums the shares. TC²/+T: (1/K)·Σ over its tasks of the
  per-task meta-gradients (Eq. 7). Baseline: the method's loss on the embeddings of the whole batch
  (:meth:`DistributedContext.gather_rows`, whose backward sums the gradient over processes), divided by W.
- **BatchNorm** where one forward covers the whole batch in a single process (the baseline's forward, the
  stage-1 statistics forward): the batch mean and variance are all-reduced, forward and backward
  (``torch.nn.SyncBatchNorm`` is GPU-only and cannot be switched off for the per-task passes). Running statistics
  (used only at evaluation) are those of rank 0, which writes the checkpoint and the encoder.
- Metrics are averaged over processes (the TC² per-task losses are means over equally many tasks per process).
  Only rank 0 writes files; all ranks make the same decisions (resume, non-finite loss) at the same step.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn

from tc2ssl.data.tasks import TaskSplit
from tc2ssl.errors import ConfigError

#: methods whose baseline loss is a function of the batch embeddings alone, so that with train.devices > 1 the
#: baseline computes it on the embeddings of the whole batch, exactly (BYOL and MoCo read their views in the
#: loss, through a momentum target network and, for MoCo, a memory bank; MAE draws masks from the global RNG)
DISTRIBUTED_BASELINE_METHODS = ("simclr", "simsiam", "barlow_twins", "vicreg", "swav")
#: methods the task plug-ins (tc2, tasks) support with train.devices > 1 (MAE's masked-view tasks are not sharded)
DISTRIBUTED_TASK_METHODS = ("simclr", "simsiam", "barlow_twins", "vicreg", "swav", "byol", "moco")


def check_config(cfg) -> None:
    """ConfigErrors for the combinations that cannot run on ``cfg.train.devices`` > 1 processes."""
    world = cfg.train.devices
    if world == 1:
        return
    batch = cfg.train.batch_size
    if batch % world:
        raise ConfigError(f"train.batch_size={batch} is the global batch and must be divisible by "
                          f"train.devices={world} (each process takes batch_size / devices images)")
    from tc2ssl.plugins import PLUGINS     # lazily: the plug-ins import this module

    plugin_class = PLUGINS.get(cfg.plugin.name)
    if not plugin_class.supports_distributed:
        raise ConfigError(f"train.devices={world} is not supported with plugin.name={cfg.plugin.name}; use "
                          "train.devices=1")
    methods = DISTRIBUTED_TASK_METHODS if plugin_class.uses_tasks else DISTRIBUTED_BASELINE_METHODS
    if cfg.method.name not in methods:
        reason = ("" if plugin_class.uses_tasks else f"; {cfg.method.name}'s baseline loss reads its views (target "
                  "network, memory bank or masks) and is not distributed yet")
        raise ConfigError(f"train.devices={world} with plugin.name={cfg.plugin.name} supports method.name in "
                          f"{', '.join(methods)}{reason}: use train.devices=1 for {cfg.method.name}")
    if not plugin_class.uses_tasks and batch // world < 2:
        raise ConfigError(f"train.batch_size={batch} over train.devices={world} leaves fewer than 2 images "
                          "per process")
    if plugin_class.uses_tasks:
        k = cfg.plugin.n_tasks
        if k % world:
            raise ConfigError(f"plugin.n_tasks={k} must be divisible by train.devices={world}: the K tasks of a "
                              f"batch are split evenly over the processes (e.g. plugin.n_tasks="
                              f"{max(world, k - k % world)} or {k + world - k % world})")


def launch_strategy(train_cfg) -> str:
    """The Fabric strategy for ``train.strategy``: ``auto`` is ``ddp_spawn`` when train.devices > 1 (it works for
    every command and for the Python API; ``ddp`` re-runs the command line in each process)."""
    if train_cfg.devices > 1 and train_cfg.strategy == "auto":
        return "ddp_spawn"
    return train_cfg.strategy


# ---------------------------------------------------------------------------------------------- autograd ops
class _AllReduceSum(torch.autograd.Function):
    """Σ over processes; the backward sums the incoming gradient over processes too (every process holds a share
    of the objective)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class _GatherRows(torch.autograd.Function):
    """Concatenate equally sized row blocks of all processes in rank order; the backward sums the gradient of the
    concatenation over processes and returns this process's block (lightly's GatherLayer, as one tensor)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        blocks = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(blocks, x)
        ctx.rows = (dist.get_rank() * x.shape[0], (dist.get_rank() + 1) * x.shape[0])
        return torch.cat(blocks)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rows[0]:ctx.rows[1]]


def _global_batch_norm_forward(bn: nn.modules.batchnorm._BatchNorm, original, x: torch.Tensor) -> torch.Tensor:
    """``bn`` in training mode with the batch mean and (biased) variance of the rows of ALL processes.

    Two-pass (mean, then centred squares) for the accuracy of F.batch_norm; differentiable through the
    all-reduces. Running statistics are updated as F.batch_norm does for the whole batch (unbiased variance).
    """
    if not (bn.training or (bn.running_mean is None and bn.running_var is None)):
        return original(bn, x)                                         # evaluation: running statistics
    reduce_dims = [0, *range(2, x.dim())]
    shape = [1, -1] + [1] * (x.dim() - 2)
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    local_rows = xf.numel() // xf.shape[1]
    sums = _AllReduceSum.apply(torch.cat([xf.sum(reduce_dims), xf.new_tensor([local_rows])]))
    count = sums[-1].detach()
    mean = sums[:-1] / count
    centred = xf - mean.view(shape)
    var = _AllReduceSum.apply(centred.square().sum(reduce_dims)) / count
    y = centred * torch.rsqrt(var + bn.eps).view(shape)
    if bn.weight is not None:
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
    if bn.training and bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
            unbiased = var.detach() * (count / (count - 1).clamp_min(1))
            bn.running_mean.mul_(1 - factor).add_(mean.detach().to(bn.running_mean.dtype), alpha=factor)
            bn.running_var.mul_(1 - factor).add_(unbiased.to(bn.running_var.dtype), alpha=factor)
    return y.to(x.dtype)


# ---------------------------------------------------------------------------------------------- task shards
@dataclass
class TaskShard:
    """This process's part of a batch's K tasks.

    split:        the tasks of this process, indexing the views of ``images`` (``split.n_tasks_total`` = K)
    images:       batch indices of this process's images, task by task (None in a single process: all)
    rank_images:  [W, N/W·…] the batch indices of every process's images, in rank order (None: single process)
    """

    split: TaskSplit
    images: torch.Tensor | None
    rank_images: torch.Tensor | None
    context: "DistributedContext"

    def gather_images(self, z: torch.Tensor) -> torch.Tensor:
        """Per-image rows of this process's images [n, ...] -> the whole batch's [N, ...] in batch order (no grad)."""
        if self.images is None:
            return z
        blocks = [torch.empty_like(z) for _ in range(self.context.world_size)]
        dist.all_gather(blocks, z.contiguous())
        order = self.rank_images.reshape(-1).to(z.device)
        out = z.new_empty((self.split.n_kept * self.context.world_size, *z.shape[1:]))
        out[order] = torch.cat(blocks)
        return out


# ---------------------------------------------------------------------------------------------- the context
@dataclass(frozen=True)
class DistributedContext:
    """Rank and world size of this process, and the collectives the training step needs (no-ops for one process)."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def current(cls) -> "DistributedContext":
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return SINGLE_PROCESS

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_rank_zero(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ who works on which images
    def image_rows(self, n_images: int) -> torch.Tensor | None:
        """This process's block of a batch of ``n_images`` (contiguous, rank order); None = all (one process)."""
        if not self.active:
            return None
        if n_images % self.world_size:
            raise ConfigError(f"a batch of {n_images} images cannot be split evenly over {self.world_size} "
                              "processes; make train.batch_size a multiple of train.devices")
        per = n_images // self.world_size
        return torch.arange(self.rank * per, (self.rank + 1) * per)

    def task_shard(self, split: TaskSplit) -> TaskShard:
        """The K/W tasks of ``split`` this process owns (tasks rank·K/W … (rank+1)·K/W − 1) and their images."""
        if not self.active:
            return TaskShard(split, None, None, self)
        k = split.n_tasks
        if k % self.world_size:
            raise ConfigError(f"plugin.n_tasks={k} must be divisible by train.devices={self.world_size}")
        per = k // self.world_size
        rank_images = split.groups.reshape(self.world_size, per * split.task_size)   # [W, K/W·n]
        images = rank_images[self.rank]
        local = TaskSplit(groups=torch.arange(images.shape[0]).view(per, split.task_size),
                          support_idx=split.support_idx[images], query_idx=split.query_idx[images],
                          n_kept=images.shape[0], total_tasks=k)
        return TaskShard(local, images, rank_images, self)

    # ------------------------------------------------------------------ forward-time communication
    @contextlib.contextmanager
    def global_batch_norm(self, module: nn.Module) -> Iterator[None]:
        """Inside the block, every BatchNorm layer of ``module`` in training mode normalises with the statistics of
        the rows of all processes (differentiably); outside it, BatchNorm is local again (TC²'s per-task passes)."""
        if not self.active:
            yield
            return
        layers = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for bn in layers:
            bn.forward = functools.partial(_global_batch_norm_forward, bn, type(bn).forward)
        try:
            yield
        finally:
            for bn in layers:
                del bn.forward

    def gather_rows(self, x: torch.Tensor) -> torch.Tensor:
        """The rows of all processes (equal blocks) in rank order; differentiable: the backward sums the gradient
        over processes, so each process holds the whole gradient of its own rows when every process computes
        1/W of the same objective on the result."""
        if not self.active:
            return x
        return _GatherRows.apply(x)

    # ------------------------------------------------------------------ gradients, metrics, state
    def all_reduce_gradients_(self, params: Iterable[torch.Tensor]) -> None:
        """Sum ``.grad`` over processes in place (each process holds its share of the global-batch gradient).
        A parameter without a gradient in every process keeps ``.grad = None``, as in a single process."""
        if not self.active:
            return
        params = list(params)
        if not params:
            return
        device = params[0].device
        present = torch.tensor([float(p.grad is not None) for p in params], device=device)
        dist.all_reduce(present)
        with_grad = [p for p, flag in zip(params, present.tolist()) if flag > 0]
        for p in with_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        _all_reduce_flat_([p.grad for p in with_grad])

    def all_reduce_sum_(self, tensors: list[torch.Tensor]) -> None:
        """Sum ``tensors`` over processes in place."""
        if self.active and tensors:
            _all_reduce_flat_(tensors)

    def gather_task_gradients(self, task_grads: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
        """Per-task gradient dicts of this process's tasks -> those of all K tasks, in task order."""
        if not self.active:
            return task_grads
        names = list(task_grads[0])
        flat = torch.stack([torch.cat([g[n].reshape(-1) for n in names]) for g in task_grads])   # [K/W, P]
        blocks = [torch.empty_like(flat) for _ in range(self.world_size)]
        dist.all_gather(blocks, flat)
        everything = torch.cat(blocks)                                                         # [K, P]
        sizes = [task_grads[0][n].numel() for n in names]
        shapes = [task_grads[0][n].shape for n in names]
        out = []
        for row in everything:
            parts = torch.split(row, sizes)
            out.append({n: part.view(shape) for n, part, shape in zip(names, parts, shapes)})
        return out

    def average_metrics(self, metrics: dict) -> dict:
        """Scalar metrics averaged over processes (float64); other entries unchanged. Every process must report
        the same keys."""
        if not self.active:
            return metrics
        keys = sorted(k for k, v in metrics.items()
                      if isinstance(v, (int, float)) or (isinstance(v, torch.Tensor) and v.numel() == 1))
        if not keys:
            return metrics
        device = next((v.device for v in metrics.values() if isinstance(v, torch.Tensor)), torch.device("cpu"))
        values = torch.stack([torch.as_tensor(metrics[k], dtype=torch.float64, device=device).reshape(())
                              for k in keys])
        dist.all_reduce(values)
        values /= self.world_size
        return {**metrics, **{k: values[i] for i, k in enumerate(keys)}}

    def sum_counts(self, counts: list[int]) -> list[int]:
        if not self.active:
            return list(counts)
        t = torch.tensor([float(c) for c in counts], dtype=torch.float64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        return [int(round(c)) for c in t.tolist()]

    def broadcast_(self, tensors: Iterable[torch.Tensor], src: int = 0) -> None:
        """Overwrite ``tensors`` in place with rank ``src``'s values."""
        if not self.active:
            return
        tensors = [t for t in tensors]
        for group in _by_device_and_dtype(tensors):
            flat = torch.cat([t.detach().reshape(-1) for t in group])
            dist.broadcast(flat, src)
            with torch.no_grad():
                offset = 0
                for t in group:
                    t.copy_(flat[offset:offset + t.numel()].view_as(t))
                    offset += t.numel()

    def broadcast_object(self, obj, src: int = 0):
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


SINGLE_PROCESS = DistributedContext()


def _by_device_and_dtype(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    return list(groups.values())


def _all_reduce_flat_(tensors: list[torch.Tensor]) -> None:
    """One all-reduce (sum) per device and dtype over the concatenation of ``tensors``, copied back in place."""
    for group in _by_device_and_dtype(tensors):
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat)
        offset = 0
        for t in group:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()


def is_secondary_process() -> bool:
    """True in a process of rank > 0 of a still-initialised process group (``train.strategy=ddp`` re-runs the
    command in such processes: they train, then skip evaluation and reports)."""
    return dist.is_available() and dist.is_initialized() and dist.get_rank() != 0
