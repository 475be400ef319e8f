"""One benchmark table from several finished benchmarks of the same suite and preset (``tc2ssl merge``).

``tc2ssl merge OUT DIR [DIR ...] [--rows LABEL,...] [--seeds 0,1,2,3,4]`` reads each DIR's results.json (written by
``tc2ssl benchmark``) and writes one results.json / results.md / figures under OUT, as if one invocation had run
every row at every seed: the same means, paired differences, equal-compute comparisons, time-to-accuracy curves
and checks (they are recomputed from the per-run records, which results.json keeps). Two uses:

* seeds run at different times or on different machines (seeds 0-2 yesterday, 3-4 today), and
* rows of one base method beside another's: a folder run with ``method.name=byol`` as its base config holds rows
  ``none``, ``tc2``, ``none@tc2``; merged after a folder whose base is SimCLR they become ``byol/none``,
  ``byol/tc2``, ``byol/none@byol/tc2`` with the override ``method.name=byol``, exactly the rows
  ``tc2ssl benchmark --methods byol`` would have made (``random_init``, the untrained backbone, does not depend on
  the method and keeps its label).

What must agree, or the merge is refused naming the difference: the suite, the preset, the suite options and the
base config (all but ``out``, ``seed``, the keys a resumed run may change (e.g. logging) and, for a relabelled
folder, ``method.name``; an older config is first resolved as this version reads it); a row's definition (plug-in,
overrides, base) wherever two folders have it; a (row, seed) that two folders both hold must have the same metrics
(it is then the same run, reused by both); a row's equal-compute comparator and its epochs. The equal-compute
epochs of a benchmark are set once from its first seed's step timing, so a folder of later seeds run with a copy of
the first folder's ``equal_compute.json`` (``tc2ssl benchmark`` reuses the timing found there) matches the first
folder's comparators. Each selected row must have a record for each selected seed.

The first folder's base method names the plain rows. results.json records where each (row, seed) came from
(``merged_from``).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from tc2ssl import config as config_mod
from tc2ssl.benchmarks.compute import ComputeMatch
from tc2ssl.benchmarks.presets import get_preset
from tc2ssl.benchmarks.suites import RANDOM_INIT, SUITES, Row, finish_results, summarize_runs
from tc2ssl.errors import ConfigError, DataError
from tc2ssl.train.loop import _config_diff, _resolved

#: base-config keys that may differ between merged folders (where the runs went, the base seed)
UNCOMPARED_KEYS = ("out", "seed")
#: suite options that only decide which rows a benchmark has (the rows themselves are compared instead)
ROW_OPTIONS = ("k_values", "posthoc_epochs")


def read_results(folder: str | Path) -> dict:
    path = Path(folder) / "results.json"
    if not path.is_file():
        raise DataError(f"no benchmark results at {path} (run `tc2ssl benchmark SUITE` first)")
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
        missing = [key for key in ("suite", "preset", "options", "seeds", "rows", "runs") if key not in result]
        if missing or not isinstance(result["config"]["method"]["name"], str):
            raise KeyError(missing[0] if missing else "config.method.name")
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise DataError(f"{path} is not a tc2ssl benchmark results file ({error})") from None
    return result


def relabel(label: str, method: str) -> str:
    """A row label of a folder whose base method is ``method``, as a folder of another base method names it."""
    if label == RANDOM_INIT:
        return label
    return "@".join(f"{method}/{part}" for part in label.split("@"))


def _method_rows(result: dict, method: str | None) -> list[Row]:
    """The folder's rows as Row objects, relabelled for ``method`` (None: as they are)."""
    rows = []
    for entry in result["rows"]:
        row = Row(**{**entry, "overrides": tuple(entry["overrides"])})
        if method is not None and not row.untrained:
            if any(o.startswith("method.name=") for o in row.overrides):
                raise ConfigError(f"{result['_folder']}: row {row.label!r} has its own method.name and the "
                                  f"folder's base method ({method}) differs from the first folder's: merge it "
                                  "with a folder of the same base method")
            row = Row(relabel(row.label, method), row.plugin, (f"method.name={method}", *row.overrides),
                      relabel(row.baseline, method), row.untrained, row.equal_compute)
        rows.append(row)
    return rows


def _without(value, keys: tuple[str, ...]):
    return {k: v for k, v in value.items() if k not in keys} if isinstance(value, dict) else value


def _comparable(config: dict, drop_method: bool) -> dict:
    config = {k: v for k, v in config.items() if k not in UNCOMPARED_KEYS}
    if drop_method:
        config["method"] = {k: v for k, v in config["method"].items() if k != "name"}
    return config


def merge_results(folders: list[str | Path], out: str | Path, rows: list[str] | None = None,
                  seeds: list[int] | None = None) -> dict:
    """Merge the results.json of ``folders`` into ``out`` (module docstring); returns the merged results.json.
    ``rows``: the row labels to keep (their bases and equal-compute comparators come with them); None: all.
    ``seeds``: the seeds to keep; None: every seed any folder has."""
    if not folders:
        raise ConfigError("tc2ssl merge needs at least one benchmark folder")
    results = []
    for folder in folders:
        result = read_results(folder)
        result["_folder"] = str(folder)
        results.append(result)
    first = results[0]
    method = first["config"]["method"]["name"]
    for result in results[1:]:
        for key in ("suite", "preset", "options"):  # options: all but those that only add rows
            if _without(result[key], ROW_OPTIONS) != _without(first[key], ROW_OPTIONS):
                raise ConfigError(f"{result['_folder']} is a benchmark of another {key} ({result[key]!r}) than "
                                  f"{first['_folder']} ({first[key]!r}): only one suite at one scale merges")
        other = result["config"]["method"]["name"]
        diffs = _config_diff(_comparable(_resolved(first["config"]), other != method),
                             _comparable(_resolved(result["config"]), other != method), labels=("", " against "))
        if diffs:
            raise ConfigError(f"{result['_folder']} ran another base config than {first['_folder']}: "
                              + "; ".join(diffs))

    merged_rows: dict[str, Row] = {}
    runs: dict[str, dict[str, dict]] = {}
    origin: dict[str, dict[str, str]] = {}
    matches: dict[str, ComputeMatch] = {}
    for result in results:
        other = result["config"]["method"]["name"]
        prefix = None if other == method else other
        folder_rows = _method_rows(result, prefix)
        names = {entry["label"]: row.label for entry, row in zip(result["rows"], folder_rows)}
        for row in folder_rows:
            known = merged_rows.setdefault(row.label, row)
            if known != row:
                raise ConfigError(f"row {row.label!r} is defined differently in {result['_folder']} ({row}) than in "
                                  f"an earlier folder ({known})")
        for label, by_seed in result["runs"].items():
            for seed, record in by_seed.items():
                name = names.get(label, label)
                held = runs.setdefault(name, {}).get(seed)
                if held is None:
                    runs[name][seed] = record
                    origin.setdefault(name, {})[seed] = result["_folder"]
                elif held["metrics"] != record["metrics"]:
                    raise ConfigError(f"row {name!r}, seed {seed}: {origin[name][seed]} and {result['_folder']} "
                                      f"hold different runs of it (metrics {held['metrics']} against "
                                      f"{record['metrics']}): a merged table takes each run from one place; "
                                      "leave the row out of one folder's results.json (its `tc2ssl benchmark "
                                      "--plugins` without it) or out of the merge (--rows, --seeds)")
        for label, match in (result.get("equal_compute") or {}).items():
            match = ComputeMatch(row=names.get(label, label),
                                 **{**match, "comparator": names.get(match["comparator"], match["comparator"])})
            known = matches.setdefault(match.row, match)
            if (known.comparator, known.epochs) != (match.comparator, match.epochs):
                raise ConfigError(f"row {match.row!r} is matched to {match.comparator} at {match.epochs} epochs in "
                                  f"{result['_folder']} but to {known.comparator} at {known.epochs} in an earlier "
                                  "folder: equal-compute rows merge only from the same step timing (copy the first "
                                  "folder's equal_compute.json into a new folder before running its seeds)")

    wanted = list(merged_rows) if rows is None else list(dict.fromkeys(r.strip() for r in rows if r.strip()))
    unknown = [label for label in wanted if label not in merged_rows]
    if unknown:
        raise ConfigError(f"--rows: no row {unknown[0]!r} in these folders (rows: {', '.join(merged_rows)})")
    keep = set(wanted)
    for label in wanted:   # each kept row brings its base, and its equal-compute comparator where it has one
        keep.add(merged_rows[label].baseline)
        if label in matches:
            keep.add(matches[label].comparator)
    selected = [row for label, row in merged_rows.items() if label in keep]
    seed_list = (sorted({int(seed) for result in results for seed in result["seeds"]}) if seeds is None
                 else list(dict.fromkeys(seeds)))
    missing = [f"{row.label} seed {seed}" for row in selected for seed in seed_list
               if str(seed) not in runs.get(row.label, {})]
    if missing:
        raise ConfigError(f"no run for {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}: choose the "
                          "rows and seeds that every folder together covers (--rows, --seeds)")
    kept_runs = {row.label: {str(seed): runs[row.label][str(seed)] for seed in seed_list} for row in selected}
    kept_matches = [match for label, match in matches.items() if label in keep and match.comparator in keep]

    suite = SUITES.get(first["suite"])
    base = config_mod.from_dict({k: v for k, v in first["config"].items() if k != "out"})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    merged = summarize_runs(suite, get_preset(first["preset"]), base, selected, seed_list, first["options"],
                            kept_runs, kept_matches)
    merged["config"]["out"] = str(out)
    merged["merged_from"] = {row.label: {str(seed): origin[row.label][str(seed)] for seed in seed_list}
                             for row in selected}
    finish_results(suite, merged, base, out)
    print(f"merged results: {out / 'results.md'}", file=sys.stderr)
    return merged
