"""An earlier TC² plug-in against the current one, timed in ONE process (interleaved rounds, as throughput.py).

    git show 284c833:src/tc2ssl/plugins/tc2.py > /tmp/tc2_before.py
    python benchmarks/before_after.py /tmp/tc2_before.py --clock cpu --threads 1
    python benchmarks/before_after.py /tmp/tc2_before.py --method mae --backbone vit_tiny --n-views 2 --n-support 1 \\
        --set plugin.beta1=1e-3

The file given is executed as a module with its plug-in registrations removed; its ``TC2`` and ``PlusT`` classes are
built on the same run (method, weights, view maker) as the current ones. Variants: baseline, tasks_before,
tasks_after, tc2_before, tc2_after and tc2_after_shared (``plugin.share_support_forward=always``). The earlier
plug-in has no section timer, so only its augmentation share is shown. Prints a markdown table and, last, a JSON
object of the step-time ratios to the baseline.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput as T  # noqa: E402

from tc2ssl.config import load_config  # noqa: E402
from tc2ssl.data import load_data  # noqa: E402


def load_plugin_module(path: str):
    source = Path(path).read_text()
    for name in ("tc2", "tasks"):
        source = source.replace(f'@PLUGINS.register("{name}")', "")
    module = type(sys)("tc2_before")
    exec(compile(source, path, "exec"), module.__dict__)
    return module


class BeforeAfterVariant(T.Variant):
    """A variant whose plug-in may be the earlier implementation (plug-in names ``before:tc2``, ``before:tasks``)."""

    before_module = None

    def __init__(self, name, plugin, extra, args, data):
        before = plugin.startswith("before:")
        super().__init__(name, plugin.removeprefix("before:"), extra, args, data)
        if before:
            run = self.run
            cls = self.before_module.TC2 if plugin == "before:tc2" else self.before_module.PlusT
            earlier = cls(self.cfg, run.method, run.view_maker)
            earlier.load_state_dict(run.plugin.state_dict())     # same f_v, f_w initialisation
            run.plugin = earlier.to(run.device)
            run.plugin.view_maker = T.TimedViewMaker(run.view_maker, self)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", help="path of the earlier plugins/tc2.py")
    for flag, default in (("--method", "simclr"), ("--backbone", "small_cnn"), ("--data", "digits")):
        parser.add_argument(flag, default=default)
    for flag, default in (("--batch", 128), ("--n-tasks", 4), ("--n-views", 4), ("--n-support", 2),
                          ("--repeats", 9), ("--warmup", 2), ("--threads", 0), ("--max-train", 1024)):
        parser.add_argument(flag, type=int, default=default)
    parser.add_argument("--stage2-mode", default="first_order", choices=T.HYPERGRADIENT_MODES)
    parser.add_argument("--clock", default="wall", choices=tuple(T.CLOCKS))
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args(argv)
    args.device, args.precision, args.channels_last, args.resolution, args.no_breakdown = \
        "cpu", "32-true", False, 0, False
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    warnings.simplefilter("ignore")
    T.clock = T.CLOCKS[args.clock]
    BeforeAfterVariant.before_module = load_plugin_module(args.before)
    T.Variant = BeforeAfterVariant            # measure() builds its variants through this name
    data = load_data(load_config((), T.base_overrides(args)).data)
    generator = torch.Generator().manual_seed(0)
    images = data.train.images
    batches = [images[torch.randperm(len(images), generator=generator)[: args.batch]] for _ in range(4)]
    specs = {"baseline": ("none", []), "tasks_before": ("before:tasks", []), "tasks_after": ("tasks", []),
             "tc2_before": ("before:tc2", []), "tc2_after": ("tc2", []),
             "tc2_after_shared": ("tc2", ["plugin.share_support_forward=always"])}
    load_start, t0 = T.load_average(), time.perf_counter()
    result = T.measure(args, specs, data, batches, unit_call_sizes=(None,))
    unit = result.pop("_unit_costs")[None]
    print(f"{args.method} / {args.backbone}, batch {args.batch}, K={args.n_tasks}, m={args.n_views}, "
          f"m'={args.n_support}, {args.stage2_mode}; {T.describe_device('cpu')}; median of {args.repeats} "
          f"interleaved rounds, {args.clock} clock; load average {load_start} -> {T.load_average()}; "
          f"{time.perf_counter() - t0:.0f} s\n")
    print("| variant | step (ms) | × baseline | × baseline, paired | peak mem (MiB) | augmentation | statistics fwd | "
          "stage 1 | health | stage 2 |\n" + "|---" * 10 + "|")
    for name, r in result.items():
        share = r.get("share", {})
        cells = [f"{100 * share[k]:.0f}%" if k in share else "—" for k in T.SECTIONS]
        memory = "n/a" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib']:.0f}"
        print(f"| {name} | {1000 * r['step_s']:.1f} | {r['ratio_to_baseline']:.2f} | "
              f"{r['ratio_to_baseline_paired']:.2f} | {memory} | " + " | ".join(cells) + " |")
    print("\nunit costs µs/view: " + ", ".join(f"{k} {1e6 * v:.0f}" for k, v in unit.items()))
    print(json.dumps({name: [round(r["ratio_to_baseline"], 3), round(r["ratio_to_baseline_paired"], 3)]
                      for name, r in result.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
