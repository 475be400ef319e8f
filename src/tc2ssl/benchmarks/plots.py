"""The figures of a benchmark's results folder: metric bars per row and the K-ablation curve (matplotlib, Agg)."""
from __future__ import annotations

import textwrap
from pathlib import Path


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig, ax, title: str, png_path: Path) -> Path:
    """Title (wrapped: suite titles are long, never clip them), legend, layout, and the PNG written."""
    ax.set_title(textwrap.fill(title, 90), fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    return png_path


#: line styles of the plain rows, one per cycle through the ten colours (equal-compute rows are dashed)
ROW_LINESTYLES = ("-", ":", "-.")


def row_styles(labels: list[str]) -> dict[str, tuple[tuple[float, float, float], str]]:
    """label -> (colour, line style), distinct for every plain row (ten colours, then the next line style); an
    equal-compute row ``BASE@ROW`` is dashed in the colour of the row it is matched to, so a reader sees the pair."""
    from matplotlib import colormaps

    palette = colormaps["tab10"].colors
    plain = [label for label in labels if "@" not in label]
    styles = {label: (palette[i % 10], ROW_LINESTYLES[(i // 10) % len(ROW_LINESTYLES)])
              for i, label in enumerate(plain)}
    spare = len(plain)
    for label in labels:
        if "@" in label:
            matched = styles.get(label.split("@", 1)[1])
            styles[label] = (matched[0] if matched else palette[spare % 10], "--")
            spare += matched is None
    return styles


def plot_metric_bars(summary: dict, metrics: list[str], png_path: Path, title: str) -> Path:
    """Grouped bars: one group per metric, one bar per row (mean over seeds, error bar = std), in percent."""
    fig = _figure(max(6.0, 0.6 * len(metrics) * max(1, len(summary)) ** 0.5 + 2), 4)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(summary))
    styles = row_styles(list(summary))
    for i, (label, by_metric) in enumerate(summary.items()):
        xs = [j + (i - (len(summary) - 1) / 2) * width for j in range(len(metrics))]
        colour, linestyle = styles[label]
        ax.bar(xs, [100 * by_metric[m]["mean"] for m in metrics], width,
               yerr=[100 * by_metric[m]["std"] for m in metrics], capsize=2, color=colour,
               hatch={"-": None, "--": "//", ":": "..", "-.": "xx"}[linestyle],
               label=label.replace("tasks", "+T").replace("tc2", "TC²"))
    ax.set_xticks(range(len(metrics)))
    ax.set_xticklabels(metrics, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("accuracy (%)")
    return _save(fig, ax, title, png_path)


def plot_k_curve(curve: dict[int, dict], references: dict[str, float], png_path: Path, title: str) -> Path:
    """TC² accuracy (mean ± std over seeds) against K on a log2 axis, the reference rows as horizontal lines."""
    fig = _figure(6, 4)
    ax = fig.add_subplot(1, 1, 1)
    ks = list(curve)
    ax.errorbar(ks, [100 * curve[k]["mean"] for k in ks], yerr=[100 * curve[k]["std"] for k in ks], marker="o",
                capsize=3, label="TC²")
    for (label, value), style in zip(references.items(), (":", "--")):
        ax.axhline(100 * value, linestyle=style, color="grey", label=label.replace("tasks", "+T"))
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.set_xlabel("K (tasks per batch)")
    ax.set_ylabel("linear probe accuracy (%)")
    return _save(fig, ax, title, png_path)


def plot_time_to_accuracy(curves: dict[str, list[dict]], png_path: Path, title: str) -> Path | None:
    """kNN accuracy (%) against training wall-clock (left) and images seen (right), one curve per row (mean over
    seeds); None when no row has a curve."""
    curves = {label: points for label, points in curves.items() if points}
    if not curves:
        return None
    fig = _figure(11, 4)
    axes = [fig.add_subplot(1, 2, i) for i in (1, 2)]
    styles = row_styles(list(curves))
    for label, points in curves.items():
        colour, linestyle = styles[label]
        for ax, key in zip(axes, ("seconds", "images")):
            ax.plot([p[key] for p in points], [100 * p["knn"] for p in points], marker=".", color=colour,
                    linestyle=linestyle, label=label.replace("tasks", "+T").replace("tc2", "TC²"))
    axes[0].set_xlabel("training wall-clock (s)")
    axes[1].set_xlabel("images seen")
    for ax in axes:
        ax.set_ylabel("kNN accuracy (%)")
    axes[0].set_title("time to accuracy", fontsize=9)
    return _save(fig, axes[1], title, png_path)
