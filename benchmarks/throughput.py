"""Step time, images/s, peak memory, the stage breakdown and the compute floor of the baseline, +T and TC², in ONE
process.

    python benchmarks/throughput.py --quick                          # about a minute on a 2-core CPU
    python benchmarks/throughput.py --sweep --out docs/perf          # also sweeps K and m; JSON + markdown in DIR
    python benchmarks/throughput.py --device cuda --backbone resnet18 --data cifar10 --batch 256 \\
        --precision bf16-mixed --channels-last --sweep --out docs/perf/gpu_resnet18      # a GPU
    python benchmarks/throughput.py --device cuda --backbone resnet50 --data stl10 --resolution 96 --batch 128 \\
        --precision bf16-mixed --channels-last --out docs/perf/gpu_resnet50

Timing. Every variant trains on the same batches with the same backbone, and the variants are timed in interleaved
rounds (round r: one step of each variant in turn), so slow drift of a shared machine affects all of them alike;
each figure is the median over rounds. Ratios (TC² / baseline) are what the targets are about, not absolute times.
A step is what the training loop does per batch: zero_grad, the plug-in's ``training_step`` under the run's
autocast, the optimiser step.

Breakdown. The TC² plug-in wraps the parts of its own ``training_step`` in named sections (``tc2ssl.timing``):
augmentation (m views), statistics_forward (Z at θ for S), stage1 (S, f_v, f_w: Eqs. 1-5), health (the guard
metrics), stage2 (encoder, Eqs. 6-7); "other" is the rest of the step (task split, optimiser step). On CPU the
sections are timed inside the timed steps (a timer costs two ``perf_counter`` calls); on CUDA a timer must
synchronise the device at each boundary, so the sections come from extra steps after the timed rounds. The
baseline's augmentation is timed by wrapping its view maker.

Peak memory. CUDA: ``torch.cuda.max_memory_allocated`` over one step, minus the memory allocated before it. CPU:
the rise of the process's peak resident set over one step (Linux: ``/proc/self/clear_refs`` resets VmHWM, then
VmHWM − VmRSS after the step, with freed heap memory handed back to the OS first by glibc's ``malloc_trim``); it
counts the memory the step makes resident, an estimate of its peak tensor memory, reported as such.

Clocks. ``--clock wall`` (default) times steps with ``time.perf_counter``. On a machine shared with other jobs,
``--clock cpu --threads 1`` times them with the process's CPU time instead, which does not count the time the
process waits for a core; with several intra-op threads CPU time also counts their spin-waiting, hence one thread.

Compute floor. For each variant and hypergradient mode the script counts the encoder passes the maths requires per
batch (forward without graph, forward with graph, backward; each over how many views) and prices them with unit
costs measured on the same encoder in the same run: the per-view time of a no-grad forward, a forward with graph
and a backward over the baseline's 2N views (``floor_counts``). step / floor says how far a variant is from the
encoder work it cannot avoid.

GeSSL (``--gessl``). The ``gessl`` variant (``plugin.gessl.*`` at their defaults unless ``--set`` changes them) is
timed in the same rounds; its sections are augmentation and bilevel (the M tasks' inner steps, look-ahead, outer
loss and hypergradients). Its floor (``gessl_floor_counts``) is priced with unit costs measured at its task size
(2N/M views per encoder call).

The last line printed is a JSON object with the TC²-to-baseline step-time ratio (and GeSSL's, with ``--gessl``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

from tc2ssl.config import load_config
from tc2ssl.data import load_data
from tc2ssl.errors import ConfigError
from tc2ssl.methods import METHODS
from tc2ssl.plugins.base import StepInfo
from tc2ssl.timing import SectionTimer, section
from tc2ssl.train.loop import build_run
from tc2ssl.train.schedule import build_optimizer

SECTIONS = ("augmentation", "statistics_forward", "stage1", "health", "stage2", "bilevel")
GESSL_MODES = ("aid_fd", "implicit_cg", "exact", "first_order")
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter  # set from --clock in main()
HYPERGRADIENT_MODES = ("first_order", "finite_difference", "exact")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------------- runs
def base_overrides(args) -> list[str]:
    overrides = [f"method.name={args.method}", f"model.backbone={args.backbone}", f"data.name={args.data}",
                 f"train.batch_size={args.batch}", f"plugin.n_tasks={args.n_tasks}", f"plugin.n_views={args.n_views}",
                 f"plugin.n_support_views={args.n_support}", f"plugin.stage2_mode={args.stage2_mode}",
                 "plugin.conflict_every=0", "train.progress=false", "eval.enabled=false",
                 f"train.accelerator={'gpu' if args.device == 'cuda' else 'cpu'}",
                 f"train.precision={args.precision}", f"train.channels_last={str(args.channels_last).lower()}"]
    if args.max_train:
        overrides.append(f"data.max_train={args.max_train}")
    if args.resolution:
        overrides.append(f"data.resolution={args.resolution}")
    return overrides + list(args.set)


class TimedViewMaker:
    """Wraps a view maker so that its calls are charged to the 'augmentation' section (baseline plug-in)."""

    def __init__(self, inner, owner):
        self.inner, self.owner = inner, owner

    def __call__(self, *a, **kw):
        with section(self.owner.timer, "augmentation"):
            return self.inner(*a, **kw)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class Variant:
    """One plug-in configuration, its run, optimiser and measurements."""

    def __init__(self, name: str, plugin: str, extra: list[str], args, data):
        self.name, self.plugin_name = name, plugin
        self.cfg = load_config((), [f"plugin.name={plugin}", *base_overrides(args), *extra])
        self.run = build_run(self.cfg, data)
        self.optimizer = build_optimizer(self.run.method.online_parameters().values(), self.cfg.train)
        self.timer = None
        if not hasattr(self.run.plugin, "timer"):                   # the baseline: time its view maker
            self.run.plugin.view_maker = TimedViewMaker(self.run.plugin.view_maker, self)
        self.step_s: list[float] = []
        self.sections: list[dict[str, float]] = []
        self.peak_memory_mib: float | None = None

    def set_timer(self, timer: SectionTimer | None) -> None:
        self.timer = timer
        if hasattr(self.run.plugin, "timer"):
            self.run.plugin.timer = timer

    def step(self, images: torch.Tensor, info: StepInfo) -> None:
        run = self.run
        self.optimizer.zero_grad(set_to_none=True)
        with run.fabric.autocast():
            run.plugin.training_step(images, info)
        self.optimizer.step()
        run.method.after_step(0.5)
        sync(run.device)


def measure(args, specs: dict[str, tuple[str, list[str]]], data, batches,
            unit_call_sizes: tuple[int | None, ...] = ()) -> dict:
    """Median step time (and sections, peak memory) of each variant over interleaved rounds; with
    ``unit_call_sizes``, also the encoder's unit costs (``encoder_unit_costs``) at each call size, in the same
    rounds (None: the baseline's 2N views in one call)."""
    variants = {name: Variant(name, plugin, extra, args, data) for name, (plugin, extra) in specs.items()}
    device = next(iter(variants.values())).run.device
    cpu_sections = device.type == "cpu" and not args.no_breakdown
    units: dict[int | None, list[dict[str, float]]] = {size: [] for size in unit_call_sizes}
    for r in range(args.warmup + args.repeats):
        images = batches[r % len(batches)]
        for v in variants.values():
            info = StepInfo(epoch=0, step=r, seed=1000 + r)
            timer = SectionTimer(device, clock) if cpu_sections else None
            v.set_timer(timer)
            t0 = clock()
            v.step(images, info)
            dt = clock() - t0
            if r >= args.warmup:
                v.step_s.append(dt)
                if timer is not None:
                    v.sections.append(timer.reset())
        for size in unit_call_sizes:
            costs = encoder_unit_costs(variants["baseline"], images, seed=1000 + r, call_size=size)
            if r >= args.warmup:
                units[size].append(costs)
    if device.type == "cuda" and not args.no_breakdown:          # synchronising timers: separate steps
        for r in range(args.repeats):
            for v in variants.values():
                timer = SectionTimer(device, clock)
                v.set_timer(timer)
                t0 = clock()
                v.step(batches[r % len(batches)], StepInfo(epoch=0, step=r, seed=2000 + r))
                sections = timer.reset()
                sections["_step"] = clock() - t0
                v.sections.append(sections)
    for v in variants.values():
        v.set_timer(None)
        v.peak_memory_mib = peak_memory_mib(v, batches[0], device)
    result = {name: summarise(v, args.batch) for name, v in variants.items()}
    base = result["baseline"]["step_s"]
    for name, entry in result.items():
        entry["ratio_to_baseline"] = entry["step_s"] / base
        # the median of the per-round ratios (each against the baseline step of the same round): less sensitive to
        # a load change between rounds than the ratio of the medians
        entry["ratio_to_baseline_paired"] = statistics.median(
            t / b for t, b in zip(variants[name].step_s, variants["baseline"].step_s))
    if units:
        result["_unit_costs"] = {size: {k: statistics.median(u[k] for u in runs) for k in runs[0]}
                                 for size, runs in units.items()}
    return result


def summarise(v: Variant, batch: int) -> dict:
    step = statistics.median(v.step_s)
    entry = {"step_s": step, "images_per_s": batch / step, "repeats": len(v.step_s),
             "step_s_quartiles": statistics.quantiles(v.step_s, n=4) if len(v.step_s) > 1 else [step] * 3,
             "peak_memory_mib": v.peak_memory_mib}
    if hasattr(v.run.plugin, "shares_support_forward"):
        entry["shares_support_forward"] = v.run.plugin.shares_support_forward()
    if v.sections:
        names = [n for n in SECTIONS if any(n in s for s in v.sections)]
        seconds = {n: statistics.median(s.get(n, 0.0) for s in v.sections) for n in names}
        # shares of the step: on CPU the sections lie inside the timed steps; on CUDA inside their own steps
        totals = [s["_step"] for s in v.sections] if "_step" in v.sections[0] else v.step_s
        total = statistics.median(totals)
        seconds["other"] = max(0.0, total - sum(seconds.values()))
        entry["sections_s"] = seconds
        entry["share"] = {n: t / total for n, t in seconds.items()}
    return entry


def encoder_unit_costs(baseline: Variant, images: torch.Tensor, seed: int,
                       call_size: int | None = None) -> dict[str, float]:
    """Per-view seconds of the encoder (backbone + projector to the calibration point) over the baseline's 2N
    views, in the run's precision: a forward without graph, a forward with graph, and the backward of that forward
    (through a scalar of z; the loss itself is negligible). ``call_size``: the views go through the encoder in
    calls of this many views (a task's support set is N·m'/K views), else in one call. For a generative method
    (MAE) the views are masked views and the encoder is what ``embed`` runs: the decoder is not in these units."""
    run = baseline.run
    method = run.method
    if method.generative:          # the encoder of a generative method takes masked views (SPEC §3.2 G-SSL)
        one_view = run.view_maker(images, 1, seed)[:, 0]
        x = method.task_views(one_view, 2, torch.Generator().manual_seed(seed)).flatten(0, 1)
    else:
        x = run.view_maker(images, 2, seed).flatten(0, 1)          # run.view_maker: the unwrapped one
    if run.cfg.train.channels_last and isinstance(x, torch.Tensor) and x.is_cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    n_views = x.shape[0]
    size = min(call_size or n_views, n_views)
    chunks = [x[i:i + size] for i in range(0, n_views - size + 1, size)]          # whole calls only
    counted = size * len(chunks)
    params = [p for p in method.online_parameters().values()]
    times = []
    for _ in range(2):                              # the first pass warms the caches; the second is kept
        fwd_nograd = fwd_graph = bwd = 0.0
        for chunk in chunks:
            sync(run.device)
            with run.fabric.autocast():
                t0 = clock()
                with torch.no_grad():
                    method.embed(chunk)
                sync(run.device)
                t1 = clock()
                z = method.embed(chunk)
                loss = z.float().square().mean()
                sync(run.device)
                t2 = clock()
            torch.autograd.grad(loss, params, allow_unused=True)
            sync(run.device)
            t3 = clock()
            fwd_nograd, fwd_graph, bwd = fwd_nograd + t1 - t0, fwd_graph + t2 - t1, bwd + t3 - t2
        times.append((fwd_nograd, fwd_graph, bwd))
    fwd_nograd, fwd_graph, bwd = times[-1]
    return {"forward_nograd": fwd_nograd / counted, "forward_graph": fwd_graph / counted, "backward": bwd / counted}


# ---------------------------------------------------------------------------------------------------- memory
def _status_bytes(key: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(rf"{key}:\s+(\d+) kB", text)
    return int(found.group(1)) * 1024 if found else None


def _reset_peak_rss() -> bool:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``), then reset VmHWM to the current RSS."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")   # Linux >= 4.0: resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def peak_memory_mib(v: Variant, images: torch.Tensor, device: torch.device) -> float | None:
    """The memory one step takes above what is resident before it (see the module docstring)."""
    info = StepInfo(epoch=0, step=10_000, seed=7)
    if device.type == "cuda":
        sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        v.step(images, info)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    if not _reset_peak_rss():
        return None
    before = _status_bytes("VmRSS")
    v.step(images, info)
    peak = _status_bytes("VmHWM")
    return None if before is None or peak is None else (peak - before) / 2**20


# ---------------------------------------------------------------------------------------------------- floor
def floor_counts(plugin: str, mode: str, n: int, m: int, m_support: int, shared_support: bool = False,
                 health_every_step: bool = False) -> dict[str, dict[str, float]]:
    """Encoder passes per batch that the maths requires, in views (one view of one image = 1).

    Terms, per batch of N images split into K tasks (the sums over tasks do not depend on K):

    * baseline: forward with graph and backward over its 2N views.
    * stage 2 (TC² and +T), per task k, SPEC §3.9: the inner forward + backward at θ over the task's support
      views (Eq. 6: N·m' in all); the anchors, a no-grad forward at θ^k over the same support views (N·m'); the
      outer forward + backward at θ^k over the query views (Eq. 7: N·(m − m')).
    * finite_difference adds, per task, two gradient probes of L_in at θ ± εv (SPEC (S5)): 2 × (forward + backward)
      over the support views.
    * exact adds the double backward through the inner gradient (the outer gradient flows back through
      θ^k = θ − β₁∇L_in(θ)); counted as 2 backward passes over the support views (through the inner backward
      graph and, again, through its forward graph). This term is an estimate.
    * TC² adds the statistics forward (no grad) at θ over all N·m views (SPEC §3.10); when the support forward is
      shared (exact only without batch-statistics BatchNorm) only the N·(m − m') query views need it.
    * not required: the R8 inner-gain check (it reuses the anchors' forward) and everything off the encoder
      (augmentation, stage 1, the optimiser), which the step/floor ratio therefore includes as overhead.
    """
    if plugin == "baseline":
        return {"forward_nograd": 0.0, "forward_graph": 2.0 * n, "backward": 2.0 * n}
    q = m - m_support
    counts = {"forward_nograd": float(n * m_support),                           # anchors at θ^k
              "forward_graph": float(n * (m_support + q)),                      # inner (support) + outer (query)
              "backward": float(n * (m_support + q))}
    if mode == "finite_difference":
        counts["forward_graph"] += 2 * n * m_support
        counts["backward"] += 2 * n * m_support
    elif mode == "exact":
        counts["backward"] += 2 * n * m_support
    if plugin == "tc2":
        counts["forward_nograd"] += n * (q if shared_support else m)
    return counts


def gessl_floor_counts(mode: str, n: int, inner_steps: int = 1, lookahead_steps: int = 1, onehot: bool = False,
                       cg_steps: int = 5) -> dict[str, float]:
    """Encoder passes (in views) per batch of N images that GeSSL's maths requires; the M tasks of N/M images with
    two views each hold 2N views in all, so the counts do not depend on M (the unit costs do: a task's calls are
    2N/M views). Per task: K_in inner forward + backward (Eq. G7); Λ look-ahead forward + backward (Eq. G8) and
    one no-grad forward of π at ψ (not with ``onehot``); the outer forward + backward at φ_K (Eq. G2); aid_fd adds
    two gradient probes per inner step, implicit_cg two per CG iteration, exact two backward passes per inner step
    (the double backward, an estimate as for TC²); first_order adds nothing."""
    views = 2.0 * n
    passes = inner_steps + 1 + (0 if onehot else lookahead_steps)
    extra_backward = 0
    if mode == "aid_fd":
        passes += 2 * inner_steps
    elif mode == "implicit_cg":
        passes += 2 * cg_steps
    elif mode == "exact":
        extra_backward = 2 * inner_steps
    return {"forward_nograd": 0.0 if onehot else views, "forward_graph": views * passes,
            "backward": views * (passes + extra_backward)}


def gessl_floor_rows(args, unit_task: dict[str, float], base_floor: float, measured: dict) -> dict:
    """The GeSSL rows of the floor table, priced at the task-size unit costs."""
    cfg = load_config((), ["plugin.name=gessl", *base_overrides(args)]).plugin.gessl
    rows = {}
    for mode in GESSL_MODES:
        counts = gessl_floor_counts(mode, args.batch, cfg.inner_steps, cfg.lookahead_steps, cfg.target == "onehot",
                                    cfg.cg_steps)
        row = {"views": counts, "floor_s": floor_seconds(counts, unit_task),
               "view_passes_fwd_units": counts["forward_nograd"] + counts["forward_graph"]
               + counts["backward"] * unit_task["backward"] / unit_task["forward_graph"]}
        row["floor_ratio_to_baseline_floor"] = row["floor_s"] / base_floor
        if "gessl" in measured and mode == cfg.hypergradient:
            row["measured_step_s"] = measured["gessl"]["step_s"]
            row["step_to_floor"] = measured["gessl"]["step_s"] / row["floor_s"]
        rows[f"gessl/{mode}"] = row
    return rows


def floor_seconds(counts: dict[str, float], unit: dict[str, float]) -> float:
    return sum(counts[k] * unit[k] for k in counts)


def floor_report(args, unit: dict[str, float], measured: dict) -> dict:
    """Required passes (views), their priced floor, and measured step / floor for every variant measured."""
    n, m, ms = args.batch, args.n_views, args.n_support
    rows = {}
    tc2_shares = measured.get("tc2", {}).get("shares_support_forward", False)     # auto shares without BN
    for name, plugin, shared in (("baseline", "baseline", False), ("tasks", "tasks", False),
                                 ("tc2", "tc2", tc2_shares), ("tc2_shared", "tc2", True)):
        if name == "tc2_shared" and (tc2_shares or name not in measured):
            continue
        for mode in HYPERGRADIENT_MODES if plugin != "baseline" else ("-",):
            counts = floor_counts(plugin, mode, n, m, ms, shared_support=shared)
            key = name if plugin == "baseline" else f"{name}/{mode}"
            rows[key] = {"views": counts, "floor_s": floor_seconds(counts, unit),
                         "view_passes_fwd_units": counts["forward_nograd"] + counts["forward_graph"]
                         + counts["backward"] * unit["backward"] / unit["forward_graph"]}
    base_floor = rows["baseline"]["floor_s"]
    for key, row in rows.items():
        row["floor_ratio_to_baseline_floor"] = row["floor_s"] / base_floor
        name = key.split("/")[0]
        mode = key.split("/")[1] if "/" in key else args.stage2_mode
        if name in measured and mode == args.stage2_mode:
            row["measured_step_s"] = measured[name]["step_s"]
            row["step_to_floor"] = measured[name]["step_s"] / row["floor_s"]
    return {"unit_costs_s_per_view": unit, "backward_to_forward": unit["backward"] / unit["forward_graph"],
            "nograd_to_graph_forward": unit["forward_nograd"] / unit["forward_graph"], "rows": rows}


# ---------------------------------------------------------------------------------------------------- main
def parse_m_sweep(text: str) -> list[tuple[int, int]]:
    pairs = []
    for item in text.split(","):
        m, _, ms = item.partition(":")
        pairs.append((int(m), int(ms) if ms else max(1, int(m) // 2)))
    return pairs


def sweep(args, data, batches, key, values: list, label, task_call_size=None) -> dict:
    """TC² at each value of one knob against the same baseline, all in the same interleaved rounds.

    ``task_call_size`` (the K sweep: value -> views per task call): also price each point's floor with unit costs
    measured at its task size
    (the inner, anchor and outer passes of Eq. 6-7 run on one task's N·m'/K support or N·(m−m')/K query views per
    call), which shows how much of the K trend is the encoder's per-view cost on smaller calls."""
    specs: dict[str, tuple[str, list[str]]] = {"baseline": ("none", [])}
    sizes: dict[str, int] = {}
    skipped = {}
    for value in values:
        extra = key(value)
        try:                                      # a point the method cannot run is reported, not fatal
            cfg = load_config((), ["plugin.name=tc2", *base_overrides(args), *extra])
            min_support = METHODS.get(cfg.method.name).min_support_views
            if cfg.plugin.n_support_views < min_support:
                raise ConfigError(f"plugin.n_support_views={cfg.plugin.n_support_views}: {cfg.method.name}'s "
                                  f"support loss needs at least {min_support} views per image")
        except ConfigError as err:
            skipped[label(value)] = str(err)
            continue
        specs[label(value)] = ("tc2", extra)
        if task_call_size is not None:
            sizes[label(value)] = task_call_size(value)
    result = measure(args, specs, data, batches, unit_call_sizes=(None, *sorted(set(sizes.values()))))
    units = result.pop("_unit_costs")
    out = {name: {"step_s": r["step_s"], "ratio": r["ratio_to_baseline"],
                  "ratio_paired": r["ratio_to_baseline_paired"], "images_per_s": r["images_per_s"],
                  "peak_memory_mib": r["peak_memory_mib"], "share": r.get("share", {})}
           for name, r in result.items()}
    for name, size in sizes.items():                  # stats forward at the 2N units, stage 2 at the task size
        n, m, ms = args.batch, args.n_views, args.n_support
        stats = floor_seconds({"forward_nograd": n * m, "forward_graph": 0, "backward": 0}, units[None])
        stage2 = floor_seconds(floor_counts("tasks", args.stage2_mode, n, m, ms), units[size])
        out[name]["views_per_task_call"] = size
        out[name]["unit_costs_at_task_size"] = units[size]
        out[name]["floor_at_task_size_s"] = stats + stage2
        out[name]["step_to_floor_at_task_size"] = out[name]["step_s"] / (stats + stage2)
    tc2_steps = [r["step_s"] for name, r in out.items() if name != "baseline"]
    summary = {"points": out, "skipped": skipped}
    if tc2_steps:
        summary["spread_max_over_min"] = max(tc2_steps) / min(tc2_steps)
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="simclr")
    parser.add_argument("--backbone", default="small_cnn")
    parser.add_argument("--data", default="digits")
    parser.add_argument("--resolution", type=int, default=0, help="data.resolution (0: the source's default)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--n-tasks", type=int, default=4)
    parser.add_argument("--n-views", type=int, default=4)
    parser.add_argument("--n-support", type=int, default=2)
    parser.add_argument("--stage2-mode", default="first_order", choices=HYPERGRADIENT_MODES)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--precision", default="32-true", choices=("32-true", "bf16-mixed", "16-mixed"))
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--max-train", type=int, default=1024, help="data.max_train (0: all)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--clock", default="wall", choices=tuple(CLOCKS),
                        help="wall: perf_counter; cpu: process CPU time (use with --threads 1 on a busy machine)")
    parser.add_argument("--quick", action="store_true", help="fewer rounds, no sweeps; about a minute on 2 CPU cores")
    parser.add_argument("--sweep", action="store_true", help="also sweep K and m (TC² against the baseline)")
    parser.add_argument("--k-sweep", default="2,4,8,16")
    parser.add_argument("--m-sweep", default="2:1,3:2,4:2,6:3", help="m:m' pairs")
    parser.add_argument("--no-shared", action="store_true", help="skip the tc2_shared variant (support forward "
                                                                 "shared even where BatchNorm makes it inexact)")
    parser.add_argument("--no-breakdown", action="store_true")
    parser.add_argument("--gessl", action="store_true", help="also time plugin.name=gessl (plugin.gessl.* via --set)")
    parser.add_argument("--no-tc2", action="store_true", help="skip the +T and TC² variants")
    parser.add_argument("--set", action="append", default=[], help="extra config override key=value (repeatable)")
    parser.add_argument("--out", default=None, help="folder for throughput.json and throughput.md")
    args = parser.parse_args(argv)
    global clock
    clock = CLOCKS[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    if args.quick:
        args.repeats, args.warmup = 5, 1
        args.sweep = False
    warnings.simplefilter("ignore")
    t_start = time.perf_counter()
    data = load_data(load_config((), base_overrides(args)).data)
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    images_all = data.train.images
    if len(images_all) < args.batch:
        raise SystemExit(f"--batch {args.batch} exceeds the {len(images_all)} training images")
    batches = [images_all[torch.randperm(len(images_all), generator=generator)[: args.batch]].to(device)
               for _ in range(4)]

    specs = {"baseline": ("none", [])}
    if not args.no_tc2:
        specs.update({"tasks": ("tasks", []), "tc2": ("tc2", [])})
        if not args.no_shared:
            specs["tc2_shared"] = ("tc2", ["plugin.share_support_forward=always"])
    sizes: tuple[int | None, ...] = (None,)
    if args.gessl:
        specs["gessl"] = ("gessl", [])
        n_batches = load_config((), ["plugin.name=gessl", *base_overrides(args)]).plugin.gessl.n_batches
        task_views = 2 * (args.batch // n_batches)
        sizes = (None, task_views)
    main_result = measure(args, specs, data, batches, unit_call_sizes=sizes)
    units = main_result.pop("_unit_costs")
    unit = units[None]
    floor = floor_report(args, unit, main_result)
    if args.gessl:
        floor["gessl_unit_costs_s_per_view"] = units[sizes[1]]
        floor["rows"].update(gessl_floor_rows(args, units[sizes[1]], floor["rows"]["baseline"]["floor_s"],
                                              main_result))
    report = {"settings": vars(args), "device": describe_device(args.device), "load_average": load_average(),
              "main": main_result, "floor": floor}
    if args.sweep:
        report["sweep_n_tasks"] = sweep(args, data, batches, lambda k: [f"plugin.n_tasks={k}"],
                                        [int(k) for k in args.k_sweep.split(",")], lambda k: f"K={k}",
                                        task_call_size=lambda k: args.batch * args.n_support // k)
        report["sweep_n_views"] = sweep(args, data, batches,
                                        lambda p: [f"plugin.n_views={p[0]}", f"plugin.n_support_views={p[1]}"],
                                        parse_m_sweep(args.m_sweep), lambda p: f"m={p[0]},m'={p[1]}")
    report["load_average_end"] = load_average()
    report["seconds"] = time.perf_counter() - t_start
    text = to_markdown(report)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "throughput.json").write_text(json.dumps(report, indent=2))
        (out / "throughput.md").write_text(text)
    print(json.dumps(last_line(report)))
    return 0


def last_line(report: dict) -> dict:
    main_res, floor = report["main"], report["floor"]["rows"]
    line = {}
    if "gessl" in main_res:
        gessl_row = next(r for k, r in floor.items() if k.startswith("gessl/") and "step_to_floor" in r)
        line.update({"gessl_to_baseline_step_ratio": round(main_res["gessl"]["ratio_to_baseline"], 3),
                     "gessl_to_baseline_step_ratio_paired": round(main_res["gessl"]["ratio_to_baseline_paired"], 3),
                     "gessl_step_to_floor": round(gessl_row["step_to_floor"], 3),
                     "gessl_floor_to_baseline_floor": round(gessl_row["floor_ratio_to_baseline_floor"], 3)})
    if "tc2" not in main_res:
        return line
    tc2 = main_res["tc2"]
    mode = report["settings"]["stage2_mode"]
    line |= {"tc2_to_baseline_step_ratio": round(tc2["ratio_to_baseline"], 3),
            "tc2_to_baseline_step_ratio_paired": round(tc2["ratio_to_baseline_paired"], 3),
            "tasks_to_baseline_step_ratio": round(main_res["tasks"]["ratio_to_baseline"], 3),
            "tc2_stage1_share": round(tc2.get("share", {}).get("stage1", float("nan")), 3),
            "tc2_augmentation_share": round(tc2.get("share", {}).get("augmentation", float("nan")), 3),
            "tc2_step_to_floor": round(floor[f"tc2/{mode}"]["step_to_floor"], 3),
            "tc2_floor_to_baseline_floor": round(floor[f"tc2/{mode}"]["floor_ratio_to_baseline_floor"], 3)}
    if "tc2_shared" in main_res:
        line["tc2_shared_to_baseline_step_ratio"] = round(main_res["tc2_shared"]["ratio_to_baseline"], 3)
    if "sweep_n_tasks" in report and "spread_max_over_min" in report["sweep_n_tasks"]:
        line["k_sweep_spread"] = round(report["sweep_n_tasks"]["spread_max_over_min"], 3)
    return line


def describe_device(device: str) -> str:
    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return (f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} threads), torch {torch.__version__}")


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.1f}"


def to_markdown(report: dict) -> str:
    s = report["settings"]
    lines = [f"Throughput: {s['method']} on {s['data']}, backbone {s['backbone']}, batch {s['batch']}, "
             f"K={s['n_tasks']}, m={s['n_views']}, m'={s['n_support']}, stage 2 {s['stage2_mode']}, precision "
             f"{s['precision']}{', channels-last' if s['channels_last'] else ''}; {report['device']}; median of "
             f"{s['repeats']} interleaved rounds, {s['clock']} clock; load average {report['load_average']} -> "
             f"{report.get('load_average_end')}", "",
             "| variant | step (ms) | images/s | × baseline | × baseline, paired | peak mem (MiB) | augmentation | "
             "statistics fwd | stage 1 | health | stage 2 | GeSSL bi-level | other |", "|---" * 13 + "|"]
    for name, r in report["main"].items():
        share = r.get("share", {})
        cells = [f"{100 * share[k]:.0f}%" if k in share else "—" for k in (*SECTIONS, "other")]
        memory = "n/a" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib']:.0f}"
        label = f"{name} (support fwd shared)" if r.get("shares_support_forward") else name
        lines.append(f"| {label} | {_ms(r['step_s'])} | {r['images_per_s']:.0f} | {r['ratio_to_baseline']:.2f} | "
                     f"{r['ratio_to_baseline_paired']:.2f} | {memory} | " + " | ".join(cells) + " |")
    f = report["floor"]
    u = f["unit_costs_s_per_view"]
    if "gessl_unit_costs_s_per_view" in f:
        g = f["gessl_unit_costs_s_per_view"]
        lines += ["", f"GeSSL rows are priced at its task size: forward without graph {1e6 * g['forward_nograd']:.0f} "
                  f"µs, with graph {1e6 * g['forward_graph']:.0f} µs, backward {1e6 * g['backward']:.0f} µs per view."]
    lines += ["", f"Encoder unit costs per view (measured, over the baseline's 2N views): forward without graph "
              f"{1e6 * u['forward_nograd']:.0f} µs, forward with graph {1e6 * u['forward_graph']:.0f} µs, backward "
              f"{1e6 * u['backward']:.0f} µs (backward / forward = {f['backward_to_forward']:.2f}, no-grad / graph "
              f"forward = {f['nograd_to_graph_forward']:.2f}).", "",
              "| variant / mode | no-grad fwd (views) | fwd with graph (views) | backward (views) | floor (ms) | "
              "floor / baseline floor | measured step (ms) | step / floor |", "|---|---|---|---|---|---|---|---|"]
    for key, row in f["rows"].items():
        v = row["views"]
        measured = _ms(row["measured_step_s"]) if "measured_step_s" in row else "—"
        ratio = f"{row['step_to_floor']:.2f}" if "step_to_floor" in row else "—"
        lines.append(f"| {key} | {v['forward_nograd']:.0f} | {v['forward_graph']:.0f} | {v['backward']:.0f} | "
                     f"{_ms(row['floor_s'])} | {row['floor_ratio_to_baseline_floor']:.2f} | {measured} | {ratio} |")
    for key, title in (("sweep_n_tasks", "K"), ("sweep_n_views", "m, m'")):
        if key not in report:
            continue
        sw = report[key]
        floors = any("floor_at_task_size_s" in r for r in sw["points"].values())
        extra_head = " views per task call | fwd+bwd µs/view at that size | floor at task size (ms) | step / it |" \
            if floors else ""
        lines += ["", f"| {title} | TC² step (ms) | × baseline | images/s | peak mem (MiB) | augmentation | "
                  f"stage 1 | stage 2 |{extra_head}", "|---" * (8 + (4 if floors else 0)) + "|"]
        for name, r in sw["points"].items():
            share = r.get("share", {})
            cells = [f"{100 * share[k]:.0f}%" if k in share else "—" for k in ("augmentation", "stage1", "stage2")]
            memory = "n/a" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib']:.0f}"
            extra = ""
            if floors:
                if "floor_at_task_size_s" in r:
                    u = r["unit_costs_at_task_size"]
                    extra = (f" {r['views_per_task_call']} | {1e6 * (u['forward_graph'] + u['backward']):.0f} | "
                             f"{_ms(r['floor_at_task_size_s'])} | {r['step_to_floor_at_task_size']:.2f} |")
                else:
                    extra = " — | — | — | — |"
            lines.append(f"| {name} | {_ms(r['step_s'])} | {r['ratio']:.2f} | {r['images_per_s']:.0f} | {memory} | "
                         + " | ".join(cells) + " |" + extra)
        if "spread_max_over_min" in sw:
            lines.append(f"\nTC² slowest / fastest over this sweep: {sw['spread_max_over_min']:.2f}")
        for name, why in sw["skipped"].items():
            lines.append(f"\n{name} skipped: {why}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
