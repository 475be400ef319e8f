"""The benchmark suites of ``tc2ssl benchmark SUITE`` (D-BM-01; checks R4, R5, R5b, R6).

Usage: ``tc2ssl benchmark [--preset smoke|cpu|standard|paper] [--plugins none,tasks,tc2,gessl] [--seeds 0,1,2] SUITE
[key=value ...] [suite.KEY=VALUE ...]`` (argparse takes the options before SUITE or after the overrides, not
between them). ``key=value`` goes to the base config of every run (e.g. ``method.name=byol``); ``suite.KEY=VALUE``
sets a suite option (see :mod:`tc2ssl.benchmarks.presets`).

A suite pretrains one encoder per (row, seed) — a row is a plug-in, or for ``cifar10_subset`` also a TC² variant
of the K ablation — and evaluates the frozen encoder with linear probes on real data. Every row runs with the same
seeds, so rows are compared through per-seed (paired) differences against the baseline ``none``.

Outputs under ``out`` (default ``runs/benchmark/<suite>``):

- ``<row>_seed<seed>/``: the run folder(s) of each pretraining (``config.yaml``, ``metrics.jsonl``,
  ``checkpoint.pt``, ``encoder.safetensors``, ``curve.jsonl``) and ``benchmark.json`` (the run's config, metrics
  and full evaluation);
- ``results.json``: config, rows, seeds, per-run metrics, mean ± std per row and metric, paired differences
  against ``none`` with 95% t-intervals, the per-epoch inter-task gradient cosines, their Spearman correlation
  with the suite's primary metric (R3's question, over all runs) and, for ``cifar10_subset``, the K ablation;
  The equal-compute comparators and paired differences (``equal_compute``, ``paired_compute``:
  :mod:`tc2ssl.benchmarks.compute`) and the per-row time-to-accuracy curves (``curves``:
  :mod:`tc2ssl.benchmarks.curves`);
- ``results.md``: the same as tables; ``metrics.png`` (bars per row), ``conflict.png`` (Figure 1 curves),
  ``time_to_accuracy.png`` and, for ``cifar10_subset``, ``k_curve.png``.

Resuming: running the same command again reuses every run whose ``benchmark.json`` holds the same config (a
different config is refused, naming the differences), and continues an unfinished pretraining from its last epoch
checkpoint (train.resume); the results equal an uninterrupted run's.

Why one file of ~700 lines: the four suites are small functions around one driver (``run_benchmark``), its
summary and its report; each suite reads the driver's types (``Row``, ``SuiteContext``, ``RunOutcome``) and the
report reads each suite's metrics, so splitting them would scatter one data flow over several files. The
figures are in ``benchmarks/plots.py``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from tc2ssl import config as config_mod
from tc2ssl.benchmarks.checks import checks_markdown, read_run_diagnostics, run_checks
from tc2ssl.benchmarks.compute import COMPUTE_FROM_STEP_TIMING, match_compute, step_timing_seconds
from tc2ssl.benchmarks.curves import INIT_EPOCH, KnnCurve, read_curve, reset_curve, time_to_reach
from tc2ssl.benchmarks.plots import plot_k_curve, plot_metric_bars, plot_time_to_accuracy
from tc2ssl.benchmarks.presets import SUITE_OPTION_DEFAULTS, BenchmarkPreset, get_preset
from tc2ssl.benchmarks.stats import paired_difference, spearman, summarize
from tc2ssl.data import load_data
from tc2ssl.data.base import DataSplits, ImageSet
from tc2ssl.data.colored_mnist import COLOUR_NAMES, GROUP_NAMES, colored_mnist_splits, load_grey_mnist
from tc2ssl.data.folder import PACS_DOMAINS
from tc2ssl.errors import ConfigError, DataError
from tc2ssl.registry import Registry
from tc2ssl.train.checkpoint import atomic_write_text

BASELINE = "none"
#: the pseudo plug-in of ``--plugins``: the backbone at its seeded initialisation, evaluated without pretraining
RANDOM_INIT = "random_init"
DEFAULT_PLUGINS = (RANDOM_INIT, BASELINE, "tasks", "tc2", "gessl")
CONFIDENCE = 0.95
#: the suite options of every suite (tc2ssl.benchmarks.presets)
COMMON_OPTIONS = ("max_test", "curve_every", "curve_images", "equal_compute", "posthoc_epochs")
#: plug-ins that fine-tune a finished run (row ``umm``): they start from the same seed's ``none`` run
POSTHOC_PLUGINS = ("umm",)
#: the post-hoc optimiser settings (docs/umm.md: a smaller learning rate than pretraining, no warm-up)
POSTHOC_OVERRIDES = ("train.lr=5e-4", "train.warmup_epochs=0")
#: placeholders of a row's overrides, filled per (row, seed) by :func:`run_config`
OUT_PLACEHOLDER, SEED_PLACEHOLDER = "{out}", "{seed}"
TEST_SUBSET_SEED = 0


@dataclass(frozen=True)
class Row:
    """One line of a benchmark table: a plug-in with optional extra config overrides (a K-ablation variant, or
    another SSL method: ``--methods``). ``baseline`` is the label of the row it is paired with (the same method's
    ``none`` row)."""

    label: str
    plugin: str
    overrides: tuple[str, ...] = ()
    baseline: str = "none"
    untrained: bool = False        # the ``random_init`` row: the backbone at its seeded initialisation
    equal_compute: bool = True     # gets an equal-compute baseline row (tc2ssl.benchmarks.compute)

    @property
    def folder(self) -> str:
        return self.label.replace(" ", "_").replace("=", "").replace("/", "_")


@dataclass
class RunOutcome:
    """What a suite returns for one (row, seed): metrics in [0, 1], the full evaluation, the pretraining folders."""

    metrics: dict[str, float]
    details: dict
    run_dirs: list[Path]


@dataclass
class SuiteContext:
    """What every run of a suite shares: the suite options, the evaluation device and a cache of loaded data."""

    options: dict[str, Any]
    device: torch.device
    cache: dict = field(default_factory=dict)
    untrained: bool = False        # set per run: evaluate the initialised backbone instead of pretraining it
    #: run folder -> a backbone to evaluate instead of pretraining one (snapshots: benchmarks.simclr_curve)
    backbones: dict[str, torch.nn.Module] = field(default_factory=dict)

    def cached(self, key: tuple, factory: Callable[[], Any]) -> Any:
        if key not in self.cache:
            self.cache[key] = factory()
        return self.cache[key]


@dataclass(frozen=True)
class Suite:
    name: str
    title: str
    metrics: tuple[str, ...]
    primary: str
    overrides: tuple[str, ...]
    run: Callable[[config_mod.RunConfig, SuiteContext], RunOutcome]
    options: tuple[str, ...] = COMMON_OPTIONS
    extra_rows: Callable[[config_mod.RunConfig, list[str], dict], list[Row]] | None = None
    report: Callable[[dict, config_mod.RunConfig, Path], tuple[str, dict, list[Path]]] | None = None

    @property
    def protocol(self) -> str:
        """The suite function's docstring: the protocol, as shown in results.md."""
        return " ".join((self.run.__doc__ or "").split())


SUITES: Registry[Suite] = Registry("benchmark suite", "tc2ssl benchmark SUITE")


def register_suite(name: str, title: str, metrics: tuple[str, ...], primary: str, overrides: tuple[str, ...],
                   options: tuple[str, ...] = (), extra_rows=None, report=None):
    """Register the decorated per-run function as suite ``name`` (its docstring is the suite's protocol)."""
    def decorator(run: Callable[[config_mod.RunConfig, SuiteContext], RunOutcome]):
        SUITES.register(name)(Suite(name, title, metrics, primary, overrides, run, (*COMMON_OPTIONS, *options),
                                    extra_rows, report))
        return run

    return decorator


# ---------------------------------------------------------------------------------------------------- helpers
def random_subset(images: ImageSet, max_images: int, seed: int) -> ImageSet:
    """At most ``max_images`` images (0 = all), drawn as :func:`tc2ssl.data.load_data` (seed 0) and
    :func:`tc2ssl.eval.evaluate.evaluate_backbone` (the run's seed) draw theirs: a seeded permutation's first
    ``max_images``, in their original order."""
    if max_images <= 0 or len(images) <= max_images:
        return images
    generator = torch.Generator().manual_seed(seed)
    return images.subset(torch.randperm(len(images), generator=generator)[:max_images].sort().values)


def capped(images: ImageSet, max_images: int) -> ImageSet:
    """A test set cut to ``max_images`` (suite.max_test): a fixed seed-0 subset, the same for every run."""
    return random_subset(images, max_images, TEST_SUBSET_SEED)


def eval_device(cfg: config_mod.RunConfig) -> torch.device:
    wants_gpu = cfg.train.accelerator in ("gpu", "cuda", "auto")
    return torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")


def single_threaded_blas():
    """Probes run with one BLAS thread: scikit-learn's L-BFGS on a few thousand features is memory-bound, and on a
    busy machine OpenBLAS threads spinning on each other made one fit up to 100× slower (6 s instead of 0.05 s)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def pretrain_backbone(cfg: config_mod.RunConfig, data: DataSplits, ctx: SuiteContext):
    """Pretrain ``cfg`` on ``data``; return the exported (frozen) backbone and the run folder. For the
    ``random_init`` row (``ctx.untrained``): the same backbone at the initialisation its pretraining starts from
    (same seed), untrained; its folder holds only ``config.yaml``. A run folder holding a checkpoint of the same
    config resumes from it (train.resume). With ``suite.curve_every`` > 0 the kNN time-to-accuracy curve is
    recorded during pretraining (:mod:`tc2ssl.benchmarks.curves`)."""
    from tc2ssl.train.checkpoint import CHECKPOINT_NAME
    from tc2ssl.train.loop import epoch_end_hook, pretrain
    from tc2ssl.workflows import load_backbone, random_init_backbone

    run_dir = Path(cfg.out)
    if str(run_dir) in ctx.backbones:
        return ctx.backbones[str(run_dir)].eval(), run_dir
    if ctx.untrained:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", config_mod.to_yaml(cfg))
        return random_init_backbone(cfg, int(data.train.images.shape[1])).eval(), run_dir
    curve = knn_curve(cfg, data, ctx)
    if curve is None:
        run_dir = pretrain(cfg, data)
    else:
        if not (run_dir / CHECKPOINT_NAME).exists():   # a fresh run: its curve starts at the initialisation,
            reset_curve(run_dir)                        # for a post-hoc run the finished run it starts from
            start = (load_backbone(Path(cfg.train.init_from))[0] if cfg.train.init_from
                     else random_init_backbone(cfg, int(data.train.images.shape[1])))
            curve.record(INIT_EPOCH, start, defer=True)
        with epoch_end_hook(curve):
            run_dir = pretrain(cfg, data)
    backbone, _ = load_backbone(run_dir)
    return backbone, run_dir


def knn_curve(cfg: config_mod.RunConfig, data: DataSplits, ctx: SuiteContext) -> KnnCurve | None:
    """The run's time-to-accuracy hook, or None (suite.curve_every=0, or no labelled train/test split)."""
    every, n_images = int(ctx.options.get("curve_every", 0)), int(ctx.options.get("curve_images", 0))
    if every <= 0 or data.test is None or data.train.labels is None or data.test.labels is None:
        return None
    return KnnCurve(Path(cfg.out), random_subset(data.train, n_images, TEST_SUBSET_SEED),
                    capped(data.test, n_images), every, cfg.train.epochs - 1, cfg.eval.knn_k,
                    cfg.eval.knn_temperature, cfg.eval.batch_size, ctx.device)


# ---------------------------------------------------------------------------------------------------- D1 PACS
def select_c_on_validation(train_x, train_y, val_x, val_y, test_x, test_y, cs, max_iter: int) -> dict:
    """DomainBed's "training-domain validation" model selection for a linear probe: for every C fit on the
    training domains' train splits, keep the fit with the best accuracy on their crossval splits (ties: the
    larger C), report its test accuracy. The fit is the linear probe's own (standardised features, L-BFGS)."""
    from tc2ssl.eval.linear_probe import _fit

    train_x, val_x, test_x = (x.double().numpy() for x in (train_x, val_x, test_x))
    train_y, val_y, test_y = (y.numpy() for y in (train_y, val_y, test_y))
    val_accuracy, best = {}, None
    for c in sorted({float(c) for c in cs}, reverse=True):
        model = _fit(train_x, train_y, c, max_iter)
        val_accuracy[c] = float(model.score(val_x, val_y))
        if best is None or val_accuracy[c] > val_accuracy[best[0]]:
            best = (c, model)
    return {"accuracy": float(best[1].score(test_x, test_y)), "best_c": best[0], "val_accuracy": val_accuracy,
            "n_train": int(len(train_y)), "n_val": int(len(val_y)), "n_test": int(len(test_y))}


@register_suite(
    "pacs", "PACS: per-domain and leave-one-domain-out linear probes (D1, Table 3)",
    metrics=(*PACS_DOMAINS, "average", *(f"lodo_{d}" for d in PACS_DOMAINS), "lodo_average"), primary="average",
    overrides=("data.name=pacs", "data.domains=[photo,sketch,cartoon]"))
def pacs(cfg: config_mod.RunConfig, ctx: SuiteContext) -> RunOutcome:
    """SSL without labels on the official train splits of data.domains (photo, sketch, cartoon; art_painting is
    the unseen domain). Per domain: a linear probe trained on the domain's official train split (C chosen on a
    held-out 20% of it), tested on its official crossval split. The official test list of a PACS domain is the
    whole domain (train + crossval), so testing a probe trained on the train split there would score mostly
    training images; crossval is the disjoint held-out part. The columns photo..sketch are these accuracies,
    "average" their mean. Leave-one-domain-out (lodo_*): a probe trained on the train splits of the 3 other
    domains, C selected on their crossval splits (DomainBed's training-domain validation), tested on the held-out
    domain's official test split (the whole domain). eval.max_train caps each domain's train split, suite.max_test
    each test set."""
    from tc2ssl.eval.features import extract_features
    from tc2ssl.eval.linear_probe import linear_probe
    from tc2ssl.gessl.sigma import sigma_task

    data = load_data(cfg.data)
    backbone, run_dir = pretrain_backbone(cfg, data, ctx)
    ev = cfg.eval
    sets = {}
    for domain in PACS_DOMAINS:
        sets[f"{domain}_train"] = random_subset(data.extra[f"{domain}_train"], ev.max_train, cfg.seed)
        sets[f"{domain}_crossval"] = capped(data.extra[f"{domain}_crossval"], ctx.options["max_test"])
        sets[f"{domain}_test"] = capped(data.extra[f"{domain}_test"], ctx.options["max_test"])
    features = {key: extract_features(backbone, s.images, ev.batch_size, ctx.device) for key, s in sets.items()}
    labels = {key: s.labels for key, s in sets.items()}

    details: dict[str, dict] = {}
    for domain in PACS_DOMAINS:
        train, test = f"{domain}_train", f"{domain}_crossval"
        probe = linear_probe(features[train], labels[train], features[test], labels[test], ev.probe_cs,
                             val_fraction=ev.val_fraction, max_iter=ev.probe_max_iter, seed=cfg.seed,
                             return_probabilities=True)
        task_sigma = sigma_task(probe.pop("probabilities"), labels[test], probe.pop("classes"))
        details[domain] = {**probe, "universality": {"sigma_task": task_sigma["sigma"], "U_task": task_sigma["U"]}}
        others = [d for d in PACS_DOMAINS if d != domain]
        train_x, train_y, val_x, val_y = (torch.cat([table[f"{d}_{split}"] for d in others])
                                          for split in ("train", "crossval") for table in (features, labels))
        details[f"lodo_{domain}"] = select_c_on_validation(train_x, train_y, val_x, val_y, features[f"{domain}_test"],
                                                           labels[f"{domain}_test"], ev.probe_cs, ev.probe_max_iter)
    metrics = {name: details[name]["accuracy"] for name in details}
    metrics["average"] = statistics.fmean(metrics[d] for d in PACS_DOMAINS)
    metrics["lodo_average"] = statistics.fmean(metrics[f"lodo_{d}"] for d in PACS_DOMAINS)
    return RunOutcome(metrics, details, [run_dir])


# ---------------------------------------------------------------------------------------------------- D2 ColoredMNIST
def colored_training_data(data_cfg: config_mod.DataConfig, rho: float) -> DataSplits:
    """Colored MNIST at ρ = ``rho`` with data.max_train applied as :func:`tc2ssl.data.load_data` does (a seed-0
    random subset of the coloured training split), so the suite sees what ``data.name=colored_mnist`` gives."""
    splits = colored_mnist_splits(load_grey_mnist(data_cfg), rho)
    splits.train = random_subset(splits.train, data_cfg.max_train, seed=0)
    return splits


@register_suite(
    "colored_mnist", "Colored MNIST: average and worst-group accuracy under a colour shortcut (D2, Table 4)",
    metrics=("average", "worst_group", "aligned", "conflicting"), primary="average",
    overrides=("data.name=colored_mnist",), options=("rho",))
def colored_mnist(cfg: config_mod.RunConfig, ctx: SuiteContext) -> RunOutcome:
    """SSL without labels on the coloured MNIST training split, where digit c has colour c with probability
    suite.rho (Gat et al. 2020; Nam et al. 2020). A linear probe is trained on that biased split (eval.max_train
    images) and tested on the test split with uniformly random colours. "average": the probe's test accuracy;
    "worst_group": its lowest accuracy over the 100 (digit, colour) groups; "aligned" / "conflicting": its mean
    accuracy over the 10 groups whose colour is the digit's own / over the 90 others."""
    from tc2ssl.eval.evaluate import evaluate_backbone

    rho = float(ctx.options["rho"])
    data = ctx.cached(("colored_mnist", repr(cfg.data), rho), lambda: colored_training_data(cfg.data, rho))
    backbone, run_dir = pretrain_backbone(cfg, data, ctx)
    results = evaluate_backbone(backbone, data.train, capped(data.test, ctx.options["max_test"]), cfg.eval,
                                device=ctx.device, seed=cfg.seed)
    aligned_names = {GROUP_NAMES[10 * c + c] for c in range(len(COLOUR_NAMES))}
    groups = results["groups"]
    metrics = {
        "average": results["linear_probe"]["accuracy"],
        "worst_group": results["worst_group"],
        "aligned": statistics.fmean(v for k, v in groups.items() if k in aligned_names),
        "conflicting": statistics.fmean(v for k, v in groups.items() if k not in aligned_names),
    }
    return RunOutcome(metrics, {"rho": rho, **results}, [run_dir])


# ---------------------------------------------------------------------------------------------------- D3 digits
@register_suite(
    "digits_transfer", "Digits transfer: MNIST -> USPS and MNIST -> MNIST-M (D3, R5b)",
    metrics=("usps", "mnistm", "average"), primary="average", overrides=("data.name=mnist", "data.resolution=28"))
def digits_transfer(cfg: config_mod.RunConfig, ctx: SuiteContext) -> RunOutcome:
    """Two SSL runs without labels on the MNIST training split at 28 px: grey (folder mnist_grey) and replicated
    to RGB with data.channels=3 (folder mnist_rgb). USPS: a linear probe on the grey encoder, trained on USPS's
    train split and tested on its test split, both framed like MNIST (resized to 20×20 and zero-padded to 28×28).
    MNIST-M: a linear probe on the RGB encoder, trained on the fixed 7,000-image train part of MNIST-M and tested
    on its 2,001-image test part, at 28 px. "average" is the mean of the two accuracies."""
    from tc2ssl.eval.evaluate import evaluate_backbone
    from tc2ssl.workflows import load_eval_splits

    details, run_dirs = {}, []
    for target, channels in (("usps", 1), ("mnistm", 3)):
        folder = "mnist_grey" if channels == 1 else "mnist_rgb"
        start = cfg.train.init_from and str(Path(cfg.train.init_from) / folder)   # post-hoc rows: the same sub-run
        run_cfg = dataclasses.replace(cfg, out=str(Path(cfg.out) / folder),
                                      data=dataclasses.replace(cfg.data, channels=channels),
                                      train=dataclasses.replace(cfg.train, init_from=start or None))
        data = ctx.cached(("mnist", repr(run_cfg.data)), lambda: load_data(run_cfg.data))
        backbone, run_dir = pretrain_backbone(run_cfg, data, ctx)
        splits = ctx.cached((target, channels), lambda: load_eval_splits(
            run_cfg, channels, data.train.resolution, target, cfg.data.root))
        results = evaluate_backbone(backbone, splits.train, capped(splits.test, ctx.options["max_test"]), cfg.eval,
                                    device=ctx.device, seed=cfg.seed)
        details[target] = results
        run_dirs.append(run_dir)
    metrics = {target: details[target]["linear_probe"]["accuracy"] for target in ("usps", "mnistm")}
    metrics["average"] = statistics.fmean(metrics.values())
    return RunOutcome(metrics, details, run_dirs)


# ---------------------------------------------------------------------------------------------------- D4 CIFAR-10
def k_ablation_rows(base: config_mod.RunConfig, plugins: list[str], options: dict) -> list[Row]:
    """TC² at every K of suite.k_values other than the base plugin.n_tasks (that one is the ``tc2`` row)."""
    if "tc2" not in plugins:
        return []
    return [Row(f"tc2 K={k}", "tc2", (f"plugin.n_tasks={k}",), equal_compute=False) for k in options["k_values"]
            if k != base.plugin.n_tasks]


def gessl_fairness_rows(base: config_mod.RunConfig, plugins: list[str]) -> list[Row]:
    """With a ``gessl`` row: the baseline at GeSSL's task size, ``none batch=N/M``. GeSSL splits each batch of N
    images into M tasks, so the plain ``none`` row (batch N, equal images seen) is the baseline at batch M·(N/M);
    this row is the baseline at GeSSL's own mini-batch, also at equal images seen (docs/gessl.md)."""
    n_batches = base.plugin.gessl.n_batches
    if "gessl" not in plugins or BASELINE not in plugins or n_batches < 2:
        return []
    task_batch = base.train.batch_size // n_batches
    return [Row(f"none batch={task_batch}", BASELINE, (f"train.batch_size={task_batch}",))]


def posthoc_rows(base: config_mod.RunConfig, plugins: list[str], options: dict) -> list[Row]:
    """With a post-hoc plug-in (``umm``): its row fine-tunes the same seed's ``none`` run for E epochs
    (``suite.posthoc_epochs``; 0 = half the pretraining epochs, at least 1) at lr 5e-4 without warm-up, and the
    row ``none +E epochs`` continues plain SSL from the same run for the same epochs and settings: UMM's control
    (more training of the same kind), which the UMM row is paired with. Both run after ``none``."""
    wanted = [p for p in plugins if p in POSTHOC_PLUGINS]
    if not wanted:
        return []
    if BASELINE not in plugins:
        raise ConfigError(f"--plugins {','.join(wanted)} needs {BASELINE} as well: post-hoc rows fine-tune the "
                          f"{BASELINE} row's run of the same seed")
    epochs = options["posthoc_epochs"] or max(1, base.train.epochs // 2)
    start = (f"train.init_from={OUT_PLACEHOLDER}/{BASELINE}_seed{SEED_PLACEHOLDER}", f"train.epochs={epochs}",
             *POSTHOC_OVERRIDES)
    control = Row(f"{BASELINE} +{epochs} epochs", BASELINE, start, equal_compute=False)
    return [control, *(Row(p, p, start, baseline=control.label, equal_compute=False) for p in wanted)]


def plugin_row(spec: str) -> Row:
    """The row of one ``--plugins`` entry: a plug-in name, or a variant ``NAME key=value ...`` whose overrides apply
    to that row only (an ablation beside the default rows, paired with the same ``none`` runs), labelled by the
    entry's text. ``preset=NAME`` in a variant stands for a config preset's overrides (``tc2 preset=calibrated``
    is the row ``tc2ssl benchmark -p calibrated`` would give, beside the default tc2 row). The calibration
    controls (``tc2_frozen``, ``random_proj``, ``tasks_nf``) get no equal-compute
    comparator: they are compared with TC² at equal epochs (:func:`tc2_against_controls`), and no user picks a
    control for its accuracy per second."""
    from tc2ssl.plugins.tc2_controls import CONTROL_PLUGINS

    name, *overrides = spec.split()
    if overrides and name in (RANDOM_INIT, *POSTHOC_PLUGINS):
        raise ConfigError(f"--plugins {spec!r}: {name} takes no per-row overrides (give them to every row as "
                          "key=value instead)")
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(f"--plugins {spec!r}: {bad[0]!r} is not key=value (a row variant is 'NAME key=value ...')")
    expanded = [item for o in overrides
                for item in (config_mod.preset_overrides(o.split("=", 1)[1]) if o.startswith("preset=") else [o])]
    return Row(spec, name, tuple(expanded), equal_compute=name not in CONTROL_PLUGINS)


def method_rows(base: config_mod.RunConfig, plugins: list[str], methods: list[str] | tuple[str, ...]) -> list[Row]:
    """Rows ``METHOD/PLUGIN`` for every method of ``methods`` other than the base config's (``--methods``)."""
    from tc2ssl.methods import METHODS

    rows = []
    for method in dict.fromkeys(m.strip() for m in methods if m.strip()):
        METHODS.get(method)  # an unknown name fails here, listing the valid ones
        if method != base.method.name:
            rows += [dataclasses.replace(row, label=f"{method}/{row.label}", baseline=f"{method}/none",
                                         overrides=(f"method.name={method}", *row.overrides))
                     for row in map(plugin_row, plugins)
                     if row.label != RANDOM_INIT]  # the random-init backbone does not depend on the method
    return rows


def k_ablation_report(result: dict, base: config_mod.RunConfig, out: Path) -> tuple[str, dict, list[Path]]:
    """The K curve (Table 13, R6): linear-probe accuracy of TC² against K, with the baseline as a line."""
    summary = result["summary"]
    curve = {}
    for label in summary:
        if label == "tc2":
            curve[base.plugin.n_tasks] = summary[label]["linear_probe"]
        elif label.startswith("tc2 K="):
            curve[int(label.split("=", 1)[1])] = summary[label]["linear_probe"]
    if not curve:
        return "k_ablation", {}, []
    curve = dict(sorted(curve.items()))
    references = {label: summary[label]["linear_probe"]["mean"] for label in ("none", "tasks") if label in summary}
    png = plot_k_curve(curve, references, out / "k_curve.png",
                       f"{base.method.name} + TC² on cifar10_subset: K ablation (batch {base.train.batch_size})")
    return "k_ablation", {str(k): v for k, v in curve.items()}, [png]


@register_suite(
    "cifar10_subset", "CIFAR-10 subset: in-domain linear probe and the K ablation (D4, Table 13)",
    metrics=("linear_probe", "knn"), primary="linear_probe", overrides=("data.name=cifar10_subset",),
    options=("k_values",), extra_rows=k_ablation_rows, report=k_ablation_report)
def cifar10_subset(cfg: config_mod.RunConfig, ctx: SuiteContext) -> RunOutcome:
    """SSL without labels on the 4,660 training images of the genuine CIFAR-10 subset; a linear probe (C chosen
    on a held-out 20%) and a weighted kNN (k = eval.knn_k) trained on them (eval.max_train images) and tested on
    the 846 test images. With the tc2 plug-in, TC² also runs at every K of suite.k_values (rows "tc2 K=k"; the
    tc2 row is K = plugin.n_tasks), all at the same batch size, for the K curve."""
    from tc2ssl.eval.evaluate import evaluate_backbone

    data = ctx.cached(("cifar10_subset", repr(cfg.data)), lambda: load_data(cfg.data))
    backbone, run_dir = pretrain_backbone(cfg, data, ctx)
    results = evaluate_backbone(backbone, data.train, capped(data.test, ctx.options["max_test"]), cfg.eval,
                                device=ctx.device, seed=cfg.seed)
    metrics = {"linear_probe": results["linear_probe"]["accuracy"], "knn": results["knn"]["accuracy"]}
    return RunOutcome(metrics, results, [run_dir])


# ---------------------------------------------------------------------------------------------------- driver
def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2] (the --seeds argument)."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got {text!r}") from None


def suite_options(suite: Suite, preset: BenchmarkPreset, overrides: list[str]) -> tuple[dict, list[str]]:
    """Split ``suite.KEY=VALUE`` options (validated against the suite's options) from the config overrides."""
    options = {k: v for k, v in preset.options_for().items() if k in suite.options}
    rest = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not key.startswith("suite."):
            rest.append(item)
            continue
        name = key[len("suite."):]
        if not sep or name not in suite.options:
            raise ConfigError(f"bad suite option {item!r}: suite {suite.name!r} takes "
                              f"{', '.join(f'suite.{o}=VALUE' for o in suite.options)}")
        parsed = yaml.safe_load(value)
        default = SUITE_OPTION_DEFAULTS[name]
        if isinstance(default, list):
            ok = isinstance(parsed, list) and parsed and all(isinstance(v, int) and v >= 1 for v in parsed)
        elif isinstance(default, float):
            ok = isinstance(parsed, (int, float)) and not isinstance(parsed, bool) and 0.0 <= parsed <= 1.0
        else:
            ok = isinstance(parsed, int) and not isinstance(parsed, bool) and parsed >= 0
            if ok and name == "equal_compute" and parsed > 2:
                raise ConfigError(f"bad suite option {item!r}: 0 = no equal-compute rows, 1 = matched on the runs' "
                                  "own seconds, 2 = on interleaved step timing")
        if not ok:
            raise ConfigError(f"bad suite option {item!r}: expected {type(default).__name__} like {default!r}")
        options[name] = float(parsed) if isinstance(default, float) else parsed
    return options, rest


def run_config(base_overrides: list[str], row: Row, seed: int, out: Path) -> config_mod.RunConfig:
    """The validated config of ``row`` at ``seed``; train.resume=true: a checkpoint of the same config in its
    folder is continued (a different one is refused by the training loop)."""
    overrides = [o.replace(OUT_PLACEHOLDER, str(out)).replace(SEED_PLACEHOLDER, str(seed)) for o in row.overrides]
    return config_mod.load_config((), [*base_overrides, "train.resume=true", f"plugin.name={row.plugin}",
                                       *overrides, f"seed={seed}", f"out={out / f'{row.folder}_seed{seed}'}"])


def run_row(suite: Suite, row: Row, run_cfg: config_mod.RunConfig, ctx: SuiteContext) -> dict:
    """Run (or reuse) one (row, seed): a folder whose benchmark.json holds a finished run of the same config is
    reused; one of another config is refused (ConfigError naming the differences); otherwise the pretraining runs,
    resuming from a checkpoint of the same config. Writes benchmark.json; returns the run's record."""
    from tc2ssl.train.loop import _config_diff, _resolved

    finished, wanted = Path(run_cfg.out) / "benchmark.json", config_mod.to_dict(run_cfg)
    if finished.is_file():
        stored = json.loads(finished.read_text(encoding="utf-8"))
        diffs = (_config_diff(_resolved(stored["config"]), wanted) if isinstance(stored.get("config"), dict)
                 else ["no config recorded"])
        if diffs:
            raise ConfigError(f"{finished} holds a finished run of another config ({'; '.join(diffs)}): give "
                              f"another out=DIR or delete {run_cfg.out} to re-run it")
        print(f"benchmark {suite.name}: {row.label}, seed {run_cfg.seed}: reusing the finished run in {run_cfg.out}",
              file=sys.stderr)
        record = {key: stored[key] for key in RECORD_KEYS if key != "universality"}
        record["universality"] = stored.get("universality") or universality_of(stored.get("details") or {})
        return record
    print(f"benchmark {suite.name}: {row.label}, seed {run_cfg.seed} -> {run_cfg.out}", file=sys.stderr)
    start = time.perf_counter()
    ctx.untrained = row.untrained
    with single_threaded_blas():  # numpy / scipy / scikit-learn only: torch does not use this OpenBLAS
        outcome = suite.run(run_cfg, ctx)
    record = {"metrics": outcome.metrics, "seconds": time.perf_counter() - start,
              "run_dirs": [str(p) for p in outcome.run_dirs],
              "diagnostics": {p.name: read_run_diagnostics(p) for p in outcome.run_dirs},
              "curve": {p.name: read_curve(p, run_cfg.train.batch_size) for p in outcome.run_dirs}}
    record["conflict"] = {name: [] if d is None else [c for c in d["cos_mean"] if c is not None]
                          for name, d in record["diagnostics"].items()}   # per-epoch mean cosines
    record["universality"] = universality_of(outcome.details)
    atomic_write_text(Path(run_cfg.out) / "benchmark.json", json.dumps(_json_safe(
        {**record, "config": wanted, "details": outcome.details}), indent=2) + "\n")
    return record


#: what results.json keeps of each run (benchmark.json adds the config and the full evaluation)
RECORD_KEYS = ("metrics", "seconds", "run_dirs", "diagnostics", "curve", "conflict", "universality")
#: GeSSL's σ measurements a run's evaluation may hold (lower σ, higher U = exp(−σ) is better)
UNIVERSALITY_KEYS = ("sigma_task", "U_task", "sigma_ssl", "U_ssl")


def universality_of(details: dict) -> dict[str, float]:
    """The mean of every ``"universality"`` entry in a run's evaluation details (one per linear probe: a suite
    with several probes, such as pacs's domains or digits_transfer's two targets, averages them), by key."""
    found: dict[str, list[float]] = {}

    def walk(node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "universality" and isinstance(value, dict):
                    for name in UNIVERSALITY_KEYS:
                        if isinstance(value.get(name), (int, float)):
                            found.setdefault(name, []).append(float(value[name]))
                else:
                    walk(value)

    walk(details)
    return {name: statistics.fmean(values) for name, values in found.items()}


def run_benchmark(suite_name: str, preset_name: str = "cpu",
                  plugins: list[str] | tuple[str, ...] = DEFAULT_PLUGINS, seeds: list[int] | None = None,
                  overrides: list[str] | tuple[str, ...] = (), methods: list[str] | tuple[str, ...] = ()) -> dict:
    """Run ``suite_name`` at ``preset_name`` scale for every plug-in and seed; write results.json / results.md /
    plots under ``out``. ``overrides``: ``key=value`` for the base config and ``suite.KEY=VALUE`` suite options.
    ``methods``: further SSL methods, each run with every plug-in as rows ``METHOD/PLUGIN`` paired with
    ``METHOD/none`` (the base config's ``method.name`` keeps the plain plug-in labels). Every run's config is built
    and validated before any work starts. Returns the content of results.json."""
    suite = SUITES.get(suite_name)
    preset = get_preset(preset_name)
    options, cfg_overrides = suite_options(suite, preset, list(overrides))
    fixed = [o for o in cfg_overrides if o.partition("=")[0].strip() == "data.name"]
    if fixed:
        raise ConfigError(f"{fixed[0]!r}: suite {suite.name!r} sets data.name itself")
    plugins = list(dict.fromkeys(" ".join(p.split()) for p in plugins if p.strip()))
    seeds = list(dict.fromkeys(preset.seeds if seeds is None else seeds))
    if not plugins or not seeds:
        raise ConfigError("a benchmark needs at least one plug-in (--plugins) and one seed (--seeds)")
    base_overrides = [f"out=runs/benchmark/{suite.name}", *preset.overrides_for(suite.name), *suite.overrides,
                      *cfg_overrides]
    base = config_mod.load_config((), base_overrides)
    out = Path(base.out)
    rows = [Row(p, BASELINE, untrained=True) if p == RANDOM_INIT else plugin_row(p) for p in plugins
            if p not in POSTHOC_PLUGINS]
    rows += suite.extra_rows(base, plugins, options) if suite.extra_rows else []
    rows += posthoc_rows(base, plugins, options)
    rows += gessl_fairness_rows(base, plugins)
    rows += method_rows(base, plugins, methods)
    run_cfgs = {(row.label, seed): run_config(base_overrides, row, seed, out) for row in rows for seed in seeds}

    out.mkdir(parents=True, exist_ok=True)
    ctx = SuiteContext(options, eval_device(base))
    runs: dict[str, dict[str, dict]] = {row.label: {} for row in rows}
    matches = []
    for seed in seeds:  # seed-major: an interrupted benchmark leaves complete pairs behind
        for row in rows:
            runs[row.label][str(seed)] = run_row(suite, row, run_cfgs[(row.label, seed)], ctx)
        if seed == seeds[0] and options.get("equal_compute"):
            timed = (step_timing_seconds(rows, runs, str(seed), out)
                     if options["equal_compute"] == COMPUTE_FROM_STEP_TIMING else None)
            matches, compute_rows = match_compute(rows, runs, str(seed), timed)
            for row in compute_rows:   # the baseline at each plug-in's wall-clock, from this seed on
                run_cfgs.update({(row.label, other): run_config(base_overrides, row, other, out) for other in seeds})
                runs[row.label] = {str(seed): run_row(suite, row, run_cfgs[(row.label, seed)], ctx)}
            rows += compute_rows

    result = summarize_runs(suite, preset, base, rows, seeds, options, runs, matches)
    finish_results(suite, result, base, out)
    print(f"benchmark results: {out / 'results.md'}", file=sys.stderr)
    return result


def finish_results(suite: Suite, result: dict, base: config_mod.RunConfig, out: Path) -> None:
    """Add the plots, the suite's own report and the checks to ``result`` (summarize_runs' output); write
    results.json, results.md and the figures under ``out``."""
    runs = result["runs"]
    plots = [plot_metric_bars(result["summary"], list(suite.metrics), out / "metrics.png",
                              f"{suite.title} ({base.method.name}, preset {result['preset']})")]
    time_plot = plot_time_to_accuracy(result["curves"], out / "time_to_accuracy.png",
                                      f"{suite.name}: frozen-backbone kNN during pretraining (mean over seeds)")
    plots += [time_plot] if time_plot is not None else []
    series = {f"{label} seed {seed}" + (f" ({name})" if len(rec["conflict"]) > 1 else ""): values
              for label, by_seed in runs.items() for seed, rec in by_seed.items()
              for name, values in rec["conflict"].items() if values}
    if series:
        from tc2ssl.diagnostics.figure1 import plot_figure1

        plots.append(plot_figure1(series, out / "conflict.png",
                                  f"{base.method.name} on {suite.name}: inter-task gradient cosine per epoch"))
    if suite.report is not None:
        key, extra, extra_plots = suite.report(result, base, out)
        result[key] = extra
        plots += extra_plots
    result["plots"] = [p.name for p in plots]
    result["checks"] = run_checks(result)
    write_results(suite, result, out)


def write_results(suite: Suite, result: dict, out: Path) -> None:
    atomic_write_text(out / "results.json", json.dumps(_json_safe(result), indent=2) + "\n")
    atomic_write_text(out / "results.md", results_markdown(suite, result))


def recheck(out_dir: str | Path) -> dict:
    """Recompute the checks (docs/decisions.md) of a finished benchmark from ``out_dir/results.json`` (and its run
    folders, where still on disk) and rewrite its results.json and results.md (``tc2ssl recheck DIR``)."""
    path = Path(out_dir) / "results.json"
    if not path.is_file():
        raise DataError(f"no benchmark results at {path} (run `tc2ssl benchmark SUITE` first)")
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
        suite = SUITES.get(result["suite"])
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise DataError(f"{path} is not a tc2ssl benchmark results file ({error})") from None
    result["checks"] = run_checks(result)
    write_results(suite, result, Path(out_dir))
    return result


def summarize_runs(suite: Suite, preset: BenchmarkPreset, base: config_mod.RunConfig, rows: list[Row],
                   seeds: list[int], options: dict, runs: dict, matches: list | None = None) -> dict:
    """results.json without the plots: mean ± std per row and metric, paired differences against ``none`` (equal
    epochs) and against each row's equal-compute comparator (``matches``, :mod:`tc2ssl.benchmarks.compute`), the
    per-row time-to-accuracy curves, and the Spearman correlation between each run's early conflict (mean cosine
    over the first half of its epochs, of its first pretraining) and its primary metric."""
    keys = [str(s) for s in seeds]
    summary = {row.label: {m: summarize([runs[row.label][k]["metrics"][m] for k in keys]).as_dict()
                           for m in suite.metrics} for row in rows}
    paired = {row.label: paired_rows(runs, row.label, row.baseline, keys, suite.metrics) for row in rows
              if row.label != row.baseline and row.baseline in runs}
    paired_compute = {match.row: paired_rows(runs, match.row, match.comparator, keys, suite.metrics)
                      for match in matches or ()}
    universality, paired_universality = {}, {}
    for row in rows:
        per_seed = [runs[row.label][k].get("universality") or {} for k in keys]
        shared = [name for name in UNIVERSALITY_KEYS if all(name in u for u in per_seed)]
        universality[row.label] = {name: summarize([u[name] for u in per_seed]).as_dict() for name in shared}
    for row in rows:
        if row.label != row.baseline and row.baseline in runs:
            of_baseline = universality.get(row.baseline, {})
            paired_universality[row.label] = {
                name: paired_difference([runs[row.label][k]["universality"][name] for k in keys],
                                        [runs[row.baseline][k]["universality"][name] for k in keys],
                                        CONFIDENCE).as_dict()
                for name in universality[row.label] if name in of_baseline}
    time_to_baseline = baseline_time_to_accuracy(rows, runs, keys)
    controls = tc2_against_controls([dataclasses.asdict(row) for row in rows], runs, keys, list(suite.metrics))
    early, primary = [], []
    for by_seed in runs.values():
        for record in by_seed.values():
            first = next(iter(record["conflict"].values()), [])
            if first:
                early.append(statistics.fmean(first[:math.ceil(len(first) / 2)]))
                primary.append(record["metrics"][suite.primary])
    return {
        "suite": suite.name, "title": suite.title, "protocol": suite.protocol, "preset": preset.name,
        "metrics": list(suite.metrics), "primary": suite.primary, "baseline": BASELINE,
        "rows": [dataclasses.asdict(row) for row in rows], "seeds": seeds, "options": options,
        "config": config_mod.to_dict(base), "runs": runs, "summary": summary, "paired": paired,
        "equal_compute": {match.row: match.as_dict() for match in matches or ()}, "paired_compute": paired_compute,
        "curves": {row.label: mean_curve([runs[row.label][k].get("curve", {}) for k in keys]) for row in rows},
        "conflict_vs_primary": {"spearman": spearman(early, primary) if early else math.nan, "n": len(early)},
        "universality": universality, "paired_universality": paired_universality,
        "time_to_baseline": time_to_baseline, "tc2_vs_controls": controls,
    }


def paired_rows(runs: dict, treatment: str, baseline: str, keys: list[str], metrics) -> dict:
    """{metric: the paired difference treatment − baseline over the seeds ``keys``} of two rows of ``runs``."""
    return {m: paired_difference([runs[treatment][k]["metrics"][m] for k in keys],
                                 [runs[baseline][k]["metrics"][m] for k in keys], CONFIDENCE).as_dict()
            for m in metrics}


def tc2_against_controls(rows: list[dict], runs: dict, keys: list[str], metrics: list[str]) -> dict:
    """TC² − each of its controls (``tc2_frozen``, ``random_proj``, ``tasks_nf``), paired over seeds: the share of
    TC²'s gain its learned calibration earns. Every TC² row is paired with the controls of the same base row and
    overrides (so ``byol/tc2`` with ``byol/tc2_frozen``). A TC² variant that changes only calibrator settings
    (:data:`~tc2ssl.plugins.tc2_controls.CALIBRATOR_SETTINGS`, e.g. ``tc2 preset=calibrated``) and has no controls of
    its own is paired with the default controls of its base: another calibrator measured against the same fixed
    maps. A variant of the task step itself (``tc2 K=2``, ``tc2 plugin.beta1=0.01``) is paired only with controls of
    its own settings. {"TC² label − control label": {"tc2": label, "control": label, metric: difference}}."""
    from tc2ssl.plugins.tc2_controls import CALIBRATOR_SETTINGS, CONTROL_PLUGINS

    def key(row: dict) -> tuple:
        return row.get("baseline", BASELINE), tuple(row.get("overrides", ()))

    def calibrator_only(overrides: tuple) -> bool:
        return all(item.split("=", 1)[0] in CALIBRATOR_SETTINGS for item in overrides)

    controls: dict[tuple, list[str]] = {}
    for row in rows:
        if row.get("plugin") in CONTROL_PLUGINS and row["label"] in runs:
            controls.setdefault(key(row), []).append(row["label"])
    out = {}
    for row in rows:
        if row.get("plugin") != "tc2" or row["label"] not in runs:
            continue
        base, overrides = key(row)
        own = controls.get((base, overrides))
        for control in own or (controls.get((base, ()), []) if calibrator_only(overrides) else []):
            out[f"{row['label']} − {control}"] = {"tc2": row["label"], "control": control,
                                                  **paired_rows(runs, row["label"], control, keys, metrics)}
    return out


def controls_markdown(result: dict) -> list[str]:
    """The attribution table: TC² − each control, with the per-seed differences of the primary metric."""
    controls = result.get("tc2_vs_controls")
    if controls is None:      # a results.json written before the table existed
        controls = tc2_against_controls(result.get("rows", []), result["runs"], [str(s) for s in result["seeds"]],
                                        result["metrics"])
    if not controls:
        return []
    metrics, primary = result["metrics"], result["primary"]
    lines = ["", "## TC² against its controls (points; TC² − control, paired over seeds), mean "
             f"[{CONFIDENCE:.0%} t-interval]", "",
             "`tc2_frozen`: the calibrator frozen at initialisation; `random_proj`: a fixed random n_f projection; "
             "`tasks_nf`: +T on the batch's top-n_f subspace. A difference near 0 says that control's fixed map "
             "gives what the learned calibration gives. A TC² variant that changes only the calibrator and has no "
             "controls of its own settings is paired with the default controls.", "",
             "| TC² row − control | " + " | ".join(metrics) + f" | {primary}, seed by seed |",
             "|---|" + "---|" * (len(metrics) + 1)]
    for label, by_metric in controls.items():
        cells = [_interval(by_metric[m]) for m in metrics]
        per_seed = ", ".join(_points(v) for v in by_metric[primary]["differences"])
        control = by_metric.get("control", label)      # results.json before 2026-12-07 keyed by the control
        lines.append(f"| {by_metric['tc2']} − {control} | " + " | ".join(cells) + f" | {per_seed} |")
    return lines


def baseline_time_to_accuracy(rows: list[Row], runs: dict, keys: list[str]) -> dict:
    """Per row with a time-to-accuracy curve and a base row that has one: per seed, the training seconds and
    images at which the row's curve first reaches the base's final kNN accuracy of the same seed, against the
    seconds and images at which the base itself first reaches it (:func:`tc2ssl.benchmarks.curves.time_to_reach`);
    the seeds where the row never reaches it are counted, not averaged. ``base_no_gain`` counts the seeds where the
    base's final kNN is not above its own starting point (the untrained backbone, 0 images): there every row
    "reaches" it at 0 s, which says nothing about speed (the table says so)."""
    out = {}
    for row in rows:
        if row.label == row.baseline or row.baseline not in runs:
            continue
        per_seed = []
        for key in keys:
            base_curve = mean_curve([runs[row.baseline][key].get("curve", {})])
            row_curve = mean_curve([runs[row.label][key].get("curve", {})])
            if not base_curve or not row_curve:
                break
            target = base_curve[-1]["knn"]
            per_seed.append({"target": target, "base": time_to_reach(base_curve, target),
                             "row": time_to_reach(row_curve, target), "row_final": row_curve[-1]["knn"],
                             "no_gain": base_curve[0]["images"] == 0 and base_curve[0]["knn"] >= target})
        if len(per_seed) != len(keys) or not per_seed:
            continue
        reached = [s for s in per_seed if s["row"] is not None]
        out[row.label] = {
            "baseline": row.baseline, "seeds": len(per_seed), "reached": len(reached),
            "base_no_gain": sum(s["no_gain"] for s in per_seed),
            "target_knn": statistics.fmean(s["target"] for s in per_seed),
            "row_final_knn": statistics.fmean(s["row_final"] for s in per_seed),
            "base_seconds": statistics.fmean(s["base"]["seconds"] for s in per_seed),
            "row_seconds": statistics.fmean(s["row"]["seconds"] for s in reached) if reached else None,
            "base_seconds_of_reached": (statistics.fmean(s["base"]["seconds"] for s in reached) if reached
                                        else None),
            "base_images": statistics.fmean(s["base"]["images"] for s in per_seed),
            "row_images": statistics.fmean(s["row"]["images"] for s in reached) if reached else None,
        }
    return out


def mean_curve(curves: list[dict[str, list[dict]]]) -> list[dict]:
    """One row's time-to-accuracy curve: at each epoch present in every run, the kNN accuracy averaged over the
    seeds and the run's pretraining folders, the training seconds and images summed over the folders and
    averaged over the seeds. ``curves``: per seed, ``{folder: points}`` (:func:`read_curve`)."""
    per_seed = []
    for by_folder in curves:
        folders = [{p["epoch"]: p for p in points} for points in by_folder.values() if points]
        if not folders:
            return []
        epochs = set.intersection(*(set(f) for f in folders))
        per_seed.append({e: {"knn": statistics.fmean(f[e]["knn"] for f in folders),
                             "seconds": sum(f[e]["seconds"] for f in folders),
                             "images": sum(f[e]["images"] for f in folders)} for e in epochs})
    if not per_seed:
        return []
    shared = sorted(set.intersection(*(set(s) for s in per_seed)))
    return [{"epoch": e, **{key: statistics.fmean(s[e][key] for s in per_seed) for key in ("knn", "seconds", "images")}}
            for e in shared]


# ---------------------------------------------------------------------------------------------------- outputs
def _json_safe(value):
    """NaN / inf -> None (strict JSON), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _points(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100.0 * value:+.2f}"


def _interval(difference: dict) -> str:
    return (f"{_points(difference['mean'])} [{_points(difference['ci_low'])}, "
            f"{_points(difference['ci_high'])}]")


def compute_markdown(result: dict) -> list[str]:
    """The equal-compute table: each row's comparator, its epochs, and the paired difference (points, CI)."""
    matches, metrics = result.get("equal_compute") or {}, result["metrics"]
    if not matches:
        return []
    source = ("each method's step cost, timed interleaved on the first seed"
              if result.get("options", {}).get("equal_compute") == COMPUTE_FROM_STEP_TIMING
              else "training wall-clock of the first seed")
    lines = ["", f"## Paired difference at equal compute ({source}), points, mean "
             f"[{CONFIDENCE:.0%} t-interval]", "",
             "| row | comparator (epochs) | row's seconds | " + " | ".join(metrics) + " |",
             "|---|---|---|" + "---|" * len(metrics)]
    for label, match in matches.items():
        cells = [_interval(result["paired_compute"][label][m]) for m in metrics]
        measured = match.get("measured_epochs", match["epochs"])
        epochs = (match["epochs"] if measured == match["epochs"]
                  else f"{match['epochs']}; this row's own match {measured}")
        lines.append(f"| {label} | {match['comparator']} ({epochs}) | {match['row_seconds']:.0f} | "
                     + " | ".join(cells) + " |")
    return lines


def time_to_accuracy_markdown(result: dict) -> list[str]:
    """The time each row's kNN curve needs to reach its base's final kNN accuracy (same seed), against the base."""
    times = result.get("time_to_baseline") or {}
    if not times:
        return []
    lines = ["", "## Time to the base's final accuracy (kNN curve, per seed: the first point at or above the base's "
             "final kNN of that seed, interpolated; training seconds)", "",
             "| row | base | base's final kNN % | row's final kNN % | seeds reaching it | base: seconds (images) | "
             "row: seconds (images), over the seeds that reach it | base's seconds on those seeds |",
             "|---|---|---|---|---|---|---|---|"]
    no_gain = {t["baseline"]: (t["base_no_gain"], t["seeds"]) for t in times.values() if t.get("base_no_gain")}
    for label, t in times.items():
        row_cell = ("never" if t["row_seconds"] is None
                    else f"{t['row_seconds']:.0f} ({t['row_images']:.0f})")
        base_of_reached = "" if t["base_seconds_of_reached"] is None else f"{t['base_seconds_of_reached']:.0f}"
        flag = " †" if t.get("base_no_gain") else ""
        lines.append(f"| {label} | {t['baseline']}{flag} | {100 * t['target_knn']:.2f} | "
                     f"{100 * t['row_final_knn']:.2f} | {t['reached']}/{t['seeds']} | {t['base_seconds']:.0f} "
                     f"({t['base_images']:.0f}) | {row_cell} | {base_of_reached} |")
    for base, (count, seeds) in no_gain.items():
        lines += ["", f"† {base} ends no higher than its untrained start (the kNN at 0 images) on {count} of {seeds} "
                      "seed(s): there the target is met before training, so these times say nothing about speed."]
    return lines


def universality_markdown(result: dict) -> list[str]:
    """GeSSL's σ per row (σ_task: the linear probe's test cross-entropy in nats, averaged over the suite's probes;
    U = exp(−σ)) and each row's paired difference in σ_task to its base (negative = more universal)."""
    by_row = {label: u for label, u in (result.get("universality") or {}).items() if "sigma_task" in u}
    if not by_row:
        return []
    paired = result.get("paired_universality") or {}
    lines = ["", "## Universality (GeSSL's σ_task: the probe's test cross-entropy, nats, mean over the suite's "
             "probes; U = exp(−σ); lower σ is better)", "",
             f"| row | σ_task | U_task | Δσ_task against its base, mean [{CONFIDENCE:.0%} t-interval] |",
             "|---|---|---|---|"]
    for label, u in by_row.items():
        difference = paired.get(label, {}).get("sigma_task")
        cell = "" if difference is None else (f"{difference['mean']:+.4f} [{difference['ci_low']:+.4f}, "
                                              f"{difference['ci_high']:+.4f}]")
        lines.append(f"| {label} | {u['sigma_task']['mean']:.4f} ± {u['sigma_task']['std']:.4f} | "
                     f"{u['U_task']['mean']:.4f} | {cell} |")
    return lines


def merged_markdown(result: dict) -> list[str]:
    """Where the runs of a merged table (``tc2ssl merge``) came from: the rows and seeds of each folder."""
    sources: dict[str, dict[str, list[str]]] = {}
    for label, by_seed in (result.get("merged_from") or {}).items():
        for seed, folder in by_seed.items():
            sources.setdefault(folder, {}).setdefault(seed, []).append(label)
    if not sources:
        return []
    lines = ["", "## Merged from", "", "| folder | seed | rows |", "|---|---|---|"]
    for folder, by_seed in sources.items():
        lines += [f"| {folder} | {seed} | {', '.join(labels)} |" for seed, labels in by_seed.items()]
    return lines


def results_markdown(suite: Suite, result: dict) -> str:
    cfg = result["config"]
    metrics, n_seeds = result["metrics"], len(result["seeds"])
    lines = [f"# tc2ssl benchmark {suite.name}: {suite.title}", "", suite.protocol, "",
             f"Preset `{result['preset']}`: {cfg['method']['name']}, backbone {cfg['model']['backbone']}, "
             f"{cfg['train']['epochs']} epoch(s) at batch {cfg['train']['batch_size']}, data.max_train "
             f"{cfg['data']['max_train'] or 'all'}, eval.max_train {cfg['eval']['max_train'] or 'all'}; seeds "
             f"{', '.join(map(str, result['seeds']))} (the same for every row); suite options {result['options']}.",
             "", f"## Accuracy (%), mean ± std over {n_seeds} seed(s)", "",
             "| row | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for label, by_metric in result["summary"].items():
        cells = [f"{100 * by_metric[m]['mean']:.2f} ± {100 * by_metric[m]['std']:.2f}" for m in metrics]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if result["paired"]:
        against = {row["label"]: row.get("baseline", BASELINE) for row in result.get("rows", [])}
        lines += ["", f"## Paired difference against each row's base (points; `{BASELINE}`, `METHOD/none` for "
                  f"`METHOD/…`, the plain-SSL control for post-hoc rows), mean [{CONFIDENCE:.0%} t-interval]", "",
                  "| row | against | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
        for label, by_metric in result["paired"].items():
            cells = [_interval(by_metric[m]) for m in metrics]
            lines.append(f"| {label} | {against.get(label, BASELINE)} | " + " | ".join(cells) + " |")
        if n_seeds < 2:
            lines += ["", "(one seed: no interval; pass --seeds 0,1,2)"]
    else:
        lines += ["", f"(no `{BASELINE}` row: no paired differences)"]
    lines += compute_markdown(result)
    lines += controls_markdown(result)
    lines += universality_markdown(result)
    lines += time_to_accuracy_markdown(result)
    conflict = result["conflict_vs_primary"]
    rho = conflict["spearman"]
    lines += ["", "## Conflict", "",
              f"Spearman ρ between each run's mean inter-task gradient cosine over the first half of its epochs and "
              f"its {result['primary']} accuracy: "
              f"{'n/a' if rho is None or not math.isfinite(rho) else f'{rho:+.3f}'} over {conflict['n']} runs.", ""]
    if "k_ablation" in result and result["k_ablation"]:
        lines += ["## K ablation (TC², linear probe %)", "", "| K | mean ± std |", "|---|---|"]
        lines += [f"| {k} | {100 * s['mean']:.2f} ± {100 * s['std']:.2f} |" for k, s in result["k_ablation"].items()]
        lines.append("")
    lines += checks_markdown(result.get("checks") or [])
    lines += [f"![{p}]({p})" for p in result["plots"]]
    lines += merged_markdown(result)
    lines += ["", "## Runs", "", "| row | seed | wall time (s) | run folder(s) |", "|---|---|---|---|"]
    for label, by_seed in result["runs"].items():
        for seed, record in by_seed.items():
            lines.append(f"| {label} | {seed} | {record['seconds']:.0f} | {', '.join(record['run_dirs'])} |")
    return "\n".join(lines) + "\n"
