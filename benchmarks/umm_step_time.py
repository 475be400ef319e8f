"""UMM's step time against a plain SSL step on the same late layers, in ONE process.

    python benchmarks/umm_step_time.py                               # SimCLR, small_cnn, digits, batch 128, CPU
    python benchmarks/umm_step_time.py --method byol --rounds 30 --out docs/perf/umm

Every variant trains the same tuned parameters (late backbone layers after ``--early`` and the heads; the early
part runs without autograd in eval mode) on the same batches:

- ``plain_late``: the method's own two-view loss, one backward: what fine-tuning the late layers with plain SSL
  costs (the reference);
- ``umm_bilevel``: the UMM step (inner JS term with its double backward, one inner step, outer ΔR, the DARTS
  finite-difference Hessian term: two more inner gradients); ``umm_first_order``: the same without the Hessian term;
  ``umm_no_js``: β = 0 (no double backward through the per-sample gradient norms);

Variants are timed in interleaved rounds (round r: one step of each in turn) with the process's CPU time and one
intra-op thread (``time.process_time``: robust to other jobs on a shared machine), median over rounds. A step is
zero_grad, the step itself, and an Adam step over the tuned parameters. The last line printed is a JSON object.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from tc2ssl.config import load_config
from tc2ssl.methods.base import LossContext
from tc2ssl.plugins.base import StepInfo
from tc2ssl.plugins.umm import eval_mode
from tc2ssl.train.loop import build_run

VARIANTS = {
    "umm_bilevel": [],
    "umm_first_order": ["plugin.umm.hypergradient=first_order"],
    "umm_no_js": ["plugin.umm.beta=0"],
}


def plain_late_step(plugin, images: torch.Tensor, info: StepInfo) -> torch.Tensor:
    """The method's two-view loss on the late layers only (f_e without autograd), one backward."""
    views = plugin.augmented_views(images, 2, info.seed)
    with torch.no_grad(), eval_mode(plugin.early):
        early = plugin.early(views.flatten(0, 1))
    z = plugin.method.projector(plugin.late.rest(early)).view(views.shape[0], 2, -1)
    loss = plugin.method.baseline_loss(z, LossContext(views=views, update_state=False))
    loss.backward()
    return loss.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="simclr")
    parser.add_argument("--backbone", default="small_cnn")
    parser.add_argument("--early", default="early")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = [f"method.name={args.method}", f"model.backbone={args.backbone}", f"train.batch_size={args.batch}",
            "plugin.name=umm", "plugin.umm.interleave_every=1", f"plugin.umm.early={args.early}"]
    runs = {}
    for name, extra in {"plain_late": [], **VARIANTS}.items():
        cfg = load_config((), [*base, *extra])
        run = build_run(cfg)
        run.plugin.on_fit_start(run)
        run.method.train()
        tuned = list(run.plugin.tuned_parameters().values())
        runs[name] = (run, torch.optim.Adam(tuned, lr=1e-4))
    images = runs["plain_late"][0].data.train.images
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(args.warmup + args.rounds):
        batch = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(r))[:args.batch]]
        info = StepInfo(epoch=0, step=r, seed=r)
        for name, (run, optimizer) in runs.items():
            start = time.process_time()
            optimizer.zero_grad(set_to_none=True)
            if name == "plain_late":
                plain_late_step(run.plugin, batch, info)
            else:
                run.plugin.training_step(batch, info)
            optimizer.step()
            if r >= args.warmup:
                times[name].append(time.process_time() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    result = {"method": args.method, "backbone": args.backbone, "early": args.early, "batch": args.batch,
              "rounds": args.rounds, "median_step_s": medians,
              "ratio_to_plain_late": {name: medians[name] / medians["plain_late"] for name in medians}}
    lines = ["| variant | median CPU s / step | × plain late-layer SSL step |", "|---|---|---|"]
    lines += [f"| {name} | {medians[name]:.4f} | {result['ratio_to_plain_late'][name]:.2f} |" for name in medians]
    print("\n".join(lines))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"umm_step_time_{args.method}.json").write_text(json.dumps(result, indent=2))
        (out / f"umm_step_time_{args.method}.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
