"""The UMM paper's Observations 1-2 on runs with per-layer diagnostics (``diag.layers_every``): figure and table.

    python benchmarks/umm_observation1.py RUN_DIR [RUN_DIR ...] --out docs/figures/umm/NAME --title "..."

RUN_DIRs are seeds of one setting (each holds ``layers.csv``). Writes ``NAME.png`` (kNN accuracy, ΔR/d with the
label partition and ΔR with the instance partition against the epoch, one curve per tap, mean ± std over seeds)
and ``NAME.md``: per tap and seed, the best kNN accuracy, its epoch, the final one and the drop (best − final);
the mean drop over seeds; and per seed Spearman's ρ between the last tap's ΔR (label partition) and its kNN
accuracy over epochs (Observation 2: ΔR tracks accuracy).
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from tc2ssl.benchmarks.stats import spearman
from tc2ssl.diagnostics.layers import LAYERS_CSV, layer_curves, peak_and_final, plot_layers, read_layers_csv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--out", required=True, help="output path without extension")
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    per_seed = {Path(run).name: read_layers_csv(Path(run) / LAYERS_CSV) for run in args.runs}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_layers([row for rows in per_seed.values() for row in rows], out.with_suffix(".png"), args.title)
    layers = list(layer_curves(next(iter(per_seed.values())), "knn_acc"))
    last = layers[-1]
    lines = ["| tap | seed | best kNN (%) | at epoch | final kNN (%) | drop (pt) |", "|---|---|---|---|---|---|"]
    drops: dict[str, list[float]] = {layer: [] for layer in layers}
    for seed, rows in per_seed.items():
        for layer, s in peak_and_final(rows).items():
            drops[layer].append(100 * s["drop"])
            lines.append(f"| {layer} | {seed} | {100 * s['best']:.2f} | {s['best_epoch']} | {100 * s['final']:.2f} | "
                         f"{100 * s['drop']:.2f} |")
    lines += ["", "| tap | mean drop over seeds (pt) | max |", "|---|---|---|"]
    lines += [f"| {layer} | {statistics.mean(v):.2f} | {max(v):.2f} |" for layer, v in drops.items()]
    lines += ["", f"Spearman ρ(ΔR label partition, kNN accuracy) of {last} over epochs, per seed: "]
    for seed, rows in per_seed.items():
        series = sorted((r["epoch"], r["dR"], r["knn_acc"]) for r in rows if r["layer"] == last)
        lines[-1] += f"{seed} {spearman([s[1] for s in series], [s[2] for s in series]):+.2f}; "
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
