"""``plugin.name=gessl``: GeSSL, general SSL for universality, over any discriminative method of the zoo.

Per training step (docs/gessl.md maps every line to the method's equations):

1. the loop's batch of N images is split into M = ``plugin.gessl.n_batches`` mini-batch tasks of N/M images
   (the remainder is dropped); each image gets two augmented views (four with ``outer_data=fresh_views``);
2. per task, the bi-level objective of :mod:`tc2ssl.gessl.objective`: K_in inner SSL steps from θ to φ, the
   look-ahead target ψ (Λ more steps, no gradient), the outer loss KL(π_ψ ‖ π_φ), and its hypergradient with
   respect to θ (AID-FD by default);
3. the M hypergradients are averaged into ``.grad`` of the method's online parameters (the multi-batch
   collaborative update); the loop's optimiser applies them;
4. a separate π head (every method but SimCLR, by default) gets the gradient of its own InfoNCE on the detached
   backbone features in ``.grad``; it is an outer parameter, stepped by the same optimiser;
5. every ``plugin.conflict_every`` steps (M >= 2), the inter-task gradient cosine of the M tasks' SSL gradients at
   θ (the same diagnostic as the baseline's and TC²'s, ``plugin.conflict_params``).

Images per outer step are N, as for the baseline at the same ``train.batch_size``; a GeSSL task holds N/M of them.
"""
from __future__ import annotations

import warnings

import torch

from tc2ssl.diagnostics.conflict import ConflictTracker, epoch_summary_dict, task_gradient_cosines
from tc2ssl.errors import ConfigError
from tc2ssl.gessl.head import PiHead
from tc2ssl.gessl.objective import GeSSLObjective, GeSSLSettings
from tc2ssl.meta.functional import assign_grads
from tc2ssl.plugins.baseline import conflict_parameter_names
from tc2ssl.plugins.base import PLUGINS, Plugin, StepInfo
from tc2ssl.timing import section

#: why MAE is not supported (raised at config time)
MAE_MESSAGE = ("plugin.name=gessl needs π, a classifier of each image's second view against the first views of its "
               "mini-batch; method.name={method} is generative: its views are masks whose loss reconstructs pixels "
               "and its embedding is one vector per visible token, so no instance classifier follows from it (the "
               "GeSSL sources define π for discriminative SSL only). Use a discriminative method: simclr, moco, "
               "byol, simsiam, barlow_twins, swav or vicreg")
#: the stream that derives the views of a GeSSL step from its seed
_VIEW_STREAM = 0x6E55


def uses_projector(pi_head: str, method_name: str) -> bool:
    """Whether π works on the method's projector (``pi_head``: auto, projector or separate)."""
    return pi_head == "projector" or (pi_head == "auto" and method_name == "simclr")


@PLUGINS.register("gessl")
class GeSSL(Plugin):
    n_views = 2
    config_block = "gessl"

    def __init__(self, cfg, method, view_maker):
        super().__init__(cfg, method, view_maker)
        block = self.block
        self.n_views = 4 if block.outer_data == "fresh_views" else 2
        self.pi_head = (None if uses_projector(block.pi_head, method.name)
                        else PiHead(method.backbone.feat_dim, block.pi_hidden_dim, block.pi_dim))
        settings = GeSSLSettings(
            inner_steps=block.inner_steps, lookahead_steps=block.lookahead_steps, inner_lr=block.inner_lr,
            lookahead_lr=block.lookahead_lr, hypergradient=block.hypergradient, fd_radius=block.fd_radius,
            cg_steps=block.cg_steps, prox_lambda=block.prox_lambda,
            tau_pi=block.tau_pi or cfg.method.temperature, target=block.target, outer_data=block.outer_data,
            outer_ssl_weight=block.outer_ssl_weight)
        self.objective = GeSSLObjective(method, settings, self.pi_head)
        self.timer = None            # benchmarks/throughput.py sets a SectionTimer
        self.conflict = ConflictTracker()
        self._warned_remainder = False

    @classmethod
    def check_config(cls, cfg) -> None:
        from tc2ssl.methods import METHODS

        block = cfg.plugin.gessl
        if getattr(METHODS.get(cfg.method.name), "generative", False):
            raise ConfigError(MAE_MESSAGE.format(method=cfg.method.name))
        if block.hypergradient in ("aid_fd", "implicit_cg") and cfg.train.precision == "bf16-mixed":
            raise ConfigError(f"plugin.gessl.hypergradient={block.hypergradient} takes differences of gradients at "
                              "θ ± εv, which bfloat16's 8-bit mantissa cannot resolve; with train.precision="
                              "bf16-mixed use plugin.gessl.hypergradient=first_order or exact, or train.precision="
                              "32-true")
        per_task = cfg.train.batch_size // block.n_batches
        if per_task < 2:
            raise ConfigError(f"plugin.gessl.n_batches={block.n_batches} splits train.batch_size="
                              f"{cfg.train.batch_size} into tasks of {per_task} image(s); a task needs at least 2 "
                              f"(use n_batches <= {cfg.train.batch_size // 2})")

    def outer_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The separate π head: stepped by the loop's optimiser with the encoder."""
        if self.pi_head is None:
            return {}
        return {f"pi_head.{n}": p for n, p in self.pi_head.named_parameters()}

    def task_views(self, images: torch.Tensor, seed: int) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """The M tasks of a batch: (views [n, 2, ...], fresh outer views [n, 2, ...] or None) per task."""
        n_batches = self.block.n_batches
        per_task = images.shape[0] // n_batches
        rest = images.shape[0] - per_task * n_batches
        if rest and not self._warned_remainder:
            self._warned_remainder = True
            warnings.warn(f"batch of {images.shape[0]} images is not divisible by plugin.gessl.n_batches="
                          f"{n_batches}: the last {rest} image(s) of each batch are dropped", stacklevel=3)
        views = self.augmented_views(images[: per_task * n_batches], self.n_views, seed ^ _VIEW_STREAM)
        tasks = []
        for task in range(n_batches):
            rows = views[task * per_task:(task + 1) * per_task]
            tasks.append((rows[:, :2], rows[:, 2:] if self.n_views == 4 else None))
        return tasks

    def training_step(self, images: torch.Tensor, info: StepInfo) -> dict[str, torch.Tensor]:
        with section(self.timer, "augmentation"):
            tasks = self.task_views(images, info.seed)
        theta = self.method.online_parameters()
        with section(self.timer, "bilevel"):
            grads, outcomes = self.objective.collaborative_update(theta, tasks)              # Eq. (G9)
        assign_grads(theta, grads)
        metrics = {
            "loss": torch.stack([o.outer_loss for o in outcomes]).mean(),
            "gessl/inner_ssl": torch.stack([o.inner_loss for o in outcomes]).mean(),
            "gessl/sigma_train": torch.stack([o.sigma for o in outcomes]).mean(),
        }
        if self.pi_head is not None:
            with section(self.timer, "pi_head"):
                head_loss = torch.stack([self.objective.head_loss(o.features) for o in outcomes]).mean()
                head_params = self.outer_parameters()
                assign_grads(head_params, dict(zip(head_params, torch.autograd.grad(head_loss,
                                                                                     list(head_params.values())))))
            metrics["gessl/head_infonce"] = head_loss.detach()
        every = self.cfg.conflict_every
        if every and info.step % every == 0 and len(outcomes) > 1:    # the M tasks' SSL gradients at θ
            names = conflict_parameter_names(self.method, self.cfg.conflict_params)
            cos = task_gradient_cosines([{n: o.inner_grads[n] for n in names} for o in outcomes])
            self.conflict.update(info.epoch, info.step, cos)
            metrics.update({"conflict/cos_mean": cos["mean"], "conflict/cos_min": cos["min"],
                            "conflict/frac_negative": cos["frac_negative"]})
        return metrics

    def epoch_summary(self, epoch: int) -> dict[str, float]:
        return epoch_summary_dict(self.conflict)
