"""Controls for attributing TC²'s gain: the same step as TC² (tasks, the whole-batch statistics forward, the
bi-level update of Eqs. 6-7 on a transformed representation) with the calibration replaced.

- ``tc2_frozen``: TC² with the calibrator frozen at its initialisation (stage 1 never updates f_v, f_w): what the
  untrained calibration gives (f_v's base V0 is still set from the first batch under ``plugin.factor_init=pca``: that
  is its initialisation; with ``factor_mode=subspace`` span(V) then still follows each batch).
- ``tasks_nf``: "+T" on the batch's top-n_f principal subspace: ẑ = z'·P Pᵀ with P the top-n_f eigenvectors of this
  batch's Z_fᵀZ_f (the minimiser of Eq. 1, i.e. what a perfect f_v gives with every gate open). It isolates the
  projection onto n_f dimensions from the learned calibration.
- ``random_proj``: ẑ = z'·P Pᵀ with P a fixed random orthonormal [d, n_f] matrix drawn once from the run's seed: a
  projection that knows nothing about the data.

z' is the calibrator's input normalisation (``plugin.input_norm``) and the result is scaled back as TC² does, so
the three rows differ from ``tc2`` only in what replaces f_w(z')Vᵀ.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from tc2ssl.data.tasks import TaskSplit
from tc2ssl.distributed import TaskShard
from tc2ssl.errors import ConfigError
from tc2ssl.plugins.base import PLUGINS, StepInfo
from tc2ssl.plugins.bilevel import StepPreparation
from tc2ssl.plugins.tc2 import TC2
from tc2ssl.precision import float32_region
from tc2ssl.tc2.calibrator import Calibrator

#: the control plug-ins, each paired with the ``tc2`` row of the same method in a benchmark's attribution table
CONTROL_PLUGINS = ("tc2_frozen", "random_proj", "tasks_nf")

#: the ``plugin.*`` keys that only TC²'s learned calibrator reads (f_v, f_w and their stage-1 training): the part
#: every control replaces. A TC² row variant that changes only these (``tc2 preset=calibrated``) is another
#: calibrator on the same task step, so the benchmark pairs it with the default controls of its base.
CALIBRATOR_SETTINGS = frozenset(f"plugin.{key}" for key in (
    "lam_s", "stage1_ssl_weight", "l1_coef", "alpha1", "alpha2", "alpha3", "alpha4", "stage1_mode",
    "stage1_optimizer", "stage1_grad_clip", "stage1_adam_lr", "weight_mode", "l1_scale", "l1_relative_coef",
    "factor_mode", "factor_power_steps", "view_agreement", "task_context", "detach_v_in_lw", "lw_rows",
    "use_loss_v", "use_loss_w", "factor_hidden", "factor_init", "weight_hidden", "gate_bias_init"))

#: the stream constant that derives random_proj's fixed projection from the run's seed
PROJECTION_STREAM = 0x9E0F


@dataclass
class Projection:
    """ẑ = s·(z'P)Pᵀ for rows z [R, d]: an orthogonal projection onto span(P) in the calibrator's scale."""

    calibrator: Calibrator
    basis: torch.Tensor

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self.calibrator.scale * ((self.calibrator.prep(z) @ self.basis) @ self.basis.T)


def top_subspace(rows: torch.Tensor, n_factors: int) -> torch.Tensor:
    """The orthonormal top-``n_factors`` right singular vectors of ``rows`` [R, d] (eigenvectors of RᵀR): [d, n_f]."""
    return torch.linalg.svd(rows, full_matrices=False).Vh[:n_factors].T.contiguous()


@PLUGINS.register("tc2_frozen")
class FrozenCalibratorTC2(TC2):
    """TC² whose f_v and f_w stay at their initialisation (stage 1 skipped)."""

    def __init__(self, cfg, method, view_maker):
        super().__init__(cfg, method, view_maker)
        _require_calibrator(self)
        self.calibrator.frozen = True


def _require_calibrator(plugin: TC2) -> None:
    if plugin.calibrator is None:
        raise ConfigError(f"plugin.name={plugin.cfg.name} is a control of TC²'s calibration and needs "
                          "plugin.calibration=true (for +T without it use plugin.name=tasks)")


class _ProjectionControl(TC2):
    """TC²'s step with ẑ = a projection onto n_f dimensions instead of the calibration."""

    def __init__(self, cfg, method, view_maker):
        super().__init__(cfg, method, view_maker)
        _require_calibrator(self)

    def projection(self, rows: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def prepare_step(self, views, split: TaskSplit, shard: TaskShard, info: StepInfo) -> StepPreparation:
        z, shared = self.batch_representations(views, split, shard)
        with float32_region(z.device):
            basis = self.projection(z.reshape(-1, z.shape[-1]).detach())
        return StepPreparation(transform=Projection(self.calibrator, basis), shared=shared)


@PLUGINS.register("tasks_nf")
class PrincipalSubspaceTasks(_ProjectionControl):
    """"+T" with ẑ on the batch's top-n_f principal subspace (per batch, from Z at θ)."""

    def projection(self, rows: torch.Tensor) -> torch.Tensor:
        return top_subspace(rows, self.calibrator.n_factors)


@PLUGINS.register("random_proj")
class RandomProjectionTasks(_ProjectionControl):
    """"+T" with ẑ on a fixed random n_f-dimensional subspace."""

    def __init__(self, cfg, method, view_maker):
        super().__init__(cfg, method, view_maker)
        seed = int(getattr(cfg, "seed", 0))
        generator = torch.Generator().manual_seed(seed ^ PROJECTION_STREAM)
        gaussian = torch.randn(method.embed_dim, self.calibrator.n_factors, generator=generator)
        self.register_buffer("fixed_basis", torch.linalg.qr(gaussian).Q)

    def projection(self, rows: torch.Tensor) -> torch.Tensor:
        return self.fixed_basis.to(rows.device, rows.dtype)
