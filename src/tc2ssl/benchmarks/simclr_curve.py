"""SimCLR's accuracy against epochs on a suite: the measurement that sizes the ``standard`` preset.

``python -m tc2ssl.benchmarks.simclr_curve SUITE [--epochs 24] [--every 2] [--headline-every 4] [--seed 0]
[--method simclr] [--out DIR] [key=value ...]`` pretrains SimCLR (plug-in ``none``; another base method with
``--method``, e.g. ``byol``: is the preset near *its* plateau too?) once at the ``cpu`` preset's data, backbone and
batch with ``--epochs`` epochs, and records

* the frozen-backbone kNN accuracy every ``--every`` epochs (the benchmark's time-to-accuracy curve), and
* the suite's headline metric (its own linear-probe protocol) on backbone snapshots every ``--headline-every``
  epochs, and on the seeded random-init backbone (epoch 0).

A snapshot at epoch e of a run scheduled for E > e epochs has not finished its cosine learning-rate decay, so the
curve is a lower bound of what a run of e epochs reaches; where it flattens is the plateau. Writes
``DIR/SUITE_simclr_curve.json`` and ``.png`` (default DIR: docs/figures/benchmarks/curves).

Resumable: the snapshots are files in the run folders (``snapshots/epoch{E}.safetensors``), so re-running the same
command after a kill continues the pretraining from its last epoch checkpoint (a finished one is reused) and scores
every snapshot on disk. Another method writes ``SUITE_METHOD_curve.json`` / ``.png`` and keeps its run folders under
``runs/METHOD_curve`` (``--runs``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from tc2ssl.benchmarks.plots import _figure, _save
from tc2ssl.benchmarks.presets import get_preset
from tc2ssl.benchmarks.suites import (RANDOM_INIT, SUITES, Row, SuiteContext, eval_device, run_benchmark,
                                      run_config, single_threaded_blas, suite_options)
from tc2ssl.train.checkpoint import atomic_write_bytes
from tc2ssl.train.loop import epoch_end_hook


SNAPSHOT_DIR = "snapshots"


class Snapshots:
    """Per-epoch hook: the backbone's weights at every ``every``-th epoch (and the last), written atomically to
    ``RUN_DIR/snapshots/epoch{E}.safetensors``. On disk, so a killed curve resumes: the benchmark continues the run
    from its last epoch checkpoint and the snapshots taken before the kill are still there."""

    def __init__(self, every: int, last_epoch: int):
        self.every, self.last_epoch = every, last_epoch

    def __call__(self, epoch: int, backbone: torch.nn.Module, epoch_record: dict, run_dir: Path) -> None:
        if (epoch + 1) % self.every == 0 or epoch == self.last_epoch:
            from safetensors.torch import save

            state = {key: value.detach().cpu().contiguous() for key, value in backbone.state_dict().items()}
            path = Path(run_dir) / SNAPSHOT_DIR / f"epoch{epoch + 1}.safetensors"
            atomic_write_bytes(path, lambda fh: fh.write(save(state)))


def saved_snapshots(runs_root: Path) -> dict[int, list[Path]]:
    """{epochs: [snapshot files, one per pretraining folder]} of every snapshot under ``runs_root``."""
    found: dict[int, list[Path]] = {}
    for path in sorted(Path(runs_root).rglob(f"{SNAPSHOT_DIR}/epoch*.safetensors")):
        found.setdefault(int(path.stem.removeprefix("epoch")), []).append(path)
    return found


def headline_curve(suite_name: str, overrides: list[str], seed: int, runs_root: Path, out: Path) -> dict:
    """The suite's metrics on every saved snapshot of the seed's SimCLR run under ``runs_root``: {epochs: metrics}."""
    from safetensors.torch import load_file

    from tc2ssl.workflows import load_backbone

    suite = SUITES.get(suite_name)
    preset = get_preset("cpu")
    options, cfg_overrides = suite_options(suite, preset, overrides)
    base_overrides = [*preset.overrides_for(suite.name), *suite.overrides, *cfg_overrides, f"out={out}"]
    run_cfg = run_config(base_overrides, Row("none", "none"), seed, out)
    results = {}
    for epochs, paths in sorted(saved_snapshots(runs_root).items()):
        backbones = {}
        for path in paths:
            run_dir = path.parent.parent
            backbone, _ = load_backbone(run_dir)
            backbone.load_state_dict(load_file(path))
            backbones[str(run_dir)] = backbone
        ctx = SuiteContext(options, eval_device(run_cfg), backbones=backbones)
        with single_threaded_blas():
            results[epochs] = suite.run(run_cfg, ctx).metrics
        print(f"simclr_curve {suite_name}: epoch {epochs}: {results[epochs]}", file=sys.stderr)
    return results


def curve_name(suite: str, method: str) -> str:
    """The file stem of a curve: ``SUITE_simclr_curve`` (the preset-sizing curves) or ``SUITE_METHOD_curve``."""
    return f"{suite}_{method}_curve"


def plot_curve(measured: dict, png_path: Path) -> Path:
    fig = _figure(7, 4)
    ax = fig.add_subplot(1, 1, 1)
    knn = measured["knn_curve"]
    ax.plot([p["epoch"] for p in knn], [100 * p["knn"] for p in knn], marker=".", label="kNN (pretraining data)")
    primary = measured["primary"]
    heads = sorted((int(e), m[primary]) for e, m in measured["headline"].items())
    ax.plot([e for e, _ in heads], [100 * v for _, v in heads], marker="o", label=f"headline: {primary}")
    ax.axhline(100 * measured["random_init"][primary], linestyle=":", color="grey", label="random init (headline)")
    ax.set_xlabel("epochs")
    ax.set_ylabel("accuracy (%)")
    method = {"simclr": "SimCLR", "byol": "BYOL"}.get(measured.get("method", "simclr"), measured.get("method"))
    return _save(fig, ax, f"{method} on {measured['suite']} (cpu preset data, seed {measured['seed']}): "
                          f"accuracy against epochs", png_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suite")
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--every", type=int, default=2)
    parser.add_argument("--headline-every", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method", default="simclr", help="the base SSL method (plug-in none) to measure")
    parser.add_argument("--out", default="docs/figures/benchmarks/curves")
    parser.add_argument("--runs", default=None, help="where the run folders go (default runs/METHOD_curve)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)
    out, runs = Path(args.out), Path(args.runs or f"runs/{args.method}_curve") / args.suite
    if any(o.partition("=")[0].strip() == "method.name" for o in args.overrides):
        parser.error("give the method with --method, not method.name=")
    overrides = [f"train.epochs={args.epochs}", f"suite.curve_every={args.every}", "suite.equal_compute=0",
                 f"method.name={args.method}", *args.overrides]
    snapshots = Snapshots(args.headline_every, args.epochs - 1)
    start = time.perf_counter()
    with epoch_end_hook(snapshots):
        result = run_benchmark(args.suite, "cpu", [RANDOM_INIT, "none"], [args.seed], [*overrides, f"out={runs}"])
    wall = time.perf_counter() - start
    seed_runs = runs / f"none_seed{args.seed}"
    headline = headline_curve(args.suite, [*overrides], args.seed, seed_runs, runs)
    measured = {
        "suite": args.suite, "method": args.method, "seed": args.seed, "epochs": args.epochs,
        "primary": result["primary"],
        "config": result["config"], "wall_seconds": wall,
        "random_init": result["runs"][RANDOM_INIT][str(args.seed)]["metrics"],
        "final": result["runs"]["none"][str(args.seed)]["metrics"],
        "knn_curve": result["curves"]["none"], "headline": {str(e): m for e, m in headline.items()},
    }
    out.mkdir(parents=True, exist_ok=True)
    name = curve_name(args.suite, args.method)
    (out / f"{name}.json").write_text(json.dumps(measured, indent=2) + "\n", encoding="utf-8")
    plot_curve(measured, out / f"{name}.png")
    print(json.dumps({k: measured[k] for k in ("random_init", "final", "headline")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
