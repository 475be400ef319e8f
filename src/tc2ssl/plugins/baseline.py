"""``plugin.name=none``: the plain SSL baseline — two views per image (plus ``data.local_views`` local crops with
SwAV's multi-crop), the method's native loss.

For the Figure-1 comparison the inter-task gradient cosine is also measured on the baseline (D-DG-01): the batch
is split into ``plugin.conflict_tasks`` random halves and the gradients of each part's native loss are compared.
"""
from __future__ import annotations

import torch

from tc2ssl.diagnostics.conflict import ConflictTracker, epoch_summary_dict, task_gradient_cosines
from tc2ssl.methods.base import LossContext
from tc2ssl.plugins.base import PLUGINS, Plugin, StepInfo


def conflict_parameter_names(method, which: str) -> list[str]:
    names = list(method.online_parameters())
    return [n for n in names if n.startswith("backbone.")] if which == "backbone" else names


@PLUGINS.register("none")
class Baseline(Plugin):
    n_views = 2
    supports_loss_scaling = True   # its gradient is one backward() (the conflict metric's cosines need no scale)
    supports_distributed = True

    def __init__(self, cfg, method, view_maker):
        super().__init__(cfg, method, view_maker)
        self.conflict = ConflictTracker()

    @property
    def views_per_image(self) -> int:
        """2, or 2 global + ``data.local_views`` local crops (SwAV's multi-crop)."""
        return 2 + self.run_cfg.data.local_views

    def training_step(self, images: torch.Tensor, info: StepInfo) -> dict[str, torch.Tensor]:
        if self.distributed.active:
            return self._distributed_training_step(images, info)
        views = self.augmented_views(images, self.views_per_image, info.seed)
        loss, z = self.method.training_loss(views)
        metrics = {"loss": loss.detach()}
        every = self.cfg.conflict_every
        if every and info.step % every == 0:
            metrics.update(self._conflict(z, views, info))
        self.backward(loss)
        return metrics

    def _distributed_training_step(self, images: torch.Tensor, info: StepInfo) -> dict[str, torch.Tensor]:
        """This process's share of the whole-batch step (tc2ssl.distributed): the views of its block of images,
        embedded with BatchNorm over the whole batch, the embeddings of all processes gathered, the method's loss
        on the whole batch (the same number in every process), and 1/W of its gradient back-propagated (the
        gather's backward sums over processes, the loop sums the parameter gradients)."""
        dist = self.distributed
        views = self.augmented_views(images, self.views_per_image, info.seed, rows=dist.image_rows(images.shape[0]))
        n, v = views.shape[:2]
        with dist.global_batch_norm(self.method):
            z_local = self.method.embed(views.flatten(0, 1)).view(n, v, -1)
        z = dist.gather_rows(z_local)                                               # [N, 2, d] in batch order
        loss = self.method.baseline_loss(z, LossContext(update_state=True))
        metrics = {"loss": loss.detach()}
        every = self.cfg.conflict_every
        if every and info.step % every == 0:
            metrics.update(self._conflict(z, None, info))
        self.backward(loss / dist.world_size)
        return metrics

    def _conflict(self, z: torch.Tensor, views: torch.Tensor | None, info: StepInfo) -> dict[str, torch.Tensor]:
        names = conflict_parameter_names(self.method, self.cfg.conflict_params)
        params = dict(self.method.online_parameters())
        tensors = [params[n] for n in names]
        k = self.cfg.conflict_tasks
        g = torch.Generator().manual_seed(info.seed ^ 0x5EED)
        n_keep = (z.shape[0] // k) * k
        parts = torch.randperm(z.shape[0], generator=g)[:n_keep].view(k, -1)
        share = 1.0 / self.distributed.world_size     # with several processes: this process's share, then summed
        task_grads = []
        for part in parts:
            part_loss = self.method.baseline_loss(z[part], LossContext(views=None if views is None else views[part]))
            grads = torch.autograd.grad(part_loss * share if share != 1.0 else part_loss, tensors,
                                        retain_graph=True, allow_unused=True)
            grads = [gr if gr is not None else torch.zeros_like(t) for gr, t in zip(grads, tensors)]
            self.distributed.all_reduce_sum_(grads)
            task_grads.append(dict(zip(names, grads)))
        cos = task_gradient_cosines(task_grads)
        self.conflict.update(info.epoch, info.step, cos)
        return {"conflict/cos_mean": cos["mean"], "conflict/cos_min": cos["min"],
                "conflict/frac_negative": cos["frac_negative"]}

    def epoch_summary(self, epoch: int) -> dict[str, float]:
        return epoch_summary_dict(self.conflict)
