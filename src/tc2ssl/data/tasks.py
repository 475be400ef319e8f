"""TC² task construction (D-TC-13; paper §Task Construction).

A batch of N images is divided into K disjoint, uniformly random groups B_1..B_K (the tasks). Each image has m
augmented views; m' of them, chosen at random per image, go to the task's support set and the rest to its query set.
For generative SSL (MAE) the views are m random patch masks; the support set holds m' masked views plus the unmasked
image, the query set the other masked views.

Tasks that differ (``plugin.task_split=pixel_clusters``, an option; the paper's tasks are random): the K groups are
balanced k-means clusters of a cheap descriptor of each image (its 4×4 average-pooled pixels, standardised over the
batch), so images of one task share their colour and coarse layout (on colored_mnist: the colour; on PACS: much of
the domain's style). ``TaskSplit.between_share`` then reports how much of the descriptor's variance lies between
the tasks: about (K − 1)/(N − 1) for random groups, up to 1 for perfectly separated ones.
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
    between_share: float | None = None     # pixel_clusters: between-task share of the descriptor's variance

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
                         query_idx=move(self.query_idx), n_kept=self.n_kept, total_tasks=self.total_tasks,
                         between_share=self.between_share)

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
                remainder: str = "drop", min_support: int = 2,
                task_features: torch.Tensor | None = None) -> TaskSplit:
    """Split a batch into ``n_tasks`` tasks with a view-level support/query split.

    ``min_support`` is 2 for discriminative SSL (the support needs a positive pair) and 1 for MAE.
    When K does not divide N, ``remainder="drop"`` drops the N mod K last images of the random permutation with a
    warning; ``"error"`` raises.
    ``task_features`` [N, D] (e.g. :func:`pixel_descriptor`): the tasks are balanced k-means clusters of these
    rows instead of random groups (the support/query views of each image are the same draw either way).
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
    between_share = None
    if task_features is not None:
        if task_features.shape[0] != n_images:
            raise ValueError(f"task_features has {task_features.shape[0]} rows for a batch of {n_images} images")
        kept = perm[: n_tasks * task_size]
        features = task_features.detach().to("cpu", torch.float64)[kept]
        groups = kept[balanced_kmeans(features, n_tasks, generator)]
        between_share = between_task_share(task_features.detach().to("cpu", torch.float64), groups)
    return TaskSplit(groups=groups, support_idx=view_order[:, :n_support_views].contiguous(),
                     query_idx=view_order[:, n_support_views:].contiguous(), n_kept=n_tasks * task_size,
                     between_share=between_share)


def pixel_descriptor(images: torch.Tensor, grid: int = 4) -> torch.Tensor:
    """[N, C, H, W] images -> [N, C·grid²] average-pooled pixels, standardised per column over the batch."""
    pooled = torch.nn.functional.adaptive_avg_pool2d(images.float(), grid).flatten(1)
    return (pooled - pooled.mean(0)) / pooled.std(0).clamp_min(1e-6)


def balanced_kmeans(features: torch.Tensor, n_clusters: int, generator: torch.Generator,
                    iterations: int = 10) -> torch.Tensor:
    """Balanced k-means of ``features`` [N, D] (K divides N): [K, N/K] row indices, one cluster per row.

    Lloyd's iterations in which the assignment step fills the clusters greedily: the (row, centre) pairs in order of
    increasing distance, each row to the nearest centre that still has room. Centres start at K random rows."""
    n, size = features.shape[0], features.shape[0] // n_clusters
    centres = features[torch.randperm(n, generator=generator)[:n_clusters]]
    groups = None
    for _ in range(iterations):
        distances = torch.cdist(features, centres)                                    # [N, K]
        assigned = torch.full((n,), -1, dtype=torch.long)
        room = [size] * n_clusters
        for flat in distances.flatten().argsort().tolist():
            row, centre = divmod(flat, n_clusters)
            if assigned[row] < 0 and room[centre] > 0:
                assigned[row] = centre
                room[centre] -= 1
        new_groups = torch.stack([torch.nonzero(assigned == c).flatten() for c in range(n_clusters)])
        if groups is not None and torch.equal(new_groups, groups):
            break
        groups = new_groups
        centres = torch.stack([features[g].mean(0) for g in groups])
    return groups


def between_task_share(features: torch.Tensor, groups: torch.Tensor) -> float:
    """The share of the total scatter of ``features`` (rows of the kept images) that lies between the task means:
    Σ_k n‖μ_k − μ‖² / Σ_i ‖x_i − μ‖². Random groups give about (K − 1)/(N − 1)."""
    rows = features[groups.reshape(-1)]
    mean = rows.mean(0)
    total = (rows - mean).square().sum()
    between = sum(groups.shape[1] * (features[g].mean(0) - mean).square().sum() for g in groups)
    return float(between / total.clamp_min(1e-12))


def make_masks(n_images: int, n_views: int, n_patches: int, mask_ratio: float,
               generator: torch.Generator) -> torch.Tensor:
    """Random patch masks bool [N, m, P]; True = masked; exactly round(ratio * P) masked patches per view."""
    n_masked = int(round(mask_ratio * n_patches))
    if not 0 < n_masked < n_patches:
        raise ConfigError(f"method.mask_ratio={mask_ratio} masks {n_masked} of {n_patches} patches; "
                          "it must leave at least one patch masked and one visible")
    ranks = torch.rand(n_images, n_views, n_patches, generator=generator).argsort(dim=-1).argsort(dim=-1)
    return ranks < n_masked
