"""Step time, images/s and the stage breakdown of the baseline, +T and TC², measured in ONE process.

    python benchmarks/throughput.py --quick                      # about a minute on a 2-core CPU
    python benchmarks/throughput.py --sweep --out docs/perf      # also sweeps K and m
    python benchmarks/throughput.py --backbone resnet18 --data cifar10_subset --device cuda   (GPU)

Every variant trains on the same batches with the same backbone, and the variants are timed in interleaved rounds
(round r: baseline step, +T step, TC² step), so slow drift of a shared machine affects all of them alike; the reported
figure is the median over rounds. Ratios (TC² / baseline) are what the targets are about, not absolute times.
The TC² breakdown calls the plug-in's own pieces in the order ``training_step`` does: augmentation (m views),
statistics forward (no grad, N·m views), stage 1 (f_v, f_w), stage 2 (encoder, Eqs. 6-7).

The last line printed is a JSON object with the TC²-to-baseline step-time ratio.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

from tc2ssl.config import load_config
from tc2ssl.data.tasks import build_tasks
from tc2ssl.plugins.base import StepInfo
from tc2ssl.train.loop import build_run
from tc2ssl.train.schedule import build_optimizer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_run(args, plugin: str, extra: list[str] = ()):
    overrides = [f"plugin.name={plugin}", f"method.name={args.method}", f"model.backbone={args.backbone}",
                 f"data.name={args.data}", f"train.batch_size={args.batch}", f"plugin.n_tasks={args.n_tasks}",
                 f"plugin.n_views={args.n_views}", f"plugin.n_support_views={args.n_support}",
                 f"plugin.stage2_mode={args.stage2_mode}", "plugin.conflict_every=0", "train.progress=false",
                 f"train.accelerator={'gpu' if args.device == 'cuda' else 'cpu'}",
                 f"train.precision={args.precision}", *extra]
    if args.max_train:
        overrides.append(f"data.max_train={args.max_train}")
    return build_run(load_config((), overrides))


def full_step(run, optimizer, images, info) -> None:
    optimizer.zero_grad(set_to_none=True)
    with run.fabric.autocast():
        run.plugin.training_step(images, info)
    optimizer.step()
    sync(run.device)


def breakdown(run, images, info) -> dict[str, float]:
    """Seconds of each part of one TC² / +T step, in training_step's order."""
    plugin, p = run.plugin, run.plugin.cfg
    times = {}
    t0 = time.perf_counter()
    views = plugin.view_maker(images, p.n_views, info.seed)
    sync(run.device)
    times["augmentation"] = time.perf_counter() - t0
    split = build_tasks(images.shape[0], p.n_tasks, p.n_views, p.n_support_views,
                        torch.Generator().manual_seed(info.seed ^ 0x7A5C), min_support=run.method.min_support_views)
    basis = None
    if plugin.use_calibration:
        t0 = time.perf_counter()
        with torch.no_grad():
            z = run.method.embed(views.flatten(0, 1)).view(views.shape[0], p.n_views, -1)
            plugin.set_scale(z)
            z = plugin.prep(z)
        sync(run.device)
        times["statistics_forward"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        basis = plugin.stage1(z, split, views)[0]
        sync(run.device)
        times["stage1"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    plugin.stage2(views, split, basis, info)
    sync(run.device)
    times["stage2"] = time.perf_counter() - t0
    for prm in run.method.parameters():
        prm.grad = None
    return times


def measure(args, variants: dict[str, list[str]]) -> dict:
    torch.manual_seed(0)
    runs = {name: make_run(args, *spec) for name, spec in variants.items()}
    any_run = next(iter(runs.values()))
    device = any_run.device
    images_all = any_run.data.train.images
    generator = torch.Generator().manual_seed(0)
    batches = [images_all[torch.randperm(len(images_all), generator=generator)[: args.batch]].to(device)
               for _ in range(4)]
    optimizers = {name: build_optimizer(r.method.online_parameters().values(), r.cfg.train) for name, r in runs.items()}
    step_times = {name: [] for name in runs}
    parts = {name: [] for name in runs}
    for r in range(args.warmup + args.repeats):
        for name, run in runs.items():
            info = StepInfo(epoch=0, step=r, seed=1000 + r)
            images = batches[r % len(batches)]
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            full_step(run, optimizers[name], images, info)
            dt = time.perf_counter() - t0
            if r >= args.warmup:
                step_times[name].append(dt)
                if name != "baseline" and not args.no_breakdown:
                    parts[name].append(breakdown(run, images, info))
    result = {}
    for name, times in step_times.items():
        med = statistics.median(times)
        entry = {"step_s": med, "images_per_s": args.batch / med, "repeats": len(times)}
        if parts[name]:
            keys = parts[name][0].keys()
            part_med = {k: statistics.median(p[k] for p in parts[name]) for k in keys}
            total = sum(part_med.values())
            entry["breakdown_s"] = part_med
            entry["share"] = {k: v / total for k, v in part_med.items()}
        if device.type == "cuda":
            entry["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        result[name] = entry
    base = result["baseline"]["step_s"]
    for name in result:
        result[name]["ratio_to_baseline"] = result[name]["step_s"] / base
    return result


def floor_accounting(n: int, m: int, m_support: int, mode: str) -> dict:
    """Encoder passes per batch, in units of 'one forward (or backward) over one view of every image'.

    Baseline (2 views): forward 2, backward 2 -> 4 units.
    TC² first order: statistics forward m (no grad) + support forward/backward m' + m' + no-grad support forward
    at θ^k m' (anchors) + query forward/backward (m - m') x 2 -> see the returned dict. Backward is counted as 2 forward
    units (the usual rule of thumb), so the ratio is an estimate of the compute floor relative to the baseline.
    """
    backward = 2.0
    baseline = 2 + 2 * backward
    q = m - m_support
    tc2 = {"statistics_forward": m, "support_forward": m_support, "support_backward": m_support * backward,
           "anchor_forward_at_theta_k": m_support, "query_forward": q, "query_backward": q * backward}
    if mode == "finite_difference":
        tc2["fd_probes"] = 2 * (m_support + m_support * backward)
    if mode == "exact":
        tc2["second_order_backward"] = (m_support + q) * backward
    total = sum(tc2.values())
    plus_t = total - m  # +T has no statistics forward
    return {"units": {"baseline": baseline, "tc2": total, "tasks": plus_t},
            "floor_ratio": {"tc2": total / baseline, "tasks": plus_t / baseline}, "tc2_terms": tc2}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="simclr")
    parser.add_argument("--backbone", default="small_cnn")
    parser.add_argument("--data", default="digits")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--n-tasks", type=int, default=4)
    parser.add_argument("--n-views", type=int, default=4)
    parser.add_argument("--n-support", type=int, default=2)
    parser.add_argument("--stage2-mode", default="first_order")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--max-train", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="fewer repeats; about a minute on 2 CPU cores")
    parser.add_argument("--sweep", action="store_true", help="also sweep K in {2,4,8,16} and m in {3,4,6}")
    parser.add_argument("--no-breakdown", action="store_true")
    parser.add_argument("--out", default=None, help="folder for throughput.json and throughput.md")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    if args.quick:
        args.repeats, args.warmup = 5, 1
    warnings.simplefilter("ignore")
    variants = {"baseline": ["none"], "tasks": ["tasks"], "tc2": ["tc2"]}
    report = {"settings": {k: v for k, v in vars(args).items()}, "device": describe_device(args.device),
              "main": measure(args, variants),
              "floor": floor_accounting(args.batch, args.n_views, args.n_support, args.stage2_mode)}
    if args.sweep:
        k_sweep = {}
        for k in (2, 4, 8, 16):
            res = measure(args, {"baseline": ["none"], "tc2": ["tc2", [f"plugin.n_tasks={k}"]]})
            k_sweep[k] = {"tc2_step_s": res["tc2"]["step_s"], "ratio": res["tc2"]["ratio_to_baseline"]}
        m_sweep = {}
        for m in (3, 4, 6):
            res = measure(args, {"baseline": ["none"], "tc2": ["tc2", [f"plugin.n_views={m}"]]})
            m_sweep[m] = {"tc2_step_s": res["tc2"]["step_s"], "ratio": res["tc2"]["ratio_to_baseline"]}
        report["sweep_n_tasks"], report["sweep_n_views"] = k_sweep, m_sweep
    text = to_markdown(report)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "throughput.json").write_text(json.dumps(report, indent=2))
        (out / "throughput.md").write_text(text)
    main_res = report["main"]
    print(json.dumps({"tc2_to_baseline_step_ratio": round(main_res["tc2"]["ratio_to_baseline"], 3),
                      "tasks_to_baseline_step_ratio": round(main_res["tasks"]["ratio_to_baseline"], 3),
                      "tc2_stage1_share": round(main_res["tc2"].get("share", {}).get("stage1", float("nan")), 3),
                      "floor_ratio_tc2": round(report["floor"]["floor_ratio"]["tc2"], 3)}))
    return 0


def describe_device(device: str) -> str:
    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    import os
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def to_markdown(report: dict) -> str:
    s = report["settings"]
    lines = [f"Throughput: {s['method']} on {s['data']}, backbone {s['backbone']}, batch {s['batch']}, K={s['n_tasks']}, "
             f"m={s['n_views']}, m'={s['n_support']}, stage 2 {s['stage2_mode']}; {report['device']}; median of "
             f"{s['repeats']} interleaved rounds", "",
             "| variant | step (ms) | images/s | × baseline | augmentation | statistics fwd | stage 1 | stage 2 |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in report["main"].items():
        share = r.get("share", {})
        cells = [f"{100 * share[k]:.0f}%" if k in share else "—" for k in
                 ("augmentation", "statistics_forward", "stage1", "stage2")]
        lines.append(f"| {name} | {1000 * r['step_s']:.1f} | {r['images_per_s']:.0f} | {r['ratio_to_baseline']:.2f} | "
                     + " | ".join(cells) + " |")
    f = report["floor"]
    lines += ["", f"Compute floor (encoder passes in view units, backward = 2 forwards): baseline "
              f"{f['units']['baseline']:.0f}, +T {f['units']['tasks']:.0f}, TC² {f['units']['tc2']:.0f} -> floor ratio "
              f"TC²/baseline {f['floor_ratio']['tc2']:.2f}, +T/baseline {f['floor_ratio']['tasks']:.2f}."]
    if "sweep_n_tasks" in report:
        lines += ["", "| K | TC² step (ms) | × baseline |", "|---|---|---|"]
        lines += [f"| {k} | {1000 * v['tc2_step_s']:.1f} | {v['ratio']:.2f} |" for k, v in report["sweep_n_tasks"].items()]
        lines += ["", "| m | TC² step (ms) | × baseline |", "|---|---|---|"]
        lines += [f"| {m} | {1000 * v['tc2_step_s']:.1f} | {v['ratio']:.2f} |" for m, v in report["sweep_n_views"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
