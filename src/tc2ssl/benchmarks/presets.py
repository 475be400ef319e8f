"""Scale presets of ``tc2ssl benchmark``: ``smoke`` (seconds, for tests), ``cpu`` (about 30 minutes per suite on
2 cores, SimCLR far from converged), ``standard`` (longer CPU runs, with time-to-accuracy curves and equal-compute
rows; provisional: see docs/results.md for what was measured) and ``paper`` (a GPU: scripts/gpu_benchmarks.sh).

A preset is a list of ``key=value`` config overrides (for every suite, then per suite), the default seeds and
the defaults of the suite options (``suite.KEY=VALUE`` on the command line):

* ``max_test``: evaluate on at most this many test images per test set (a fixed seed-0 subset, the same for
  every run; 0 = all);
* ``k_values``: the K of the ``cifar10_subset`` K ablation (Table 13);
* ``rho``: P(colour = class) in the ``colored_mnist`` training split;
* ``curve_every``: record the time-to-accuracy kNN every this many epochs (0 = off) on ``curve_images`` train and
  test images of the pretraining data (:mod:`tc2ssl.benchmarks.curves`);
* ``equal_compute``: add the equal-compute baseline rows (:mod:`tc2ssl.benchmarks.compute`), their epochs from
  2 = interleaved step timing in one process (the measuring presets), 1 = the runs' own training seconds;
  0 = no such rows;
* ``posthoc_epochs``: the epochs of the post-hoc rows (``umm`` and its control ``none +E epochs``); 0 = half the
  pretraining epochs.

The user's ``key=value`` overrides and ``--seeds`` come after the preset and win.

The ``smoke``, ``cpu`` and ``standard`` presets measure the inter-task gradient conflict at every step
(``plugin.conflict_every=1``, where training's default is every 10th): their conflict-against-accuracy analysis
wants the whole curve, and their stored runs were made so (a finished run is reused only under the same config).
It costs the plain baseline's step about 2-2.7× on this CPU, which is why the equal-compute timing turns it off.
``paper`` keeps the default of every 10th step.

Budget of ``cpu``: about 30 minutes per suite for 3 seeds × 3 plug-ins on this 2-core machine while it is
shared (measured at a load average of about 6, small_cnn_tiny, batch 256, train.threads=2; an idle machine is
roughly 2-3× faster). Seconds per training step, none / +T / TC²: MNIST 28 px grey 1.1 / 1.6 / 2.3 and RGB about
the same (mean 1.7); CIFAR 32 px 1.4 / 2.1 / 2.8 (TC² at K = 2, 8, 16: 2.3, 3.0, 3.6); PACS 32 px 2.0 / 2.1 / 2.8
(mean 2.25). Evaluation per run with eval.max_train=5000 (features + probes, one BLAS thread): colored_mnist 5 s,
pacs 25 s, digits_transfer 10 s (two probes), cifar10_subset 4 s; about 3 s of set-up per pretraining:

::

    colored_mnist:   7,168 images = 28 steps/epoch × 4 epochs = 112 steps;
                     9 × (112 × 1.7 + 8) s ≈ 1,790 s ≈ 30 min
    digits_transfer: 4,096 images = 16 steps/epoch × 3 epochs = 48 steps; 18 pretrainings × 48 × 1.7 s + 9 × 10 s
                     + 18 × 3 s ≈ 1,610 s ≈ 27 min
    cifar10_subset:  4,660 images = 18 steps/epoch × 4 epochs = 72 steps; per seed and step the 6 rows (none, +T,
                     TC² K=4, K=2, K=8, K=16) cost ≈ 15.1 s at load 6: 3 × 72 × 15.1 + 18 × 7 s ≈ 3,400 s ≈ 57 min
                     (measured at 2 epochs with a load average of about 2: 16 min, so about 32 min at 4 epochs;
                     2 epochs left SimCLR only 3 points above the random-init probe)
    pacs:            6,144 of the 7,137 photo+sketch+cartoon train images = 24 steps/epoch × 3 epochs = 72 steps;
                     9 × (72 × 2.25 + 28) s + 5 s decoding ≈ 1,720 s ≈ 29 min

Budget of ``standard``. Its epochs come from SimCLR's measured curves (``python -m tc2ssl.benchmarks.simclr_curve
SUITE``, docs/results.md §9.1): colored_mnist 12, digits_transfer 8, pacs 8, cifar10_subset 12, each within about a
point of a 24-epoch run's end. Measured on pacs (seed 0, train.threads=2 beside one other one-thread job): rows
random_init 31 s, none 331 s, tasks 347 s, tc2 441 s, and the equal-compute row none@tc2 (11 epochs) about 455 s,
evaluations included: about 27 minutes per seed, 80 for 3 seeds (docs/results.md §9.2). Measured on
digits_transfer and colored_mnist (docs/results.md §9.3-§9.4; train.threads=1, two benchmarks side by side), the
rows random_init, none, tasks, tc2, umm with their controls (``none +E epochs``, ``none@tasks``, ``none@tc2``):
digits_transfer about 30 minutes per seed (none 233 s, tasks 252 s, tc2 331 s, umm 208 s, none +4 epochs 114 s,
none@tasks 275 s, none@tc2 356 s), 90 for 3 seeds; colored_mnist about 40 minutes per seed (none 299 s, tasks
337 s, tc2 480 s, umm 299 s, none +6 epochs 159 s, none@tasks 342 s, none@tc2 485 s), 2 hours for 3 seeds.
cifar10_subset (docs/results.md §9.5, the same rows and conditions, ``suite.k_values=[4]``): about 41 minutes per
seed (none 323 s, tasks 269 s, tc2 411 s, umm 297 s, none +6 epochs 181 s, none@tasks 417 s, none@tc2 564 s), 2 h
for 3 seeds, plus an estimated 22 minutes per seed for its K ablation. gessl rows add about 2 × a SimCLR run each.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tc2ssl.data.colored_mnist import COLORED_MNIST_RHO
from tc2ssl.errors import ConfigError

SUITE_OPTION_DEFAULTS: dict[str, Any] = {"max_test": 0, "k_values": [2, 4, 8, 16], "rho": COLORED_MNIST_RHO,
                                         "curve_every": 0, "curve_images": 1000, "equal_compute": 0,
                                         "posthoc_epochs": 0}


@dataclass(frozen=True)
class BenchmarkPreset:
    """Config overrides for every suite (``overrides``) and per suite (``suite_overrides``), default seeds and
    suite-option defaults (``options``, on top of :data:`SUITE_OPTION_DEFAULTS`)."""

    name: str
    description: str
    seeds: tuple[int, ...]
    overrides: tuple[str, ...]
    suite_overrides: dict[str, tuple[str, ...]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def overrides_for(self, suite: str) -> list[str]:
        return [*self.overrides, *self.suite_overrides.get(suite, ())]

    def options_for(self) -> dict[str, Any]:
        return {**SUITE_OPTION_DEFAULTS, **self.options}


SMOKE = BenchmarkPreset(
    name="smoke",
    description="seconds per suite: the pipeline end to end, not a measurement (tests run it for every suite)",
    seeds=(0,),
    overrides=("model.backbone=small_cnn_tiny", "train.epochs=1", "train.batch_size=32", "data.max_train=128",
               "train.progress=false", "eval.max_train=200", "eval.probe_cs=[1.0]", "eval.probe_max_iter=100",
               "plugin.conflict_every=1"),
    suite_overrides={"pacs": ("data.resolution=16",)},
    options={"max_test": 300, "k_values": [2, 8]},
)

CPU = BenchmarkPreset(
    name="cpu",
    description="about 30 minutes per suite on 2 shared CPU cores: 3 seeds × 3 plug-ins, small_cnn_tiny",
    seeds=(0, 1, 2),
    overrides=("model.backbone=small_cnn_tiny", "train.batch_size=256", "train.threads=2", "train.progress=false",
               "train.log_every=10", "eval.max_train=5000", "plugin.conflict_every=1"),
    suite_overrides={
        "pacs": ("data.resolution=32", "data.max_train=6144", "train.epochs=3"),
        "colored_mnist": ("data.max_train=7168", "train.epochs=4"),
        "digits_transfer": ("data.max_train=4096", "train.epochs=3"),
        "cifar10_subset": ("train.epochs=4",),
    },
)

#: the time-to-accuracy and equal-compute options of the measuring presets (standard, paper)
MEASURING_OPTIONS = {"curve_every": 2, "curve_images": 1000, "equal_compute": 2}

STANDARD = BenchmarkPreset(
    name="standard",
    description="the cpu preset's data and backbone, trained to near SimCLR's plateau (epochs from its measured "
                "curves, docs/results.md §9); time-to-accuracy curves and equal-compute rows on",
    seeds=(0, 1, 2),
    overrides=CPU.overrides,
    suite_overrides={
        # measured on this machine: SimCLR 79.2 average at 6 epochs, 87.8 at 12 (7,168 images; docs/results.md §9)
        "colored_mnist": ("data.max_train=7168", "train.epochs=12"),
        # measured (curves/digits_transfer_simclr_curve.json, seed 0): the USPS/MNIST-M average of a 24-epoch run's
        # snapshots, random init 55.7 → 64.1 / 64.5 / 62.9 / 64.4 / 64.4 / 64.2 at epochs 4-24: flat from epoch 4-8
        # (USPS 80.5 → 94.6 at 8; MNIST-M 31.0 → 34.5, then level)
        "digits_transfer": ("data.max_train=4096", "train.epochs=8"),
        # measured (docs/figures/benchmarks/curves/pacs_simclr_curve.json, seed 0): the 4-domain average of a
        # 24-epoch run's snapshots, random init 48.5 → 51.7 / 53.4 / 53.4 / 54.4 / 54.1 / 54.5 at epochs 4-24: at 8
        # epochs within 1.1 points of the end; the leave-one-domain-out average does not move (30.4 → 30.9)
        "pacs": ("data.resolution=32", "data.max_train=6144", "train.epochs=8"),
        # measured (curves/cifar10_subset_simclr_curve.json, seed 0): the linear probe of a 24-epoch run's snapshots,
        # random init 36.5 → 40.1 / 43.7 / 44.7 / 42.8 / 44.6 / 44.7 at epochs 4-24: flat from epoch 12
        "cifar10_subset": ("train.epochs=12",),
    },
    options=MEASURING_OPTIONS,
)

PAPER = BenchmarkPreset(
    name="paper",
    description="GPU scale: ResNet-18 (digits, CIFAR) / ResNet-50 (PACS, 224 px) at the papers' resolutions, all "
                "data, 3 seeds, bf16; run by scripts/gpu_benchmarks.sh",
    seeds=(0, 1, 2),
    overrides=("train.accelerator=gpu", "train.precision=bf16-mixed", "train.batch_size=256", "train.log_every=50",
               "train.progress=false", "method.proj_hidden_dim=2048", "method.proj_output_dim=128",
               "eval.batch_size=1024"),
    suite_overrides={
        "pacs": ("model.backbone=resnet50", "model.cifar_stem=false", "data.resolution=224", "train.epochs=100"),
        "colored_mnist": ("model.backbone=resnet18", "train.epochs=50"),
        "digits_transfer": ("model.backbone=resnet18", "train.epochs=50"),
        "cifar10_subset": ("model.backbone=resnet18", "train.epochs=200"),
    },
    options={**MEASURING_OPTIONS, "curve_every": 5, "curve_images": 2000},
)

PRESETS: dict[str, BenchmarkPreset] = {p.name: p for p in (SMOKE, CPU, STANDARD, PAPER)}


def get_preset(name: str) -> BenchmarkPreset:
    if name not in PRESETS:
        raise ConfigError(f"unknown benchmark preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return PRESETS[name]
