"""The cross-suite summary of docs/results.md: every suite × every row, the paired difference to the base method
on the suite's headline metric with its 95% interval, at equal epochs and at equal compute, and one overview plot.

``python -m tc2ssl.benchmarks.summary BENCHMARK_DIR... [--png PATH]`` reads each folder's results.json (written
by ``tc2ssl benchmark``) and prints the markdown table; ``--png`` also draws the overview (one panel per suite,
whatever the number of folders for it; one line per row: the equal-epoch interval and, below it, the equal-compute
one).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from tc2ssl.benchmarks.plots import _figure
from tc2ssl.errors import DataError


def load_results(folders: list[str | Path]) -> list[dict]:
    """The results.json of every folder; each gets ``folder``, its path relative to the folders' common parent
    (``controls/pacs`` beside ``pacs``), which tells apart two runs of the same suite."""
    results = []
    resolved = [Path(folder).resolve() for folder in folders]
    common = Path(os.path.commonpath(resolved)) if len(resolved) > 1 else None
    for folder, absolute in zip(folders, resolved):
        path = Path(folder) / "results.json"
        if not path.is_file():
            raise DataError(f"no benchmark results at {path} (run `tc2ssl benchmark SUITE` first)")
        result = json.loads(path.read_text(encoding="utf-8"))
        relative = absolute.relative_to(common).as_posix() if common is not None and absolute != common else ""
        result.setdefault("folder", relative or Path(folder).name)
        results.append(result)
    return results


def _cell(difference: dict | None) -> str:
    if not difference:
        return "—"
    values = [difference.get(k) for k in ("mean", "ci_low", "ci_high")]
    text = ["n/a" if v is None or not math.isfinite(v) else f"{100 * v:+.2f}" for v in values]
    return f"{text[0]} [{text[1]}, {text[2]}]"


def summary_rows(result: dict) -> list[dict]:
    """One entry per compared row of one suite: its headline mean, the equal-epoch and equal-compute differences."""
    primary, rows = result["primary"], []
    compute = result.get("equal_compute") or {}
    for row in result["rows"]:
        label = row["label"]
        if label not in result.get("paired", {}) or "@" in label:
            continue
        rows.append({"suite": result["suite"], "row": label, "baseline": row["baseline"],
                     "mean": result["summary"][label][primary]["mean"],
                     "equal_epochs": result["paired"][label][primary],
                     "compute_comparator": compute.get(label, {}).get("comparator"),
                     "equal_compute": (result.get("paired_compute") or {}).get(label, {}).get(primary)})
    return rows


def _per_seed(result: dict, entry: dict) -> dict[str, float]:
    per_seed = (result.get("runs") or {}).get(entry["row"], {})
    return {str(seed): per_seed[str(seed)]["metrics"][result["primary"]] for seed in result["seeds"]
            if str(seed) in per_seed}


def _measurement(result: dict, entry: dict) -> tuple:
    """What identifies one reported row: suite, preset, seeds, label, base, its per-seed headline values and its
    two comparisons (a folder that paired or matched it differently reports something else)."""
    values = tuple(_per_seed(result, entry).values()) or (entry["mean"],)
    compute = ((entry["equal_epochs"] or {}).get("mean"), entry["compute_comparator"],
               (entry["equal_compute"] or {}).get("mean"))
    return (result["suite"], result["preset"], tuple(result["seeds"]), entry["row"], entry["baseline"], values,
            compute)


def _covered(result: dict, entry: dict, other: dict, other_entry: dict) -> bool:
    """Whether ``other`` reports the same runs of the row as ``result`` and more seeds: same suite, preset, label,
    base and comparator; its seeds a strict superset; the same per-seed headline values on the shared seeds (a
    folder of 3 seeds whose runs a 5-seed folder also holds)."""
    same = (result["suite"], result["preset"], entry["row"], entry["baseline"], entry["compute_comparator"]) == (
        other["suite"], other["preset"], other_entry["row"], other_entry["baseline"],
        other_entry["compute_comparator"])
    if not same or not set(map(str, result["seeds"])) < set(map(str, other["seeds"])):
        return False
    mine, theirs = _per_seed(result, entry), _per_seed(other, other_entry)
    return bool(mine) and all(theirs.get(seed) == value for seed, value in mine.items())


def distinct_rows(results: list[dict]) -> list[tuple[dict, dict]]:
    """(result, entry) of every compared row of every folder, each measurement once: two folders of one suite
    often share runs (the SimCLR rows of a folder with ``--methods byol`` are the same runs as the main folder's;
    a 3-seed folder's runs are the first seeds of a 5-seed folder of the same rows), and a row listed twice would
    read as two results. Of the same runs at different seed counts, the one with more seeds is kept."""
    seen, candidates = set(), []
    for result in results:
        for entry in summary_rows(result):
            key = _measurement(result, entry)
            if key not in seen:
                seen.add(key)
                candidates.append((result, entry))
    return [(result, entry) for result, entry in candidates
            if not any(_covered(result, entry, other, other_entry) for other, other_entry in candidates)]


def summary_markdown(results: list[dict]) -> str:
    lines = ["| suite (headline) | preset, seeds | row | mean (%) | vs base, equal epochs | equal-compute comparator "
             "| vs comparator, equal compute |", "|---|---|---|---|---|---|---|"]
    for result, entry in distinct_rows(results):
        lines.append(f"| {result['suite']} ({result['primary']}) | {result['preset']}, "
                     f"{len(result['seeds'])} | {entry['row']} | {100 * entry['mean']:.2f} | "
                     f"{_cell(entry['equal_epochs'])} vs {entry['baseline']} | "
                     f"{entry['compute_comparator'] or '—'} | {_cell(entry['equal_compute'])} |")
    return "\n".join(lines) + "\n"


def overview_panels(results: list[dict]) -> dict[str, list[tuple[str, dict]]]:
    """The overview's panels: one per suite (folders of the same suite share it), each a list of (label, entry);
    a label is ``row vs base (n seeds)``, with the folder name added where two folders have the same row."""
    panels: dict[str, list[tuple[str, dict]]] = {}
    for result, entry in distinct_rows(results):
        panel = panels.setdefault(result["suite"], [])
        panel.append((f"{entry['row']} vs {entry['baseline']} ({len(result['seeds'])} seeds)", entry,
                      result.get("folder", "")))
    out = {}
    for suite, panel in panels.items():
        rows = [entry["row"] for _, entry, _ in panel]
        out[suite] = [(label + (f" [{folder}]" if rows.count(entry["row"]) > 1 else ""), entry)
                      for label, entry, folder in panel]
    return out


def plot_overview(results: list[dict], png_path: Path) -> Path:
    """Paired differences (points) with their 95% intervals: one panel per suite (two panels a row), one line per
    row, equal epochs (circles) and equal compute (squares); the zero line is each row's base."""
    panels = overview_panels(results)
    columns = min(2, max(1, len(panels)))
    grid_rows = math.ceil(len(panels) / columns) if panels else 1
    tallest = max((len(entries) for entries in panels.values()), default=1)
    fig = _figure(7.5 * columns, grid_rows * (0.9 + 0.32 * tallest))
    primary = {result["suite"]: result["primary"] for result in results}
    for index, (suite, entries) in enumerate(panels.items(), start=1):
        ax = fig.add_subplot(grid_rows, columns, index)
        labelled: set[str] = set()
        for position, (_, entry) in enumerate(entries):
            for offset, key, marker in ((0.15, "equal_epochs", "o"), (-0.15, "equal_compute", "s")):
                difference = entry[key]
                if not difference or difference.get("mean") is None:
                    continue
                low, high = difference.get("ci_low"), difference.get("ci_high")
                mean = 100 * difference["mean"]
                if low is not None and high is not None and math.isfinite(low) and math.isfinite(high):
                    ax.plot([100 * low, 100 * high], [position + offset] * 2, color="C0" if marker == "o" else "C1")
                ax.plot([mean], [position + offset], marker=marker, color="C0" if marker == "o" else "C1",
                        label=None if key in labelled else key.replace("_", " "))
                labelled.add(key)
        ax.axvline(0.0, color="grey", linestyle=":")
        ax.set_yticks(range(len(entries)))
        ax.set_yticklabels([label for label, _ in entries], fontsize=7)
        ax.set_ylim(-0.6, max(len(entries), 1) - 0.4)
        ax.set_xlabel(f"Δ {primary[suite]} against the row's base (points, 95% CI)", fontsize=8)
        ax.set_title(suite, fontsize=9)
        if entries:
            ax.legend(fontsize=7, loc="best", framealpha=0.6)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    return png_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--png", default=None)
    args = parser.parse_args(argv)
    results = load_results(args.folders)
    print(summary_markdown(results), end="")
    if args.png:
        Path(args.png).parent.mkdir(parents=True, exist_ok=True)
        plot_overview(results, Path(args.png))
    return 0


if __name__ == "__main__":
    sys.exit(main())
