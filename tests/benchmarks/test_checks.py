"""The checks of docs/decisions.md (R1–R6) computed from benchmark results: thresholds at their boundaries, the
hard/soft verdicts, per-epoch diagnostics read from metrics.jsonl, protocol deviations named, and ``tc2ssl recheck``."""
import json
import math

import pytest

from tc2ssl.benchmarks.checks import (check_r1, check_r2, check_r3, check_r4, check_r5, check_r5b, check_r6, check_r7,
                                      check_r8,
                                      checks_markdown, read_run_diagnostics, run_checks)
from tc2ssl.cli import main


def result_of(suite: str, metrics: dict[str, dict[str, list[float]]], *, n_tasks: int = 4, batch: int = 256,
              rows: list[dict] | None = None, primary: str = "average", **record_extra) -> dict:
    """A results.json-shaped dict: ``metrics[row][metric]`` = per-seed values."""
    labels = list(metrics)
    seeds = list(range(len(next(iter(next(iter(metrics.values())).values())))))
    runs = {label: {str(seed): {"metrics": {m: values[seed] for m, values in by_metric.items()},
                                "run_dirs": [], "conflict": {}, "seconds": 1.0,
                                **record_extra.get(label, {}).get(seed, {})}
                    for seed in seeds} for label, by_metric in metrics.items()}
    return {"suite": suite, "seeds": seeds, "primary": primary, "metrics": list(next(iter(metrics.values()))),
            "rows": rows or [{"label": label, "plugin": label, "overrides": []} for label in labels],
            "config": {"plugin": {"n_tasks": n_tasks}, "train": {"batch_size": batch}}, "runs": runs}


def criterion(check, name_part: str):
    return next(c for c in check.criteria if name_part in c.name)


@pytest.mark.parametrize("tc2_average, passed", [(0.7451, True), (0.7449, False)])
def test_r4_average_non_inferiority_margin_is_half_a_point(tc2_average, passed):
    result = result_of("colored_mnist", {"none": {"average": [0.75] * 3, "worst_group": [0.10] * 3},
                                         "tc2": {"average": [tc2_average] * 3, "worst_group": [0.095] * 3}})
    check = check_r4(result)
    assert criterion(check, "average accuracy").passed is passed
    assert criterion(check, "worst-group").passed is True  # 0.5 pt below: inside its 1.0 pt margin
    assert check.verdict.startswith("PASS (hard)" if passed else "FAIL (hard)")
    assert criterion(check, "both means higher").passed is False


def test_r4_worst_group_gain_against_average_gain():
    result = result_of("colored_mnist", {"none": {"average": [0.70, 0.72, 0.74], "worst_group": [0.1, 0.1, 0.1]},
                                         "tc2": {"average": [0.71, 0.73, 0.75], "worst_group": [0.15, 0.1, 0.14]}})
    check = check_r4(result)
    assert criterion(check, "worst-group gain larger").passed is True  # +3.0 pt worst against +1.0 pt average
    assert check.verdict == "PASS (hard); soft 2/2 met" and check.deviations == []


def test_r5_art_gain_against_average_gain_and_missing_rows():
    metrics = {"art_painting": [0.30, 0.32, 0.34], "average": [0.50, 0.50, 0.50]}
    better = {"art_painting": [0.33, 0.35, 0.37], "average": [0.49, 0.50, 0.50]}
    check = check_r5(result_of("pacs", {"none": metrics, "tc2": better}))
    assert criterion(check, "4-domain average").passed is True  # −0.33 pt
    assert criterion(check, "unseen art").passed is True
    lonely = check_r5(result_of("pacs", {"none": metrics}))
    assert lonely.criteria == [] and "--plugins none,tc2" in lonely.deviations[0] and lonely.verdict == "not run"


def test_r5b_is_decided_per_target_and_against_plus_t():
    result = result_of("digits_transfer", {
        "none": {"usps": [0.90] * 3, "mnistm": [0.32] * 3, "average": [0.61] * 3},
        "tasks": {"usps": [0.91] * 3, "mnistm": [0.30] * 3, "average": [0.605] * 3},
        "tc2": {"usps": [0.905] * 3, "mnistm": [0.314] * 3, "average": [0.6095] * 3}})
    check = check_r5b(result)
    assert criterion(check, "usps linear").passed is True
    assert criterion(check, "mnistm linear").passed is False  # −0.6 pt: one target failing fails the check
    assert criterion(check, "usps: TC² ≥ +T").passed is False and criterion(check, "mnistm: TC² ≥ +T").passed
    assert check.verdict == "FAIL (hard); soft 2/4 met"


def test_r2_and_r3_on_known_values():
    # SimCLR 0.60 ± 0.01; +T per seed 0.58, 0.60, 0.63, 0.61, 0.64 -> Δ = −2, 0, +3, +1, +4 pt (spread 6 pt)
    none, tasks = [0.59, 0.60, 0.61, 0.60, 0.60], [0.58, 0.60, 0.63, 0.61, 0.64]
    cosines = {s: {"conflict": {"grey": [c, c, 0.0, 0.0]}} for s, c in enumerate([0.1, 0.3, 0.5, 0.4, 0.6])}
    result = result_of("digits_transfer", {"none": {"average": none}, "tasks": {"average": tasks}},
                       tasks=cosines)
    r2 = check_r2(result)
    assert r2.criteria[0].measured == "-2.00, +0.00, +3.00, +1.00, +4.00"
    assert r2.criteria[1].measured == "1 of 5"
    assert criterion(r2, "spread").passed is True and r2.deviations == []
    r3 = check_r3(result)
    # early cosine = mean of the first 2 epochs = 0.1, 0.3, 0.5, 0.4, 0.6: the same ranks as Δ -> ρ = 1
    assert "ρ = +1.000 over 5 runs" in r3.criteria[0].measured and r3.criteria[0].passed is True
    three = result_of("digits_transfer", {"none": {"average": none[:3]}, "tasks": {"average": tasks[:3]}})
    assert "3 seed(s), the spec asks for 5" in check_r2(three).deviations
    assert check_r3(three).criteria[0].passed is None  # no conflict series: undecided, not passed


def write_metrics(folder, epochs: list[dict]) -> None:
    folder.mkdir(parents=True)
    lines, step = [], 0
    for epoch, spec in enumerate(epochs):
        for _ in range(spec["iterations"]):
            lines.append({"kind": "step", "epoch": epoch, "step": step, "loss": spec.get("loss", 1.0)})
            step += 1
        lines.append({"kind": "epoch", "epoch": epoch, "step": step, "loss": spec.get("loss", 1.0),
                      "conflict/cos_mean": spec["mean"], "conflict/cos_min": spec["min"],
                      "conflict/steps": float(spec.get("measured", spec["iterations"])),
                      "tc2/health_warnings": float(spec.get("warnings", 0))})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_read_run_diagnostics_counts_iterations_per_epoch(tmp_path):
    write_metrics(tmp_path / "run", [{"iterations": 3, "mean": 0.2, "min": 0.1},
                                     {"iterations": 3, "mean": 0.5, "min": -0.1, "warnings": 2, "loss": math.nan}])
    d = read_run_diagnostics(tmp_path / "run")
    assert d["iterations"] == [3, 3] and d["conflict_steps"] == [3.0, 3.0]
    assert d["cos_mean"] == [0.2, 0.5] and d["cos_min"] == [0.1, -0.1]
    assert d["health_warnings"] == 2.0 and d["losses_finite"] is False
    assert read_run_diagnostics(tmp_path / "absent") is None


def test_r1_from_run_folders(tmp_path):
    dirs = {}
    for seed, (means, minimum, measured) in enumerate([([0.2, 0.5, 0.6], 0.05, 3), ([0.3, 0.6, 0.7], -0.2, 3),
                                                        ([0.4, 0.4, 0.4005], 0.1, 3)]):
        folder = tmp_path / f"tasks_seed{seed}"
        write_metrics(folder, [{"iterations": 3, "mean": m, "min": minimum, "measured": measured} for m in means])
        dirs[seed] = {"run_dirs": [str(folder)]}
    result = result_of("digits_transfer", {"none": {"average": [0.6] * 3}, "tasks": {"average": [0.6] * 3}},
                       n_tasks=2, tasks=dirs)
    check = check_r1(result)
    assert criterion(check, "one conflict row per iteration").passed is True
    assert criterion(check, "std across epochs").passed is False  # seed 2 is flat (std 0.0003)
    assert criterion(check, "minimum per-iteration cosine").passed is True  # seed 1 dips below 0
    assert check.deviations == [] and check.verdict == "FAIL (hard); soft 1/1 met"
    (tmp_path / "tasks_seed2" / "metrics.jsonl").unlink()
    write_metrics(tmp_path / "tasks_seed2_", [{"iterations": 3, "mean": 0.1, "min": 0.0, "measured": 2},
                                              {"iterations": 3, "mean": 0.9, "min": 0.0}])
    dirs[2]["run_dirs"] = [str(tmp_path / "tasks_seed2_")]
    result = result_of("digits_transfer", {"none": {"average": [0.6] * 3}, "tasks": {"average": [0.6] * 3}},
                       n_tasks=4, tasks=dirs)
    check = check_r1(result)
    assert criterion(check, "one conflict row per iteration").passed is False  # an unmeasured iteration
    assert "+T ran with K = 4; the spec's protocol uses K = 2" in check.deviations


def k_result(means: dict[int, float], record_extra=None) -> dict:
    rows = [{"label": "none", "plugin": "none", "overrides": []}, {"label": "tc2", "plugin": "tc2", "overrides": []}]
    rows += [{"label": f"tc2 K={k}", "plugin": "tc2", "overrides": [f"plugin.n_tasks={k}"]} for k in means if k != 4]
    metrics = {"none": {"linear_probe": [0.5] * 3, "knn": [0.4] * 3}}
    for k, m in means.items():
        metrics["tc2" if k == 4 else f"tc2 K={k}"] = {"linear_probe": [m] * 3, "knn": [m] * 3}
    result = result_of("cifar10_subset", metrics, rows=rows, primary="linear_probe", **(record_extra or {}))
    result["k_ablation"] = {str(k): {"mean": m} for k, m in sorted(means.items())}
    return result


def test_r6_shape_and_guards(tmp_path):
    check = check_r6(k_result({2: 0.554, 4: 0.55, 8: 0.54, 16: 0.50}))
    assert criterion(check, "K = 4 best or tied").passed is True  # 0.4 pt below K = 2: tied
    assert criterion(check, "K = 16 below K = 4").passed is True
    assert criterion(check, "guards").passed is None  # no run folders: undecided
    assert check.verdict == "n/a (hard); soft 2/2 met"
    check = check_r6(k_result({2: 0.57, 4: 0.55, 8: 0.54, 16: 0.56}))
    assert criterion(check, "K = 4 best or tied").passed is False and criterion(check, "K = 16 below").passed is False
    folder = tmp_path / "k16"
    write_metrics(folder, [{"iterations": 2, "mean": 0.5, "min": 0.1, "warnings": 1}])
    quiet = tmp_path / "quiet"
    write_metrics(quiet, [{"iterations": 2, "mean": 0.5, "min": 0.1}])
    extra = {label: {s: {"run_dirs": [str(folder if label == "tc2 K=16" else quiet)]} for s in range(3)}
             for label in ("none", "tc2", "tc2 K=2", "tc2 K=8", "tc2 K=16")}
    check = check_r6(k_result({2: 0.5, 4: 0.55, 8: 0.54, 16: 0.50}, extra))
    assert criterion(check, "without NaN").passed is True
    guards = criterion(check, "guards")
    assert guards.passed is False and "3 warning(s) over 12 runs" in guards.measured
    assert check.verdict.startswith("FAIL (hard)")
    partial = k_result({2: 0.5, 4: 0.55})
    partial["config"]["train"]["batch_size"] = 128
    assert check_r6(partial).deviations == ["K = 8, 16 not run (the spec's K: 2, 4, 8, 16)",
                                            "batch 128, the spec's protocol uses N = 256"]


def test_markdown_lists_every_criterion_and_verdict():
    result = result_of("colored_mnist", {"none": {"average": [0.75] * 2, "worst_group": [0.1] * 2},
                                         "tc2": {"average": [0.76] * 2, "worst_group": [0.12] * 2}})
    checks = run_checks(result)
    assert [c["id"] for c in checks] == ["R4", "R7", "R8"]  # R7, R8: every suite with TC² rows
    text = "\n".join(checks_markdown(checks))
    assert text.count("| R4 |") == 4
    assert "- **R4** OOD non-inferiority of TC² (coloured MNIST): **PASS (hard); soft 2/2 met** (protocol differs: " \
           "2 seed(s), the spec asks for 3)" in text


def test_recheck_rewrites_results_and_fails_clearly(tmp_path, capsys):
    result = result_of("colored_mnist", {"none": {"average": [0.75] * 3, "worst_group": [0.1] * 3},
                                         "tc2": {"average": [0.70] * 3, "worst_group": [0.1] * 3}})
    result.update(title="t", protocol="p", preset="cpu", baseline="none", options={}, plots=[],
                  summary={}, paired={}, conflict_vs_primary={"spearman": None, "n": 0})
    result["config"].update(method={"name": "simclr"}, model={"backbone": "small_cnn_tiny"},
                            data={"max_train": 0}, eval={"max_train": 0})
    result["config"]["train"]["epochs"] = 1
    (tmp_path / "results.json").write_text(json.dumps(result))
    assert main(["recheck", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out) == {"R4": "FAIL (hard); soft 1/2 met", "R7": "n/a (hard)",
                                                   "R8": "n/a (hard)"}  # no run folders for R7, R8
    assert json.loads((tmp_path / "results.json").read_text())["checks"][0]["verdict"].startswith("FAIL")
    assert "- **R4** " in (tmp_path / "results.md").read_text()
    assert main(["recheck", str(tmp_path / "nowhere")]) == 2
    assert "no benchmark results at" in capsys.readouterr().err
    (tmp_path / "results.json").write_text("{not json")
    assert main(["recheck", str(tmp_path)]) == 2
    assert "is not a tc2ssl benchmark results file" in capsys.readouterr().err


def write_tc2_metrics(folder, epochs: list[dict]) -> None:
    """metrics.jsonl of a TC² run: one step per epoch, the epoch record carrying the tc2/* health metrics."""
    folder.mkdir(parents=True)
    lines = []
    for epoch, health in enumerate(epochs):
        lines.append({"kind": "step", "epoch": epoch, "step": epoch, "loss": 1.0})
        lines.append({"kind": "epoch", "epoch": epoch, "step": epoch + 1, "loss": 1.0,
                      **{f"tc2/{k}": v for k, v in health.items()}})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


HEALTHY = {"lv_ratio": 1.1, "orth_error": 0.05, "gate_sparsity": 0.3, "cal_norm_ratio": 0.9, "inner_gain_rate": 0.9,
           "energy_share": 0.97, "pooled_share": 0.95, "top_share": 0.98, "subspace_cos2": 0.95, "gate_std": 0.2,
           "gate_selectivity": 1.2}


@pytest.mark.parametrize("change, failing", [
    ({}, None),
    ({"lv_ratio": 30.0}, None),                      # L_v / L_v^PCA is reported, no longer judged
    ({"energy_share": 0.90}, "pooled subspace"),     # 0.90 < 0.95 × 0.95
    ({"orth_error": 0.11}, "‖VᵀV − I‖_F"),
    ({"gate_sparsity": 0.0}, "gate sparsity"),       # the ℓ1 term selects no factor
    ({"gate_std": 0.001}, "not a constant"),         # the gates are stuck at one value
    ({"cal_norm_ratio": 0.2}, "calibrated-norm"),
])
def test_r7_thresholds(tmp_path, change, failing):
    folder = tmp_path / "tc2_seed0"
    # epoch 0 is not judged for the energy share (f_v starts anywhere)
    write_tc2_metrics(folder, [{**HEALTHY, "energy_share": 0.5}, {**HEALTHY, "energy_share": 0.93},
                               {**HEALTHY, **change}])
    result = result_of("colored_mnist", {"none": {"average": [0.7], "worst_group": [0.1]},
                                         "tc2": {"average": [0.7], "worst_group": [0.1]}},
                       tc2={0: {"run_dirs": [str(folder)]}})
    check = check_r7(result)
    failed = [c.name for c in check.criteria if c.passed is False]
    assert failed == ([] if failing is None else [next(c.name for c in check.criteria if failing in c.name)])
    worst = min(0.93, change.get("energy_share", 0.97)) / 0.95
    assert criterion(check, "pooled subspace").measured == f"min share / pooled share {worst:.3g}"
    equal = result_of("colored_mnist", {"none": {"average": [0.7], "worst_group": [0.1]},
                                        "tc2": {"average": [0.7], "worst_group": [0.1]}})
    assert check_r7(equal).verdict == "n/a (hard)"


def test_r8_gain_rate_is_averaged_over_training(tmp_path):
    folder = tmp_path / "run"
    write_tc2_metrics(folder, [{**HEALTHY, "inner_gain_rate": 0.7}, {**HEALTHY, "inner_gain_rate": 0.95}])
    result = result_of("pacs", {"none": {"average": [0.5], "art_painting": [0.3]},
                                "tc2": {"average": [0.5], "art_painting": [0.3]}}, tc2={0: {"run_dirs": [str(folder)]}})
    check = check_r8(result)
    assert check.criteria[0].passed is True and "min 0.825 over 1 runs" in check.criteria[0].measured
    assert [c["id"] for c in run_checks(result)] == ["R5", "R7", "R8"]
