"""TC² task construction (D-TC-13; paper §Task Construction).

A batch of N images is divided into K disjoint, uniformly random groups B_1..B_K (the tasks). Each image has m
augmented views; m' of them, chosen at random per image, go to the task's support set and the rest to its query set.
For generative SSL (MAE) the views are m random patch masks; the support set holds m' masked views plus the unmasked
image, the query set the other masked views.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from tc2ssl.errors import ConfigError


@dataclass
class TaskSplit:
    """Index tensors describing the K tasks of one batch.

    groups:        [K, n]      image indices of each task (a partition of the kept images)
    support_idx:   [N, m']     per image, which of its m views are support views
    query_idx:     [N, m - m'] per image, the remaining (query) views
    n_kept:        images used (N minus the remainder that K does not divide)
    total_tasks:   K of the whole batch when this split holds only one process's share of the tasks
                   (``tc2ssl.distributed``); None = all of them are here
    """

    groups: torch.Tensor
    support_idx: torch.Tensor
    query_idx: torch.Tensor
    n_kept: int
    total_tasks: int | None = None

    @property
    def n_tasks(self) -> int:
        return self.groups.shape[0]

    @property
    def n_tasks_total(self) -> int:
        """K of the whole batch (the 1/K of Eq. 7), whatever share of the tasks this split holds."""
        return self.total_tasks if self.total_tasks is not None else self.n_tasks

    @property
    def task_size(self) -> int:
        return self.groups.shape[1]

    def to(self, device: torch.device | str) -> "TaskSplit":
        """The split with its index tensors on ``device``, copied once per step so that no indexing op in the step
        copies CPU indices to the device again (each such copy is a host-device synchronisation on CUDA).
        From CPU to CUDA the copy is asynchronous: the indices are pinned first."""
        device = torch.device(device)
        if self.groups.device == device:
            return self
        if device.type == "cuda":
            def move(t: torch.Tensor) -> torch.Tensor:
                return t.pin_memory().to(device, non_blocking=True)
        else:
            def move(t: torch.Tensor) -> torch.Tensor:
                return t.to(device)
        return TaskSplit(groups=move(self.groups), support_idx=move(self.support_idx),
                         query_idx=move(self.query_idx), n_kept=self.n_kept, total_tasks=self.total_tasks)

    def members(self, task: int | None) -> torch.Tensor:
        """The image indices of task ``task`` [n]; with ``None``, those of all K tasks one task after another [K·n]."""
        return self.groups.reshape(-1) if task is None else self.groups[task]

    def support_views(self, views: torch.Tensor, task: int | None) -> torch.Tensor:
        """views [N, m, ...] -> the support views of task ``task``: [n, m', ...] (``None``: of all tasks)."""
        members = self.members(task)
        return views[members[:, None], self.support_idx[members]]

    def query_views(self, views: torch.Tensor, task: int | None) -> torch.Tensor:
        """views [N, m, ...] -> the query views of task ``task``: [n, m - m', ...] (``None``: of all tasks)."""
        members = self.members(task)
        return views[members[:, None], self.query_idx[members]]


def build_tasks(n_images: int, n_tasks: int, n_views: int, n_support_views: int, generator: torch.Generator,
                remainder: str = "drop", min_support: int = 2) -> TaskSplit:
    """Split a batch into ``n_tasks`` tasks with a view-level support/query split.

    ``min_support`` is 2 for discriminative SSL (the support needs a positive pair) and 1 for MAE.
    When K does not divide N, ``remainder="drop"`` drops the N mod K last images of the random permutation with a
    warning; ``"error"`` raises.
    """
    if n_tasks < 1:
        raise ConfigError(f"plugin.n_tasks must be >= 1, got {n_tasks}")
    if not (min_support <= n_support_views < n_views):
        raise ConfigError(f"need {min_support} <= plugin.n_support_views < plugin.n_views, got "
                          f"n_support_views={n_support_views}, n_views={n_views}")
    if n_images < n_tasks:
        raise ConfigError(f"a batch of {n_images} images cannot be split into plugin.n_tasks={n_tasks} tasks")
    rest = n_images % n_tasks
    if rest:
        if remainder == "error":
            raise ConfigError(f"batch size {n_images} is not divisible by plugin.n_tasks={n_tasks}; use a "
                              f"multiple of {n_tasks} or plugin.remainder=drop")
        warnings.warn(f"batch size {n_images} is not divisible by plugin.n_tasks={n_tasks}: dropping {rest} "
                      "image(s) from this batch", stacklevel=2)
    task_size = n_images // n_tasks
    if task_size < 8:
        warnings.warn(f"only {task_size} images per task (batch {n_images}, {n_tasks} tasks); D-TC-21 "
                      "suggests at least 8", stacklevel=2)
    perm = torch.randperm(n_images, generator=generator)
    groups = perm[: n_tasks * task_size].view(n_tasks, task_size)
    view_order = torch.rand(n_images, n_views, generator=generator).argsort(dim=1)
    return TaskSplit(groups=groups, support_idx=view_order[:, :n_support_views].contiguous(),
                     query_idx=view_order[:, n_support_views:].contiguous(), n_kept=n_tasks * task_size)


def make_masks(n_images: int, n_views: int, n_patches: int, mask_ratio: float,
               generator: torch.Generator) -> torch.Tensor:
    """Random patch masks bool [N, m, P]; True = masked; exactly round(ratio * P) masked patches per view."""
    n_masked = int(round(mask_ratio * n_patches))
    if not 0 < n_masked < n_patches:
        raise ConfigError(f"method.mask_ratio={mask_ratio} masks {n_masked} of {n_patches} patches; "
                          "it must leave at least one patch masked and one visible")
    ranks = torch.rand(n_images, n_views, n_patches, generator=generator).argsort(dim=-1).argsort(dim=-1)
    return ranks < n_masked
