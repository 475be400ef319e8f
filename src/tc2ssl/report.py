"""The run report: read ``metrics.jsonl``, plot loss curves, write ``report.md``.

``metrics.jsonl`` holds one JSON object per line, appended while training runs:

- step records: ``{"kind": "step", "epoch", "step", "loss", "lr", "images_per_s", ...}`` plus method/plug-in
  metrics such as ``"tc2/loss_v"`` (``images_per_s``: over the steps since the previous logged one);
- epoch records: ``{"kind": "epoch", "epoch", "loss"`` (the epoch mean) ``, ...}`` plus per-epoch summaries.

A run killed while writing leaves a truncated last line; it is skipped. Plots use matplotlib's object API
(``Figure`` with the Agg canvas), so importing this module does not change the process-wide pyplot backend.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

from matplotlib.figure import Figure

from tc2ssl.errors import DataError
from tc2ssl.eval.evaluate import named_results, results_table
from tc2ssl.train.checkpoint import atomic_write_bytes, atomic_write_text

LOSS_CURVE_NAME = "loss_curve.png"
RESERVED_KEYS = ("kind", "epoch", "step", "loss")


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` file, in file order.

    A last line that is not valid JSON (a run killed mid-write) is skipped silently; an invalid line elsewhere is
    skipped with a warning naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no metrics file at {path}")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            if i != last:
                warnings.warn(f"{path}:{i + 1}: not a JSON object, skipped", stacklevel=2)
            continue
        records.append(record)
    return records


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _loss_series(records: list[dict]) -> tuple[str, list, list, list, list]:
    """(x-axis name, step x, step loss, epoch x, epoch mean loss). The x-axis is the step when step records
    exist (an epoch mean sits at its record's "step", else at its last step record), else the epoch."""
    steps = [r for r in records if r.get("kind") == "step" and _is_number(r.get("loss")) and "step" in r]
    epochs = [r for r in records if r.get("kind") == "epoch" and _is_number(r.get("loss"))]
    if not steps:
        return "epoch", [], [], [r["epoch"] for r in epochs], [r["loss"] for r in epochs]
    last_step_of_epoch: dict = {}
    for r in steps:
        last_step_of_epoch[r.get("epoch")] = max(r["step"], last_step_of_epoch.get(r.get("epoch"), r["step"]))
    epoch_x, epoch_loss = [], []
    for r in epochs:
        x = r["step"] if _is_number(r.get("step")) else last_step_of_epoch.get(r["epoch"])
        if x is not None:
            epoch_x.append(x)
            epoch_loss.append(r["loss"])
    return "step", [r["step"] for r in steps], [r["loss"] for r in steps], epoch_x, epoch_loss


def plot_loss_curves(runs: dict[str, list[dict]], png_path: str | Path, title: str = "training loss") -> Path:
    """One PNG with the step loss (thin line) and the epoch means (markers) of each named run."""
    if not runs:
        raise ValueError("no runs to plot")
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.subplots()
    x_names = set()
    plotted = False
    for i, (label, records) in enumerate(runs.items()):
        x_name, step_x, step_loss, epoch_x, epoch_loss = _loss_series(records)
        color = f"C{i % 10}"
        prefix = f"{label}: " if label else ""
        if step_x:
            ax.plot(step_x, step_loss, color=color, linewidth=0.8, alpha=0.45, label=f"{prefix}step loss")
        if epoch_x:
            ax.plot(epoch_x, epoch_loss, "o-", color=color, markersize=4, label=f"{prefix}epoch mean")
        if step_x or epoch_x:
            x_names.add(x_name)
            plotted = True
    if not plotted:
        raise ValueError("no loss values to plot")
    ax.set_xlabel(" / ".join(sorted(x_names)))
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png_path = Path(png_path)
    atomic_write_bytes(png_path, lambda fh: fig.savefig(fh, format="png"))
    return png_path


def plot_loss_curve(records: list[dict], png_path: str | Path, title: str = "training loss") -> Path:
    """The step loss and epoch means of one run as a PNG."""
    return plot_loss_curves({"": records}, png_path, title)


def _training_section(records: list[dict]) -> list[str]:
    epochs = [r for r in records if r.get("kind") == "epoch"]
    steps = [r for r in records if r.get("kind") == "step"]
    if not epochs and not steps:
        return ["No training metrics were recorded."]
    lines = []
    if epochs:
        last = epochs[-1]
        lines.append(f"- epochs completed: {len(epochs)}")
        if _is_number(last.get("loss")):
            lines.append(f"- final loss (mean of epoch {last['epoch']}): {last['loss']:.4f}")
    elif _is_number(steps[-1].get("loss")):
        lines.append(f"- final loss (step {steps[-1].get('step')}, no completed epoch): {steps[-1]['loss']:.4f}")
    if steps:
        lines.append(f"- logged steps: {len(steps)}, last step: {steps[-1].get('step')}")
        speeds = sorted(r["images_per_s"] for r in steps if _is_number(r.get("images_per_s")))
        if speeds:
            lines.append(f"- throughput (median over logged steps): {speeds[len(speeds) // 2]:.0f} images/s")
    if epochs:
        extra = {k: v for k, v in epochs[-1].items() if k not in RESERVED_KEYS and _is_number(v)}
        if extra:
            lines += ["", f"Last epoch ({epochs[-1]['epoch']}):", "", "| metric | value |", "|---|---|"]
            lines += [f"| {k} | {v:.4g} |" for k, v in extra.items()]
    return lines


def _evaluation_section(eval_results: dict | None) -> list[str]:
    if not eval_results:
        return ["Evaluation was not run."]
    rows = named_results(eval_results)
    lines = ["Linear probe (ssl-transfer protocol) and weighted kNN on frozen pooled features; accuracies in %.",
             "", results_table(rows).rstrip("\n")]
    if "pretrained" in rows and "random_init" in rows:
        pre, rnd = rows["pretrained"], rows["random_init"]
        probe_gain = 100.0 * (pre["linear_probe"]["accuracy"] - rnd["linear_probe"]["accuracy"])
        knn_gain = 100.0 * (pre["knn"]["accuracy"] - rnd["knn"]["accuracy"])
        lines += ["", f"Pretrained minus random init: linear probe {probe_gain:+.2f} pt, kNN {knn_gain:+.2f} pt."]
    return lines


def write_report(run_dir: str | Path, config_yaml: str, records: list[dict], eval_results: dict | None = None,
                 extra_sections: dict[str, str] | None = None) -> Path:
    """Write ``run_dir/report.md`` (and ``run_dir/loss_curve.png`` when there are loss values); return its path.

    ``eval_results`` is one result of :func:`tc2ssl.eval.evaluate.evaluate_backbone` or a dict of them by name
    (a "random_init" entry next to "pretrained" adds the difference between the two). ``extra_sections`` maps a
    section title to its markdown body.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# Run report: {run_dir.name}", "", "## Settings", "", "```yaml", config_yaml.rstrip("\n"), "```",
             "", "## Training", ""]
    lines += _training_section(records)
    _, step_x, _, epoch_x, _ = _loss_series(records)
    if step_x or epoch_x:
        plot_loss_curve(records, run_dir / LOSS_CURVE_NAME, title=f"{run_dir.name}: training loss")
        lines += ["", f"![training loss]({LOSS_CURVE_NAME})"]
    lines += ["", "## Evaluation", ""]
    lines += _evaluation_section(eval_results)
    for title, body in (extra_sections or {}).items():
        lines += ["", f"## {title}", "", body.rstrip("\n")]
    report_path = run_dir / "report.md"
    atomic_write_text(report_path, "\n".join(lines) + "\n")
    return report_path
