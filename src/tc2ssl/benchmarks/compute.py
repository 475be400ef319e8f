"""Equal-compute rows of a benchmark: the baseline given the training wall-clock of each plug-in's run.

Compute is training wall-clock (optimiser steps only: no set-up, no evaluation, no time-to-accuracy kNN), not
encoder forward/backward passes: TC²'s extra cost is partly in passes that are not the encoder's (the inner step,
the calibration), and wall-clock is what a user pays. On the first seed, after every row has run, a row R paired
with baseline B (R's ``baseline``) gets the row ``B@R``: B's config trained for

    epochs(B@R) = max(1, round(seconds(R) / (seconds(B) / epochs(B))))

epochs (seconds summed over the row's pretraining folders), the same for every seed. When that equals B's own
epochs, B itself is the equal-compute comparator and no row is added. Rows of the same B whose epochs lie within
``SHARE_TOLERANCE`` (10%) of a comparator already made share it (the first such row names it and sets its epochs;
each match keeps its own measured epochs as ``measured_epochs``): the step timing repeats to about ±5%, so two rows
of the same cost (``tasks`` and ``tasks plugin.beta1=0.01`` on colored_mnist measured 2.04 and 1.93 SimCLR steps,
25 and 23 epochs) would otherwise each get a comparator of their own, that is, the same runs again at a cost of
hours.

Where seconds(R) and seconds(B) come from (suite option ``equal_compute``):

* ``2`` (the measuring presets): **interleaved step timing** (:func:`step_timing_seconds`). The seed-0 runs' own
  configs are rebuilt in this process and one training step of each is timed in turn, round after round, on the
  same batches; R's cost is the median over rounds of t(R)/t(B), times B's median step time, times R's total
  steps. Both sides see the same machine load, so the ratio holds on a shared machine. It was made the default
  after the runs' own seconds proved unusable there: on the 2-core machine with other benchmarks beside it, one
  SimCLR run's epochs took 31-45 s depending on what ran beside it. With the diagnostic below also counted, the
  runs' seconds gave GeSSL's comparator on digits_transfer 22 SimCLR epochs; interleaved timing of the methods'
  own steps puts GeSSL at 3.7-3.9 SimCLR steps, 30 epochs (docs/results.md §9). The
  measurement is written to ``OUT/equal_compute.json`` and reused by later invocations on the same folder (seeds
  added, merges), so every seed gets the same epochs.
  The timed steps run without the inter-task conflict diagnostic (``plugin.conflict_every=0``): it is a
  measurement, not part of a method, and it is not equally dear to every row (SimCLR pays K extra backward passes
  for it, 2-3x its own step on the 2-core CPU; TC² and +T reuse task gradients they compute anyway). The
  comparator rows then also train without it (it changes no weight).
* ``1``: the runs' own training seconds (metrics.jsonl's epoch records). Right on an otherwise idle machine;
  how the results of 2026-12-06 and before (docs/results.md §9.3-§9.5) were matched.

Rows marked ``equal_compute=False`` get no comparator: the K variants, the post-hoc rows (paired with their own
plain-SSL control) and TC²'s calibration controls (compared with TC² at equal epochs).
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from tc2ssl.benchmarks.curves import epoch_records, training_seconds
from tc2ssl.train.checkpoint import atomic_write_text

#: the suite option ``equal_compute``: 0 = no comparator rows, 1 = the runs' own seconds, 2 = interleaved timing
COMPUTE_FROM_RUN_SECONDS, COMPUTE_FROM_STEP_TIMING = 1, 2
TIMING_FILE = "equal_compute.json"
#: rows of one baseline whose matched epochs differ by at most this fraction share one comparator
SHARE_TOLERANCE = 0.1


@dataclass(frozen=True)
class ComputeMatch:
    """Row ``row``'s equal-compute comparator ``comparator`` (a new row ``B@R``, or B itself)."""

    row: str
    comparator: str
    epochs: int
    row_seconds: float
    baseline_seconds_per_epoch: float
    measured_epochs: int   # the row's own match; ``epochs`` differs from it when it shares a comparator

    def as_dict(self) -> dict:
        return {"comparator": self.comparator, "epochs": self.epochs, "row_seconds": self.row_seconds,
                "baseline_seconds_per_epoch": self.baseline_seconds_per_epoch,
                "measured_epochs": self.measured_epochs}


def _seconds_and_epochs(record: dict) -> tuple[float, int]:
    """A run's training seconds summed over its pretraining folders, and the epochs of one folder."""
    measured = [training_seconds(Path(run_dir)) for run_dir in record["run_dirs"]]
    return sum(seconds for seconds, _ in measured), max((epochs for _, epochs in measured), default=0)


def compute_pairs(rows: list) -> list[tuple]:
    """(row, baseline row) for every row that gets an equal-compute comparator."""
    by_label = {row.label: row for row in rows}
    pairs = []
    for row in rows:
        baseline = by_label.get(row.baseline)
        if (baseline is None or row.label == baseline.label or row.untrained or baseline.untrained
                or not row.equal_compute or "@" in row.label):
            continue
        pairs.append((row, baseline))
    return pairs


def match_compute(rows: list, runs: dict, seed: str,
                  seconds: dict[str, tuple[float, float]] | None = None) -> tuple[list[ComputeMatch], list]:
    """The equal-compute comparators of ``rows`` from the runs of ``seed``, and the new rows they need (copies of
    the baseline rows with ``train.epochs`` set). ``rows``: :class:`tc2ssl.benchmarks.suites.Row` objects.
    ``seconds``: each row's (training seconds, its baseline's training seconds) from :func:`step_timing_seconds`;
    None: the runs' own wall-clock."""
    matches, new_rows = [], []
    made: dict[tuple[str, int], str] = {}   # (baseline, epochs) -> the comparator row already added for them
    # matched on the methods' own cost (step timing), a comparator also trains without the conflict diagnostic:
    # it changes no weight (its gradients are discarded), and its runs' seconds then show the cost matched
    untimed = ("plugin.conflict_every=0",) if seconds is not None else ()
    for row, baseline in compute_pairs(rows):
        row_seconds, _ = _seconds_and_epochs(runs[row.label][seed])
        base_seconds, base_epochs = _seconds_and_epochs(runs[baseline.label][seed])
        if seconds is not None:
            if row.label not in seconds:
                continue
            row_seconds, base_seconds = seconds[row.label]
        if base_epochs == 0 or base_seconds <= 0.0:
            continue
        per_epoch = base_seconds / base_epochs
        measured = epochs = max(1, round(row_seconds / per_epoch))
        comparator = baseline.label
        shared = [(label, made_epochs) for (base, made_epochs), label in made.items()
                  if base == baseline.label and abs(made_epochs - measured) <= SHARE_TOLERANCE * made_epochs]
        if measured != base_epochs and shared:
            comparator, epochs = min(shared, key=lambda item: abs(item[1] - measured))
        elif measured != base_epochs:
            comparator = made[(baseline.label, epochs)] = f"{baseline.label}@{row.label}"
            new_rows.append(replace(baseline, label=comparator,
                                    overrides=(*baseline.overrides, f"train.epochs={epochs}", *untimed),
                                    baseline=baseline.label, equal_compute=False))
        matches.append(ComputeMatch(row.label, comparator, epochs, row_seconds, per_epoch, measured))
    return matches, new_rows


def _total_steps(run_dir: Path) -> int:
    records = epoch_records(run_dir)
    return int(records[-1]["step"]) if records else 0


def time_training_steps(run_dirs: list[Path], rounds: int = 10, warmup: int = 2) -> list[list[float]]:
    """Seconds of one training step of each run folder's config, timed in ``warmup + rounds`` interleaved rounds
    (round r: one step of every config in turn, all on the same batch of the first config's training images, in
    the given order on even rounds and the reverse on odd ones: on a loaded machine the first step of a round was
    measured slower); the warm-up rounds are dropped. Each config is rebuilt as its training loop builds it
    (method, plug-in and its ``on_fit_start``, the optimiser over the trainable parameters); a step is what the
    loop does per batch: zero_grad, the plug-in's training step under the run's autocast, the optimiser step,
    ``after_step`` (not the loop's logging and monitoring, which cost every row alike), with the conflict
    diagnostic off (``plugin.conflict_every=0``)."""
    from tc2ssl.data import load_data
    from tc2ssl.plugins.base import StepInfo, trainable_parameters
    from tc2ssl.train.loop import build_run, load_run_config
    from tc2ssl.train.schedule import build_optimizer

    # the inter-task conflict diagnostic is a measurement, not part of any method: SimCLR pays K extra backward
    # passes for it, TC² reuses gradients it has anyway; timed without it, each row costs what its method costs
    cfgs = [load_run_config(Path(run_dir)) for run_dir in run_dirs]
    cfgs = [replace(cfg, plugin=replace(cfg.plugin, conflict_every=0)) for cfg in cfgs]
    data_cache: dict[str, object] = {}
    built = []
    for cfg in cfgs:
        key = repr(cfg.data)
        if key not in data_cache:
            data_cache[key] = load_data(cfg.data)
        run = build_run(cfg, data_cache[key])
        run.plugin.on_fit_start(run)
        optimizer = build_optimizer(trainable_parameters(run.method, run.plugin), cfg.train)
        built.append((run, optimizer))
    generator = torch.Generator().manual_seed(0)
    times: list[list[float]] = [[] for _ in built]
    for r in range(warmup + rounds):
        order = torch.randperm(len(built[0][0].data.train.images), generator=generator)
        for i in (range(len(built)) if r % 2 == 0 else reversed(range(len(built)))):
            run, optimizer = built[i]
            images = run.data.train.images
            batch = images[order[: run.cfg.train.batch_size] % len(images)].to(run.device)
            info = StepInfo(epoch=0, step=r, seed=1000 + r)
            if run.device.type == "cuda":
                torch.cuda.synchronize(run.device)
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            with run.fabric.autocast():
                run.plugin.training_step(batch, info)
            optimizer.step()
            run.method.after_step(0.5)
            if run.device.type == "cuda":
                torch.cuda.synchronize(run.device)
            if r >= warmup:
                times[i].append(time.perf_counter() - start)
    return times


def step_timing_seconds(rows: list, runs: dict, seed: str, out: Path, rounds: int = 10,
                        timer=time_training_steps) -> dict[str, tuple[float, float]]:
    """Each compared row's training seconds and its baseline's, from interleaved step timing of the seed's runs
    (module docstring). Per pretraining folder f, a baseline B and the rows paired with it are timed in the same
    rounds; seconds(R) = Σ_f median_r(t_R / t_B) · median_r(t_B) · steps(R_f) and seconds(B) = Σ_f median_r(t_B) ·
    steps(B_f). Kept in ``out/equal_compute.json``: a later call reuses the rows already there and times only new
    ones (with their baseline again)."""
    path = Path(out) / TIMING_FILE
    stored = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    todo: dict[str, list] = {}
    for row, baseline in compute_pairs(rows):
        entry = stored.get(row.label)
        if entry is None or entry.get("baseline") != baseline.label:
            todo.setdefault(baseline.label, []).append(row)
    for base_label, new in todo.items():
        base_dirs = [Path(d) for d in runs[base_label][seed]["run_dirs"]]
        new = [row for row in new if len(runs[row.label][seed]["run_dirs"]) == len(base_dirs) and base_dirs]
        per_row: dict[str, list[dict]] = {row.label: [] for row in new}
        for f, base_dir in enumerate(base_dirs):
            row_dirs = [Path(runs[row.label][seed]["run_dirs"][f]) for row in new]
            base_times, *row_times = timer([base_dir, *row_dirs], rounds=rounds)
            for row, row_dir, times in zip(new, row_dirs, row_times):
                per_row[row.label].append({"ratio": statistics.median(t / b for t, b in zip(times, base_times)),
                                           "baseline_step_s": statistics.median(base_times),
                                           "row_step_s": statistics.median(times),
                                           "row_steps": _total_steps(row_dir),
                                           "baseline_steps": _total_steps(base_dir)})
        for label, folders in per_row.items():
            stored[label] = {"baseline": base_label, "seed": seed, "rounds": rounds, "folders": folders}
        atomic_write_text(path, json.dumps(stored, indent=2) + "\n")
    seconds: dict[str, tuple[float, float]] = {}
    for row, baseline in compute_pairs(rows):
        if row.label in stored:
            folders = stored[row.label]["folders"]
            seconds[row.label] = (sum(f["ratio"] * f["baseline_step_s"] * f["row_steps"] for f in folders),
                                  sum(f["baseline_step_s"] * f["baseline_steps"] for f in folders))
    return seconds
