"""The measurable reproduction checks (R1–R8, listed in docs/decisions.md), computed from a finished benchmark.

Why one file of ~470 lines: it is a register, one function per check over the same ``results.json`` helpers, so
that every check's criteria and tolerances can be read (and audited) side by side.

Each suite answers some of the checks: ``digits_transfer`` R1 (gradient conflict exists and fluctuates), R2
(instability of +T), R3 (conflict correlates with transfer) and R5b (transfer to a new dataset); ``colored_mnist``
R4 (out-of-distribution non-inferiority); ``pacs`` R5 (unseen-domain transfer); ``cifar10_subset`` R6 (shape of the
K ablation); and every suite with TC² rows R7 (TC²'s internal mechanics) and R8 (the inner step adapts). A check
is a list of criteria, each *hard* (the spec's PASS condition), *soft* (a paper-direction
expectation: recorded, and a miss is reported, not hidden) or *report* (a number the check asks for, no
threshold). A check whose protocol was run differently from the spec (fewer seeds, another K) says so in its
``deviations``, so that a verdict is never read as more than it is.

Inputs are the content of ``results.json`` (:func:`tc2ssl.benchmarks.suites.run_benchmark`): per-seed metrics, and
per run the per-epoch diagnostics of each pretraining (``diagnostics``, read from its ``metrics.jsonl`` by
:func:`read_run_diagnostics`; for results written before that field existed, the run folders are read again when
they are still on disk, else the criteria that need them are "n/a").

``tc2ssl recheck DIR`` recomputes the checks of ``DIR/results.json`` and rewrites ``results.json`` and
``results.md``.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from tc2ssl.benchmarks.stats import spearman

BASELINE, TASKS, TC2 = "none", "tasks", "tc2"
HARD, SOFT, REPORT = "hard", "soft", "report"
#: the checks' tolerances, in accuracy units (results hold accuracies in [0, 1]).
R4_AVERAGE_MARGIN, R4_WORST_MARGIN = 0.005, 0.010
R5_MARGIN = R5B_MARGIN = R6_MARGIN = 0.005
R1_MIN_EPOCH_STD = 0.01
R2_SEEDS, R1_SEEDS, SPEC_SEEDS = 5, 3, 3
R6_K_VALUES = (2, 4, 8, 16)
R7_MAX_ORTH_ERROR = 0.1
R7_SPARSITY, R7_NORM_RATIO = (0.05, 0.95), (0.3, 1.05)
R8_MIN_GAIN_RATE = 0.8
#: TC²'s per-epoch health metrics (``tc2/<name>`` in metrics.jsonl) kept by :func:`read_run_diagnostics`.
HEALTH_KEYS = ("lv_ratio", "orth_error", "gate_sparsity", "cal_norm_ratio", "inner_gain_rate", "energy_share",
               "pooled_share", "top_share", "subspace_cos2", "gate_std", "gate_selectivity")
#: R7 restated: span(V)'s energy share >= this × the pooled subspace's, after the first epoch
R7_ENERGY_VS_POOLED = 0.95


@dataclass(frozen=True)
class Criterion:
    """One condition of a check: what was measured against what the spec requires; ``passed`` is None when the
    data to decide it is missing (or for a ``report`` criterion, which has no threshold)."""

    name: str
    kind: str
    measured: str
    required: str
    passed: bool | None


@dataclass
class Check:
    id: str
    title: str
    criteria: list[Criterion] = field(default_factory=list)
    deviations: list[str] = field(default_factory=list)
    not_run: bool = False          # the benchmark lacks the rows this check compares

    @property
    def verdict(self) -> str:
        """``PASS`` / ``FAIL`` over the hard criteria (``n/a`` if one could not be decided), then how many soft
        criteria were met, e.g. ``PASS (hard); soft 1/2 met``."""
        if self.not_run:
            return "not run"
        parts = []
        hard = [c.passed for c in self.criteria if c.kind == HARD]
        if hard:
            parts.append("FAIL (hard)" if False in hard else "n/a (hard)" if None in hard else "PASS (hard)")
        soft = [c.passed for c in self.criteria if c.kind == SOFT]
        if soft:
            decided = [s for s in soft if s is not None]
            parts.append(f"soft {sum(decided)}/{len(soft)} met" + (f" ({len(soft) - len(decided)} n/a)"
                                                                  if len(decided) < len(soft) else ""))
        return "; ".join(parts) if parts else "reported"

    def as_dict(self) -> dict:
        return {"id": self.id, "title": self.title, "verdict": self.verdict, "deviations": list(self.deviations),
                "criteria": [asdict(c) for c in self.criteria]}


# ---------------------------------------------------------------------------------------------------- run data
def read_run_diagnostics(run_dir: str | Path) -> dict | None:
    """Per-epoch diagnostics of one pretraining from its ``metrics.jsonl`` (the last record of each epoch wins, so
    a resumed run counts once): the epoch's iterations, the mean and minimum inter-task gradient cosine and the
    number of measured steps (absent without conflict logging), TC²'s health-warning count and whether every
    logged loss was finite. None when the folder has no metrics file."""
    from tc2ssl.report import read_metrics

    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return None
    records = read_metrics(path)
    epochs = {}
    for record in records:
        if record.get("kind") == "epoch":
            epochs[int(record["epoch"])] = record
    previous_step, out = 0, {"iterations": [], "cos_mean": [], "cos_min": [], "conflict_steps": [],
                             "health_warnings": 0.0, "losses_finite": True, **{name: [] for name in HEALTH_KEYS}}
    for epoch in sorted(epochs):
        record = epochs[epoch]
        out["iterations"].append(int(record["step"]) - previous_step)
        previous_step = int(record["step"])
        for key, name in (("cos_mean", "conflict/cos_mean"), ("cos_min", "conflict/cos_min"),
                          ("conflict_steps", "conflict/steps")):
            out[key].append(record.get(name))
        for name in HEALTH_KEYS:
            out[name].append(record.get(f"tc2/{name}"))
        out["health_warnings"] += float(record.get("tc2/health_warnings") or 0.0)
    out["losses_finite"] = all(math.isfinite(float(r["loss"])) for r in records
                               if isinstance(r.get("loss"), (int, float)))
    return out


def run_diagnostics(record: dict) -> list[dict] | None:
    """The diagnostics of every pretraining of one (row, seed) record; None if any is unavailable."""
    found = record.get("diagnostics")
    if found:
        series = list(found.values())
    else:
        series = [read_run_diagnostics(p) for p in record.get("run_dirs", [])]
    if not series or any(s is None for s in series):
        return None
    return series


# ---------------------------------------------------------------------------------------------------- helpers
def _pct(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100.0 * value:.2f}"


def _pts(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100.0 * value:+.2f}"


def _values(result: dict, row: str, metric: str) -> list[float]:
    return [result["runs"][row][str(seed)]["metrics"][metric] for seed in result["seeds"]]


def _mean(result: dict, row: str, metric: str) -> float:
    return statistics.fmean(_values(result, row, metric))


def _has_rows(result: dict, *rows: str) -> bool:
    return all(row in result["runs"] for row in rows)


def _row_n_tasks(result: dict, row: str) -> int:
    """plugin.n_tasks of a row: its own override (K-ablation rows) or the base config's."""
    for spec in result.get("rows", []):
        if spec["label"] == row:
            for item in spec.get("overrides", []):
                key, _, value = item.partition("=")
                if key == "plugin.n_tasks":
                    return int(value)
    return int(result["config"]["plugin"]["n_tasks"])


def _seed_deviation(result: dict, wanted: int) -> list[str]:
    n = len(result["seeds"])
    return [f"{n} seed(s), the spec asks for {wanted}"] if n < wanted else []


def _missing(check: Check, *rows: str) -> Check:
    check.not_run = True
    check.deviations.append(f"needs the rows {', '.join(rows)}; run the suite with --plugins {','.join(rows)}")
    return check


def _non_inferiority(name: str, result: dict, metric: str, margin: float) -> Criterion:
    treated, base = _mean(result, TC2, metric), _mean(result, BASELINE, metric)
    return Criterion(name, HARD, f"TC² {_pct(treated)}, SimCLR {_pct(base)} (Δ {_pts(treated - base)})",
                     f"TC² ≥ SimCLR − {100 * margin:.1f} pt", treated >= base - margin)


# ---------------------------------------------------------------------------------------------------- R1–R3
def check_r1(result: dict) -> Check:
    """R1: gradient conflict exists and fluctuates (TC² Fig. 1(b)(c)), on the +T rows."""
    check = Check("R1", "Gradient conflict exists and fluctuates (+T)")
    if not _has_rows(result, TASKS):
        return _missing(check, TASKS)
    check.deviations += _seed_deviation(result, R1_SEEDS)
    k = _row_n_tasks(result, TASKS)
    if k != 2:
        check.deviations.append(f"+T ran with K = {k}; the spec's protocol uses K = 2")
    series = {seed: run_diagnostics(result["runs"][TASKS][str(seed)]) for seed in result["seeds"]}
    if any(s is None for s in series.values()):
        check.criteria += [Criterion(n, kind, "run folders not available", req, None) for n, kind, req in (
            ("one conflict row per iteration", HARD, "every epoch"), ("per-epoch mean fluctuates", HARD, "> 0.01"),
            ("conflict occurs", SOFT, "< 0 for ≥ 1 seed"))]
        return check
    runs = [run for by_seed in series.values() for run in by_seed]
    complete = all(run["cos_mean"] and None not in run["cos_mean"] and run["conflict_steps"] == run["iterations"]
                   for run in runs)
    total_steps = sum(sum(run["iterations"]) for run in runs)
    check.criteria.append(Criterion(
        "one conflict row per iteration, a per-epoch mean for every epoch", HARD,
        f"{len(runs)} pretraining(s), {total_steps} iterations, "
        f"{'all measured' if complete else 'some epochs or iterations missing'}", "every iteration", complete))
    stds = [statistics.stdev(run["cos_mean"]) if len(run["cos_mean"]) > 1 else math.nan for run in runs]
    check.criteria.append(Criterion(
        "std across epochs of the per-epoch mean cosine, every seed", HARD,
        "min " + (f"{min(stds):.3f}" if all(math.isfinite(s) for s in stds) else "n/a (one epoch)"),
        f"> {R1_MIN_EPOCH_STD}", all(math.isfinite(s) and s > R1_MIN_EPOCH_STD for s in stds)))
    minima = {seed: min(min(run["cos_min"]) for run in by_seed) for seed, by_seed in series.items()}
    negative = [seed for seed, value in minima.items() if value < 0]
    check.criteria.append(Criterion(
        "minimum per-iteration cosine < 0 (conflict) for at least one seed", SOFT,
        ", ".join(f"seed {s}: {v:+.3f}" for s, v in minima.items()), "< 0 for ≥ 1 seed", bool(negative)))
    return check


def _tasks_deltas(result: dict) -> list[float]:
    """Δ_i = acc(+T, seed i) − mean over seeds of acc(SimCLR), on the suite's primary metric (R2, R3)."""
    primary = result["primary"]
    base = _mean(result, BASELINE, primary)
    return [value - base for value in _values(result, TASKS, primary)]


def check_r2(result: dict) -> Check:
    """R2: instability of +T (Fig. 1(a)): the spread of +T's per-seed gain over the SimCLR mean."""
    check = Check("R2", "Instability of +T")
    if not _has_rows(result, BASELINE, TASKS):
        return _missing(check, BASELINE, TASKS)
    check.deviations += _seed_deviation(result, R2_SEEDS)
    deltas = _tasks_deltas(result)
    base_values = _values(result, BASELINE, result["primary"])
    spread = max(deltas) - min(deltas)
    base_std = statistics.stdev(base_values) if len(base_values) > 1 else math.nan
    check.criteria.append(Criterion(f"Δ_i = +T − mean SimCLR ({result['primary']})", REPORT,
                                    ", ".join(_pts(d) for d in deltas), "paper: spread ≈ 3 pt, some < 0", None))
    check.criteria.append(Criterion("negative Δ_i", REPORT, f"{sum(d < 0 for d in deltas)} of {len(deltas)}", "—",
                                    None))
    check.criteria.append(Criterion("spread max Δ − min Δ exceeds the SimCLR seeds' std", SOFT,
                                    f"spread {100 * spread:.2f} pt, SimCLR std {_pct(base_std)} pt",
                                    "spread > std", spread > base_std if math.isfinite(base_std) else None))
    return check


def check_r3(result: dict) -> Check:
    """R3: the +T runs' early conflict (mean per-epoch cosine over the first half of training, averaged over the
    run's pretrainings) against their gain Δ_i."""
    check = Check("R3", "Conflict correlates with transfer (+T runs)")
    if not _has_rows(result, BASELINE, TASKS):
        return _missing(check, BASELINE, TASKS)
    check.deviations += _seed_deviation(result, R2_SEEDS)
    early = []
    for seed in result["seeds"]:
        record = result["runs"][TASKS][str(seed)]
        series = [s for s in record.get("conflict", {}).values() if s]
        early.append(statistics.fmean(statistics.fmean(s[:math.ceil(len(s) / 2)]) for s in series)
                     if series else math.nan)
    deltas = _tasks_deltas(result)
    if not all(math.isfinite(e) for e in early):
        check.criteria.append(Criterion("Spearman ρ(early cosine, Δ_i)", SOFT, "no conflict series", "> 0", None))
        return check
    rho = spearman(early, deltas)
    check.criteria.append(Criterion(
        "Spearman ρ(mean early cosine, Δ_i)", SOFT,
        f"ρ = {rho:+.3f} over {len(deltas)} runs (cosines {', '.join(f'{e:.3f}' for e in early)})"
        if math.isfinite(rho) else "undefined (< 3 runs or constant)", "ρ > 0",
        rho > 0 if math.isfinite(rho) else None))
    return check


# ---------------------------------------------------------------------------------------------------- R4, R5, R5b
def check_r4(result: dict) -> Check:
    """R4: TC² is not worse than SimCLR out of distribution (Table 4 analogue, coloured MNIST)."""
    check = Check("R4", "OOD non-inferiority of TC² (coloured MNIST)")
    if not _has_rows(result, BASELINE, TC2):
        return _missing(check, BASELINE, TC2)
    check.deviations += _seed_deviation(result, SPEC_SEEDS)
    check.criteria.append(_non_inferiority("average accuracy", result, "average", R4_AVERAGE_MARGIN))
    check.criteria.append(_non_inferiority("worst-group accuracy", result, "worst_group", R4_WORST_MARGIN))
    gains = {m: _mean(result, TC2, m) - _mean(result, BASELINE, m) for m in ("average", "worst_group")}
    check.criteria.append(Criterion("both means higher for TC²", SOFT,
                                    f"Δ average {_pts(gains['average'])}, Δ worst {_pts(gains['worst_group'])}",
                                    "both > 0", all(g > 0 for g in gains.values())))
    check.criteria.append(Criterion("worst-group gain larger than the average gain (paper)", SOFT,
                                    f"{_pts(gains['worst_group'])} against {_pts(gains['average'])}",
                                    "Δ worst > Δ average", gains["worst_group"] > gains["average"]))
    return check


def check_r5(result: dict) -> Check:
    """R5: unseen-domain transfer (Table 3 analogue, PACS with art painting unseen)."""
    check = Check("R5", "Unseen-domain transfer of TC² (PACS)")
    if not _has_rows(result, BASELINE, TC2):
        return _missing(check, BASELINE, TC2)
    check.deviations += _seed_deviation(result, SPEC_SEEDS)
    check.criteria.append(_non_inferiority("4-domain average", result, "average", R5_MARGIN))
    art = _mean(result, TC2, "art_painting") - _mean(result, BASELINE, "art_painting")
    average = _mean(result, TC2, "average") - _mean(result, BASELINE, "average")
    check.criteria.append(Criterion("gain on the unseen art domain ≥ the average gain", SOFT,
                                    f"art {_pts(art)}, average {_pts(average)}", "Δ art ≥ Δ average",
                                    art >= average))
    return check


def check_r5b(result: dict) -> Check:
    """R5b: transfer to a new dataset (MNIST -> USPS and MNIST -> MNIST-M)."""
    check = Check("R5b", "Transfer of TC² to a new dataset (USPS, MNIST-M)")
    if not _has_rows(result, BASELINE, TC2):
        return _missing(check, BASELINE, TC2)
    check.deviations += _seed_deviation(result, SPEC_SEEDS)
    targets = [m for m in ("usps", "mnistm") if m in result["metrics"]]
    for target in targets:
        check.criteria.append(_non_inferiority(f"{target} linear probe", result, target, R5B_MARGIN))
    for target in targets:
        treated, base = _mean(result, TC2, target), _mean(result, BASELINE, target)
        check.criteria.append(Criterion(f"{target}: TC² above SimCLR", SOFT, f"Δ {_pts(treated - base)}", "Δ > 0",
                                        treated > base))
        if _has_rows(result, TASKS):
            plain = _mean(result, TASKS, target)
            check.criteria.append(Criterion(f"{target}: TC² ≥ +T", SOFT, f"TC² − +T {_pts(treated - plain)}",
                                            "≥ 0", treated >= plain))
    return check


# ---------------------------------------------------------------------------------------------------- R6
def _tc2_runs(result: dict) -> tuple[list[str], list[list[dict] | None]]:
    """The labels of every TC² row and, per (row, seed), its pretrainings' diagnostics (None if unavailable)."""
    labels = [spec["label"] for spec in result.get("rows", []) if spec["plugin"] == TC2]
    return labels, [run_diagnostics(result["runs"][label][str(seed)]) for label in labels for seed in result["seeds"]]


def check_r6(result: dict) -> Check:
    """R6: shape of the K ablation (Table 13 analogue, CIFAR-10 subset): K = 4 best or tied, K = 16 below K = 4;
    hard: every K trains with finite losses and TC²'s health guards stay quiet."""
    check = Check("R6", "Shape of the K ablation (CIFAR-10 subset)")
    curve = {int(k): v for k, v in (result.get("k_ablation") or {}).items()}
    if not curve:
        return _missing(check, TC2)
    check.deviations += _seed_deviation(result, SPEC_SEEDS)
    missing_k = [k for k in R6_K_VALUES if k not in curve]
    if missing_k:
        check.deviations.append(f"K = {', '.join(map(str, missing_k))} not run (the spec's K: 2, 4, 8, 16)")
    batch = int(result["config"]["train"]["batch_size"])
    if batch != 256:
        check.deviations.append(f"batch {batch}, the spec's protocol uses N = 256")
    means = {k: v["mean"] for k, v in sorted(curve.items())}
    check.criteria.append(Criterion("linear probe by K", REPORT, ", ".join(f"K={k}: {_pct(m)}" for k, m in
                                                                         means.items()), "—", None))
    if 4 in means:
        best = max(means.values())
        check.criteria.append(Criterion("K = 4 best or tied", SOFT, f"K=4 {_pct(means[4])}, best {_pct(best)}",
                                        f"≥ best − {100 * R6_MARGIN:.1f} pt", means[4] >= best - R6_MARGIN))
        if 16 in means:
            check.criteria.append(Criterion("K = 16 below K = 4", SOFT, f"{_pct(means[16])} against "
                                            f"{_pct(means[4])}", "acc(16) < acc(4)", means[16] < means[4]))
    labels, diagnostics = _tc2_runs(result)
    finite = all(math.isfinite(v) for label in labels for record in result["runs"][label].values()
                 for v in record["metrics"].values())
    if any(d is None for d in diagnostics):
        check.criteria.append(Criterion("every K trains without NaN", HARD,
                                        "metrics finite" if finite else "non-finite metrics", "finite",
                                        False if not finite else None))
        check.criteria.append(Criterion("TC² health guards (D-TC-33) quiet", HARD, "run folders not available",
                                        "0 warnings", None))
        return check
    runs = [run for d in diagnostics for run in d]
    finite = finite and all(run["losses_finite"] for run in runs)
    warnings = sum(run["health_warnings"] for run in runs)
    check.criteria.append(Criterion("every K trains without NaN", HARD,
                                    f"{len(runs)} runs, {'all' if finite else 'not all'} losses finite", "finite",
                                    finite))
    check.criteria.append(Criterion("TC² health guards (D-TC-33) quiet", HARD,
                                    f"{warnings:.0f} warning(s) over {len(runs)} runs", "0 warnings", warnings == 0))
    return check


# ---------------------------------------------------------------------------------------------------- R7, R8
def _range(values: list[float]) -> str:
    return f"{min(values):.3g}–{max(values):.3g}" if values else "n/a"


def check_r7(result: dict) -> Check:
    """R7: TC²'s internal mechanics (docs/decisions.md), over every TC² pretraining of the benchmark.

    Restated: no batch-independent basis can reach L_v ≤ 1.5 × each batch's optimum, so V is judged by the share of
    the batch's energy its span keeps against the best batch-independent basis (the pooled subspace), and its
    principal angles to the batch's top subspace (reported); f_w by gates that are not a constant and a sparsity in
    range; L_v / L_v^PCA is reported. Orthogonality, the calibrated norm and finite losses as before."""
    check = Check("R7", "TC² internal mechanics (every TC² run)")
    labels, diagnostics = _tc2_runs(result)
    if not labels:
        return _missing(check, TC2)
    names = (f"energy share of span(V) ≥ {R7_ENERGY_VS_POOLED} × the pooled subspace's, from epoch 1 on",
             "mean cos² of the principal angles to the batch's top subspace, at the end",
             "L_v / L_v^PCA at the end", "‖VᵀV − I‖_F ≤ 0.1 throughout",
             "gate sparsity in [0.05, 0.95] at the end", "gates not a constant (std ≥ 0.01) at the end",
             "gate selectivity over tasks (1 = task-blind), at the end",
             "calibrated-norm ratio in [0.3, 1.05] at the end", "every loss finite")
    runs = [run for d in diagnostics if d is not None for run in d]
    if any(d is None for d in diagnostics) or not all(run.get("energy_share") and None not in run["energy_share"]
                                                      for run in runs):
        check.criteria += [Criterion(name, HARD, "run folders or health metrics (energy_share) not available", "",
                                     None) for name in names]
        return check
    shares = [(v, pooled) for run in runs for v, pooled in zip(run["energy_share"][1:], run["pooled_share"][1:])]
    last = {name: [run[name][-1] for run in runs if run.get(name) and run[name][-1] is not None]
            for name in HEALTH_KEYS}
    orth = [v for run in runs for v in run["orth_error"] if v is not None]
    low, high = R7_SPARSITY
    norm_low, norm_high = R7_NORM_RATIO
    worst = min((v / pooled for v, pooled in shares), default=None)
    check.criteria += [
        Criterion(names[0], HARD, f"min share / pooled share {worst:.3g}" if worst is not None else "one epoch only",
                  f"≥ {R7_ENERGY_VS_POOLED}", worst >= R7_ENERGY_VS_POOLED if worst is not None else None),
        Criterion(names[1], REPORT, _range(last["subspace_cos2"]), "", None),
        Criterion(names[2], REPORT, _range(last["lv_ratio"]), "", None),
        Criterion(names[3], HARD, _range(orth), f"≤ {R7_MAX_ORTH_ERROR}", max(orth) <= R7_MAX_ORTH_ERROR),
        Criterion(names[4], HARD, _range(last["gate_sparsity"]), f"[{low}, {high}]",
                  all(low <= v <= high for v in last["gate_sparsity"])),
        Criterion(names[5], HARD, _range(last["gate_std"]), "≥ 0.01",
                  all(v >= 0.01 for v in last["gate_std"]) if last["gate_std"] else None),
        Criterion(names[6], REPORT, _range(last["gate_selectivity"]), "", None),
        Criterion(names[7], HARD, _range(last["cal_norm_ratio"]), f"[{norm_low}, {norm_high}]",
                  all(norm_low <= v <= norm_high for v in last["cal_norm_ratio"])),
        Criterion(names[8], HARD, f"{len(runs)} runs", "finite", all(run["losses_finite"] for run in runs)),
    ]
    return check


def check_r8(result: dict) -> Check:
    """R8: the inner step adapts (Eq. 6): L_ssl^s(θ^k) < L_ssl^s(θ) on the same support views for ≥ 80% of
    (batch, task) pairs, averaged over training, for every TC² pretraining."""
    check = Check("R8", "The inner step adapts (Eq. 6)")
    labels, diagnostics = _tc2_runs(result)
    if not labels:
        return _missing(check, TC2)
    runs = [run for d in diagnostics if d is not None for run in d]
    rates = [statistics.fmean(run["inner_gain_rate"]) for run in runs
             if run["inner_gain_rate"] and None not in run["inner_gain_rate"]]
    if any(d is None for d in diagnostics) or len(rates) < len(runs):
        check.criteria.append(Criterion("inner-step gain rate, every run", HARD, "not available",
                                        f"≥ {R8_MIN_GAIN_RATE}", None))
        return check
    check.criteria.append(Criterion("inner-step gain rate averaged over training, every run", HARD,
                                    f"min {min(rates):.3f} over {len(rates)} runs", f"≥ {R8_MIN_GAIN_RATE}",
                                    min(rates) >= R8_MIN_GAIN_RATE))
    return check


SUITE_CHECKS: dict[str, tuple[Callable[[dict], Check], ...]] = {
    "digits_transfer": (check_r1, check_r2, check_r3, check_r5b, check_r7, check_r8),
    "colored_mnist": (check_r4, check_r7, check_r8),
    "pacs": (check_r5, check_r7, check_r8),
    "cifar10_subset": (check_r6, check_r7, check_r8),
}


def run_checks(result: dict) -> list[dict]:
    """Every check (docs/decisions.md) that ``result``'s suite answers, as dicts (see :class:`Check`)."""
    return [check(result).as_dict() for check in SUITE_CHECKS.get(result["suite"], ())]


def checks_markdown(checks: list[dict]) -> list[str]:
    """The checks as a markdown section (lines)."""
    if not checks:
        return []
    lines = ["## Checks (docs/decisions.md)", "", "| check | criterion | kind | measured | required | result |",
             "|---|---|---|---|---|---|"]
    for check in checks:
        for c in check["criteria"]:
            outcome = {True: "pass" if c["kind"] == HARD else "met", False: "FAIL" if c["kind"] == HARD else "missed",
                       None: "—" if c["kind"] == REPORT else "n/a"}[c["passed"]]
            lines.append(f"| {check['id']} | {c['name']} | {c['kind']} | {c['measured']} | {c['required']} | "
                         f"{outcome} |")
    lines.append("")
    for check in checks:
        note = f" (protocol differs: {'; '.join(check['deviations'])})" if check["deviations"] else ""
        lines.append(f"- **{check['id']}** {check['title']}: **{check['verdict']}**{note}")
    return lines + [""]
