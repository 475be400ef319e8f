"""UMM's effect: post-hoc variants against the un-tuned pretrained model, paired over seeds, with 95% CIs.

    python benchmarks/umm_effect.py --pretrained RUNS/seed0 RUNS/seed1 RUNS/seed2 --tuned TUNED \\
        --variants umm_lam1,umm_lam0.1,plain --data digits,usps --out docs/figures/umm/effect.md

``--pretrained``: the finished runs, one per seed (``eval_<data>.json`` from ``tc2ssl evaluate``); ``--tuned``: a
folder with ``seed<k>/<variant>/`` post-hoc run folders (``eval.json`` for the pretraining data, which must be the
first ``--data``, and ``eval_<data>.json`` for the others; ``layers.csv`` for ΔR). Seeds pair by position. Prints
and writes a markdown table: per variant and dataset, mean linear-probe and kNN accuracy, and the paired difference
against the un-tuned model (mean [95% CI]); and the last tap's labelled ΔR and kNN before and after (from
``layers.csv``: first and last measured epoch).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from tc2ssl.benchmarks.stats import paired_difference
from tc2ssl.diagnostics.layers import LAYERS_CSV, read_layers_csv


def accuracies(path: Path) -> tuple[float, float]:
    result = json.loads(path.read_text())["pretrained"]
    return 100 * result["linear_probe"]["accuracy"], 100 * result["knn"]["accuracy"]


def eval_file(run: Path, data: str, first: str, tuned: bool) -> Path:
    return run / ("eval.json" if tuned and data == first else f"eval_{data}.json")


def fmt(diff) -> str:
    return f"{diff.mean:+.2f} [{diff.ci_low:+.2f}, {diff.ci_high:+.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", nargs="+", required=True)
    parser.add_argument("--tuned", required=True)
    parser.add_argument("--variants", required=True)
    parser.add_argument("--data", default="digits")
    parser.add_argument("--reference", default="plain", help="the variant the others are also paired against")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    variants, datasets = args.variants.split(","), args.data.split(",")
    bases = [Path(p) for p in args.pretrained]
    seeds = [f"seed{i}" for i in range(len(bases))]
    lines = ["| data | model | linear probe | kNN | probe − un-tuned | kNN − un-tuned |", "|---|---|---|---|---|---|"]
    for data in datasets:
        base = [accuracies(eval_file(b, data, datasets[0], tuned=False)) for b in bases]
        lines.append(f"| {data} | un-tuned | {sum(a[0] for a in base) / len(base):.2f} | "
                     f"{sum(a[1] for a in base) / len(base):.2f} | | |")
        for variant in variants:
            runs = [Path(args.tuned) / seed / variant for seed in seeds]
            tuned = [accuracies(eval_file(r, data, datasets[0], tuned=True)) for r in runs]
            probe = paired_difference([t[0] for t in tuned], [b[0] for b in base])
            knn = paired_difference([t[1] for t in tuned], [b[1] for b in base])
            lines.append(f"| {data} | {variant} | {sum(t[0] for t in tuned) / len(tuned):.2f} | "
                         f"{sum(t[1] for t in tuned) / len(tuned):.2f} | {fmt(probe)} | {fmt(knn)} |")
    if args.reference in variants:
        lines += ["", f"Paired against {args.reference} (the same number of post-hoc epochs of plain SSL):", "",
                  "| data | model | probe − reference | kNN − reference |", "|---|---|---|---|"]
        for data in datasets:
            reference = [accuracies(eval_file(Path(args.tuned) / seed / args.reference, data, datasets[0], True))
                         for seed in seeds]
            for variant in (v for v in variants if v != args.reference):
                tuned = [accuracies(eval_file(Path(args.tuned) / seed / variant, data, datasets[0], True))
                         for seed in seeds]
                probe = paired_difference([t[0] for t in tuned], [r[0] for r in reference])
                knn = paired_difference([t[1] for t in tuned], [r[1] for r in reference])
                lines.append(f"| {data} | {variant} | {fmt(probe)} | {fmt(knn)} |")
    lines += ["", "Last tap, labelled test subset (layers.csv), mean over seeds: before → after",
              "", "| model | ΔR/d | kNN (%) |", "|---|---|---|"]
    for variant in variants:
        before, after = [], []
        for seed in seeds:
            rows = read_layers_csv(Path(args.tuned) / seed / variant / LAYERS_CSV)
            last_tap = rows[-1]["layer"]
            tap_rows = sorted((r["epoch"], r["dR_per_dim"], r["knn_acc"]) for r in rows if r["layer"] == last_tap)
            before.append(tap_rows[0])
            after.append(tap_rows[-1])
        n = len(seeds)
        lines.append(f"| {variant} | {sum(b[1] for b in before) / n:.4f} → {sum(a[1] for a in after) / n:.4f} | "
                     f"{100 * sum(b[2] for b in before) / n:.2f} → {100 * sum(a[2] for a in after) / n:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
