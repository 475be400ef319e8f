"""The Figure-1 replication: inter-task gradient cosine per epoch, several seeds of each plug-in (D-DG-01, R1).

The paper (Fig. 1(b)(c)) plots, for SimCLR+T, the per-epoch cosine similarity between the gradients of the tasks
of a batch: it fluctuates and is often negative. ``tc2ssl figure1`` pretrains each plug-in (default: ``tasks`` = +T
and ``tc2``) for each seed with the conflict metric logged every ``plugin.conflict_every`` steps (the command sets
1, every iteration, unless you give another), then writes:

- ``conflict.csv``: one row per measured step: epoch, step, plugin, seed, mean, min, frac_negative, space;
- ``conflict_epochs.csv``: the per-epoch summaries;
- ``figure1.png``: per-epoch mean cosine against epoch, one line per (plug-in, seed), zero line;
- ``figure1.json``: the per-epoch series and the R1 statistics (per seed: std of the per-epoch mean across epochs,
  minimum per-step cosine).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import statistics
from pathlib import Path

from tc2ssl import config as config_mod


def _read_records(path: Path) -> list[dict]:
    from tc2ssl.report import read_metrics

    return read_metrics(path)


def run_figure1(cfg: config_mod.RunConfig, plugins: list[str], seeds: list[int]) -> dict:
    from tc2ssl.train.loop import pretrain

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    steps_rows, epoch_rows, series = [], [], {}
    for name in plugins:
        for seed in seeds:
            run_cfg = dataclasses.replace(
                cfg, seed=seed, out=str(out / f"{name}_seed{seed}"),
                plugin=dataclasses.replace(cfg.plugin, name=name, conflict_every=cfg.plugin.conflict_every or 1),
                train=dataclasses.replace(cfg.train, log_every=1),  # one conflict.csv row per iteration (R1)
                eval=dataclasses.replace(cfg.eval, enabled=False))
            config_mod.validate(run_cfg)
            run_dir = pretrain(run_cfg)
            space = "calibrated" if name == "tc2" and cfg.plugin.calibration else "raw"
            per_epoch = []
            for rec in _read_records(run_dir / "metrics.jsonl"):
                if "conflict/cos_mean" not in rec:
                    continue
                row = {"epoch": rec["epoch"], "step": rec["step"], "plugin": name, "seed": seed,
                       "mean": rec["conflict/cos_mean"], "min": rec["conflict/cos_min"],
                       "frac_negative": rec["conflict/frac_negative"], "space": space}
                (epoch_rows if rec["kind"] == "epoch" else steps_rows).append(row)
                if rec["kind"] == "epoch":
                    per_epoch.append(rec["conflict/cos_mean"])
            series[f"{name} seed {seed}"] = per_epoch
    _write_csv(out / "conflict.csv", steps_rows)
    _write_csv(out / "conflict_epochs.csv", epoch_rows)
    r1 = {}
    for label, values in series.items():
        mins = [r["min"] for r in steps_rows if f"{r['plugin']} seed {r['seed']}" == label]
        r1[label] = {"epoch_mean_std": statistics.pstdev(values) if len(values) > 1 else 0.0,
                     "mean_over_epochs": statistics.fmean(values) if values else float("nan"),
                     "min_step_cosine": min(mins) if mins else float("nan"),
                     "n_logged_steps": len(mins)}
    plot_figure1(series, out / "figure1.png", title=f"{cfg.method.name} on {cfg.data.name}: inter-task gradient "
                                                      f"cosine (K = {cfg.plugin.n_tasks})")
    result = {"series": series, "r1": r1, "plugins": plugins, "seeds": seeds}
    (out / "figure1.json").write_text(json.dumps(result, indent=2))
    return result


def _write_csv(path: Path, rows: list[dict]) -> None:
    fields = ["epoch", "step", "plugin", "seed", "mean", "min", "frac_negative", "space"]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def plot_figure1(series: dict[str, list[float]], png_path: Path, title: str) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    styles = {"tasks": "--", "tc2": "-", "none": ":"}
    for label, values in series.items():
        ax.plot(range(1, len(values) + 1), values, styles.get(label.split()[0], "-"), marker="o", markersize=3,
                label=label.replace("tasks", "+T").replace("tc2", "TC²"))
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("inter-task gradient cosine (epoch mean)")
    ax.set_title(title, fontsize=9)
    if len(series) > 8:   # many runs (a benchmark's seeds x rows): the legend beside the axes, not over the curves
        fig.set_size_inches(10, 4.5)
        ax.legend(fontsize=6, ncol=1 + len(series) // 16, loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        ax.legend(fontsize=7, ncol=2)
    ax.set_xticks(range(1, 1 + max((len(v) for v in series.values()), default=1)))
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    return png_path
