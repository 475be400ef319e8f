"""The method-zoo table: every registered SSL method, without and with TC², after a short pretraining on the
embedded digits, beside the same backbone at random initialisation (linear probe and kNN on the test split).

    python benchmarks/method_zoo.py                          # all methods, 10 epochs, seed 0 -> runs/zoo
    python benchmarks/method_zoo.py --methods simclr,byol --epochs 5 --out runs/zoo_small

Each method runs ``tc2ssl compare`` with plug-ins none and tc2 on the ``main`` preset (SimCLR's schedule, small_cnn),
except MAE, which runs on the ``mae`` preset (tiny ViT, masked-view tasks): its random-initialisation row is that of
the ViT. Everything else is each method's default (see ``tc2ssl config -p main method.name=NAME``). Writes
``OUT/zoo.json`` and ``OUT/zoo.md``; the last line printed is the JSON path.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tc2ssl.config import load_config
from tc2ssl.methods import METHODS
from tc2ssl.workflows import run_compare

#: per-method settings of the table (both rows of the method get them). Barlow Twins: the cross-correlation of a
#: task's n = N/K images has rank <= n, so its identity target needs n > d; at batch 128 that means d = 32, K = 2.
METHOD_OVERRIDES: dict[str, tuple[str, ...]] = {
    "barlow_twins": ("method.proj_output_dim=32", "plugin.n_tasks=2"),
}


def probe(row: dict) -> tuple[float, float]:
    return 100 * row["linear_probe"]["accuracy"], 100 * row["knn"]["accuracy"]


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(sorted(METHODS.names())))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/zoo")
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides for every run")
    args = parser.parse_args(argv)
    out = Path(args.out)
    table, seconds = {}, {}
    for name in args.methods.split(","):
        preset = "mae" if name == "mae" else "main"
        cfg = load_config([preset], [f"method.name={name}", f"train.epochs={args.epochs}", f"seed={args.seed}",
                                     f"out={out / name}", "train.progress=false",
                                     *METHOD_OVERRIDES.get(name, ()), *args.overrides])
        start = time.perf_counter()
        rows = run_compare(cfg, ["none", "tc2"])
        seconds[name] = time.perf_counter() - start
        table[name] = {"backbone": cfg.model.backbone, "overrides": list(METHOD_OVERRIDES.get(name, ())),
                       "baseline": probe(rows[name]),
                       "tc2": probe(rows[f"{name} + tc2"]), "random_init": probe(rows["random init"]),
                       "seconds": seconds[name]}
        print(f"{name}: {table[name]}", flush=True)
    lines = [f"Linear probe / kNN accuracy (%) on the digits test split after {args.epochs} epochs of pretraining "
             f"(seed {args.seed}); random init = the same backbone untrained.", "",
             "| method | backbone | random init | baseline | + TC² | wall time (s), both runs | settings |",
             "|---|---|---|---|---|---|---|"]
    for name, r in table.items():
        cells = [f"{a:.2f} / {b:.2f}" for a, b in (r["random_init"], r["baseline"], r["tc2"])]
        lines.append(f"| {name} | {r['backbone']} | {' | '.join(cells)} | {r['seconds']:.0f} | "
                     f"{' '.join(r['overrides'])} |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "zoo.md").write_text("\n".join(lines) + "\n")
    (out / "zoo.json").write_text(json.dumps(table, indent=2))
    print("\n".join(lines))
    print(out / "zoo.json")
    return out / "zoo.json"


if __name__ == "__main__":
    main()
