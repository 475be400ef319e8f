"""``tc2ssl benchmark SUITE``: clear errors before any work, paired statistics over seeds, and each suite's smoke
preset end to end on the real data (skipped without ../shared/data)."""
import dataclasses
import json
import statistics
import math

import pytest
import torch
import yaml

from tc2ssl import config as config_mod
from tc2ssl.errors import ConfigError
from tc2ssl.benchmarks import SUITES, get_preset
from tc2ssl.benchmarks.suites import (Row, colored_training_data, k_ablation_rows, results_markdown, suite_options,
                                      summarize_runs)
from tc2ssl.cli import main
from tc2ssl.config import DataConfig
from tc2ssl.data import load_data


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("tc2ssl: error: ") and "Traceback" not in err, err
    return err


def test_unknown_suite_is_a_clear_error_listing_the_suites(capsys):
    assert main(["benchmark", "imagenet"]) == 2
    err = one_line_error(capsys)
    assert "unknown benchmark suite 'imagenet'" in err
    assert "valid names: cifar10_subset, colored_mnist, digits_transfer, pacs" in err


@pytest.mark.parametrize("argv, fragment", [
    (["benchmark", "--preset", "huge", "pacs"], "valid presets: smoke, cpu, standard, paper"),
    (["benchmark", "--seeds", "a", "pacs"], "--seeds must be comma-separated integers"),
    (["benchmark", "pacs", "suite.rho=0.5"], "suite 'pacs' takes suite.max_test=VALUE"),
    (["benchmark", "colored_mnist", "suite.rho=2"], "expected float"),
    (["benchmark", "pacs", "data.name=mnist"], "sets data.name itself"),
    (["benchmark", "pacs", "train.epochs=0"], "train.epochs=0 is out of range"),
    (["benchmark", "--plugins", "none,tc3", "pacs"], "plugin.name='tc3' is unknown"),
    (["benchmark", "--preset", "smoke", "cifar10_subset", "suite.k_values=[2,64]"],
     "plugin.n_tasks=64 exceeds train.batch_size=32"),
    (["benchmark", "--plugins", "tasks", "colored_mnist", "plugin.n_tasks=1"],
     "which needs plugin.n_tasks >= 2, got 1: set plugin.conflict_every=0"),
    (["benchmark", "--plugins", "none,tc2 plugin.beta1", "pacs"], "'plugin.beta1' is not key=value"),
    (["benchmark", "--plugins", "none,tc2 plugin.beta=0.01", "pacs"], "plugin.beta"),
    (["benchmark", "--plugins", "none,tc2 plugin.beta1=-1", "pacs"], "plugin.beta1=-1"),
    (["benchmark", "--plugins", "none,umm train.lr=1", "pacs"], "umm takes no per-row overrides"),
])
def test_bad_benchmark_inputs_fail_before_any_work(argv, fragment, capsys, tmp_path):
    assert main([*argv, f"out={tmp_path / 'out'}"]) == 2
    assert fragment in one_line_error(capsys)
    assert not (tmp_path / "out").exists()  # nothing was trained or written


def test_suite_options_parse_and_default_from_the_preset():
    suite = SUITES.get("colored_mnist")
    options, rest = suite_options(suite, get_preset("cpu"), ["suite.rho=0.95", "train.epochs=2"])
    assert options == {"max_test": 0, "rho": 0.95, "curve_every": 0, "curve_images": 1000, "equal_compute": 0,
                       "posthoc_epochs": 0}
    assert rest == ["train.epochs=2"]
    options, _ = suite_options(suite, get_preset("standard"), ["suite.curve_every=3"])
    assert options["curve_every"] == 3 and options["equal_compute"] == 2   # interleaved step timing
    with pytest.raises(ConfigError, match="suite.equal_compute=3"):
        suite_options(suite, get_preset("standard"), ["suite.equal_compute=3"])
    options, _ = suite_options(SUITES.get("cifar10_subset"), get_preset("smoke"), ["suite.k_values=[2,16]"])
    assert options["k_values"] == [2, 16] and options["max_test"] == 300


def test_k_ablation_adds_one_tc2_row_per_other_k():
    base = config_mod.load_config((), ["plugin.n_tasks=4"])
    rows = k_ablation_rows(base, ["none", "tc2"], {"k_values": [2, 4, 8, 16]})
    assert rows == [Row(f"tc2 K={k}", "tc2", (f"plugin.n_tasks={k}",), equal_compute=False) for k in (2, 8, 16)]
    assert rows[2].folder == "tc2_K16"
    assert k_ablation_rows(base, ["none", "tasks"], {"k_values": [2, 8]}) == []


def test_summary_pairs_rows_by_seed_and_the_table_shows_it():
    """none = 0.50/0.60/0.70 and tc2 = +2.0, +1.9, +2.1 points on the same seeds: a paired mean of +2 points whose
    interval excludes 0, although the seeds' spread (10 points) dwarfs the gain."""
    suite = SUITES.get("cifar10_subset")
    base = config_mod.load_config((), ["data.name=cifar10_subset"])
    values = {"none": [0.50, 0.60, 0.70], "tc2": [0.52, 0.619, 0.721]}
    runs = {label: {str(seed): {"metrics": {"linear_probe": v, "knn": v - 0.1}, "seconds": 1.0,
                                "run_dirs": [f"{label}_seed{seed}"],
                                "conflict": {f"{label}_seed{seed}": [0.1 * seed, 0.0]}}
                    for seed, v in enumerate(vs)} for label, vs in values.items()}
    result = summarize_runs(suite, get_preset("cpu"), base, [Row("none", "none"), Row("tc2", "tc2")], [0, 1, 2],
                            {"max_test": 0}, runs)
    assert result["summary"]["tc2"]["linear_probe"]["mean"] == pytest.approx(0.62)
    assert result["summary"]["none"]["linear_probe"]["std"] == pytest.approx(0.1)
    paired = result["paired"]["tc2"]["linear_probe"]
    # s_d = 0.001: 0.02 ± t_{0.975, 2} · 0.001 / sqrt(3) = 0.02 ± 0.00248
    assert paired["mean"] == pytest.approx(0.02)
    assert paired["ci_low"] == pytest.approx(0.02 - 0.002484, abs=1e-5)
    assert paired["ci_high"] == pytest.approx(0.02 + 0.002484, abs=1e-5)
    assert "none" not in result["paired"]
    # early conflict per run (first half of 2 epochs = epoch 1): 0, 0.1, 0.2 per seed for both rows
    assert result["conflict_vs_primary"]["n"] == 6
    result["plots"] = []
    table = results_markdown(suite, result)
    assert "| tc2 | 62.00 ± 10.05 | 52.00 ± 10.05 |" in table
    assert "| tc2 | none | +2.00 [+1.75, +2.25] | +2.00 [+1.75, +2.25] |" in table


def test_universality_is_the_mean_over_a_runs_probes_and_is_paired_by_seed():
    """σ_task per run = the mean of its probes' σ (two targets here); the row's Δσ is paired by seed."""
    from tc2ssl.benchmarks.suites import universality_of

    details = {"usps": {"linear_probe": {}, "universality": {"sigma_task": 0.2, "U_task": 0.8}},
               "mnistm": {"universality": {"sigma_task": 0.4, "U_task": 0.6}}, "other": {"sigma_task": 9.0}}
    assert universality_of(details) == pytest.approx({"sigma_task": 0.3, "U_task": 0.7})
    assert universality_of({"linear_probe": {"accuracy": 0.5}}) == {}
    suite = SUITES.get("cifar10_subset")
    base = config_mod.load_config((), ["data.name=cifar10_subset"])
    sigmas = {"none": [0.50, 0.70, 0.60], "gessl": [0.45, 0.66, 0.54]}         # gessl − none: −0.05, −0.04, −0.06
    runs = {label: {str(seed): {"metrics": {"linear_probe": 0.5, "knn": 0.4}, "seconds": 1.0, "run_dirs": [],
                                "conflict": {}, "universality": {"sigma_task": v, "U_task": math.exp(-v)}}
                    for seed, v in enumerate(vs)} for label, vs in sigmas.items()}
    result = summarize_runs(suite, get_preset("cpu"), base, [Row("none", "none"), Row("gessl", "gessl")], [0, 1, 2],
                            {"max_test": 0}, runs)
    assert result["universality"]["gessl"]["sigma_task"]["mean"] == pytest.approx(0.55)
    paired = result["paired_universality"]["gessl"]["sigma_task"]
    # d = −0.05, −0.04, −0.06: mean −0.05, s_d = 0.01, half-width t_{0.975,2}·0.01/√3 = 4.303·0.00577 = 0.02484
    assert paired["mean"] == pytest.approx(-0.05) and paired["ci_high"] == pytest.approx(-0.05 + 0.02484, abs=1e-4)
    result["plots"] = []
    table = results_markdown(suite, result)
    assert "| gessl | 0.5500 ± 0.1054 | " in table and "| -0.0500 [-0.0748, -0.0252] |" in table


# ------------------------------------------------------------------------------------------- smoke, real data
EXPECTED_KEYS = {"suite", "title", "protocol", "preset", "metrics", "primary", "baseline", "rows", "seeds",
                 "options", "config", "runs", "summary", "paired", "conflict_vs_primary", "plots", "checks"}


def smoke(suite: str, out, *extra: str) -> dict:
    assert main(["benchmark", "--preset", "smoke", suite, f"out={out}", *extra]) == 0
    result = json.loads((out / "results.json").read_text())
    assert EXPECTED_KEYS <= set(result)
    assert result["suite"] == suite and result["seeds"] == [0] and result["metrics"] == list(SUITES.get(suite).metrics)
    labels = [row["label"] for row in result["rows"]]
    for label in labels:
        assert set(result["summary"][label]) == set(result["metrics"])
        assert all(0.0 <= s["mean"] <= 1.0 for s in result["summary"][label].values())
        assert set(result["paired"]) == set(labels) - {"none"}
        record = result["runs"][label]["0"]
        assert set(record["metrics"]) == set(result["metrics"])
        assert set(record["diagnostics"]) == set(record["conflict"])
        if label == "random_init":       # evaluated at initialisation: nothing trained, nothing logged
            assert all(s == [] for s in record["conflict"].values())
            assert all(d is None for d in record["diagnostics"].values())
            continue
        assert all(len(series) == 1 for series in record["conflict"].values())  # one epoch, every plug-in logs
        assert all(d["iterations"] == d["conflict_steps"] for d in record["diagnostics"].values())
    from tc2ssl.benchmarks.checks import SUITE_CHECKS
    assert [c["id"] for c in result["checks"]] == [f(result).id for f in SUITE_CHECKS[suite]]
    table = (out / "results.md").read_text()
    assert "## Checks (docs/decisions.md)" in table and all(f"- **{c['id']}** " in table for c in result["checks"])
    assert "| row | " + " | ".join(result["metrics"]) + " |" in table
    assert all(f"\n| {label} | " in table for label in labels)
    for png in result["plots"]:
        assert (out / png).stat().st_size > 1000
    assert {"metrics.png", "conflict.png"} <= set(result["plots"])
    # paired: every row ran the same seed on the same data; configs differ only in the plug-in and the folder
    def pretraining_folder(label: str):
        folder = out / f"{label.replace(' ', '_').replace('=', '')}_seed0"
        assert (folder / "benchmark.json").is_file()
        return folder / "mnist_grey" if suite == "digits_transfer" else folder

    configs = {label: yaml.safe_load((pretraining_folder(label) / "config.yaml").read_text()) for label in labels}
    reference = configs["none"]
    for label, cfg in configs.items():
        train = dict(cfg["train"])
        if label.startswith("none batch="):          # GeSSL's fairness row: the baseline at GeSSL's task batch
            assert train.pop("batch_size") == int(label.split("=")[1])
            train["batch_size"] = reference["train"]["batch_size"]
        assert cfg["seed"] == 0 and cfg["data"] == reference["data"] and train == reference["train"]
    return result


@pytest.mark.data
@pytest.mark.filterwarnings("ignore")
def test_pacs_smoke(shared_data, tmp_path):
    result = smoke("pacs", tmp_path / "pacs")
    details = json.loads((tmp_path / "pacs" / "tc2_seed0" / "benchmark.json").read_text())["details"]
    assert details["lodo_art_painting"]["n_val"] > 0 and details["photo"]["n_test"] == 171  # photo's crossval
    assert 0 < details["photo"]["universality"]["sigma_task"] < 10 and "probabilities" not in details["photo"]
    sigma = statistics.fmean(details[d]["universality"]["sigma_task"] for d in ("photo", "art_painting", "cartoon",
                                                                              "sketch"))
    assert result["runs"]["tc2"]["0"]["universality"]["sigma_task"] == pytest.approx(sigma)
    assert "## Universality" in (tmp_path / "pacs" / "results.md").read_text()
    assert result["config"]["data"]["domains"] == ["photo", "sketch", "cartoon"]


@pytest.mark.data
@pytest.mark.filterwarnings("ignore")
def test_colored_mnist_smoke(shared_data, tmp_path):
    result = smoke("colored_mnist", tmp_path / "cm")
    details = json.loads((tmp_path / "cm" / "none_seed0" / "benchmark.json").read_text())["details"]
    assert details["rho"] == 0.9 and details["worst_group"] == min(details["groups"].values())
    assert result["summary"]["none"]["worst_group"]["mean"] <= result["summary"]["none"]["average"]["mean"]


@pytest.mark.data
@pytest.mark.filterwarnings("ignore")
def test_digits_transfer_smoke(shared_data, tmp_path):
    result = smoke("digits_transfer", tmp_path / "dt")
    record = result["runs"]["tc2"]["0"]
    assert [p.rsplit("/", 1)[1] for p in record["run_dirs"]] == ["mnist_grey", "mnist_rgb"]
    grey, rgb = (yaml.safe_load((tmp_path / "dt" / "tc2_seed0" / d / "config.yaml").read_text())
                 for d in ("mnist_grey", "mnist_rgb"))
    assert (grey["data"]["channels"], rgb["data"]["channels"]) == (1, 3)


@pytest.mark.data
@pytest.mark.filterwarnings("ignore")
def test_cifar10_subset_smoke_with_k_ablation(shared_data, tmp_path):
    result = smoke("cifar10_subset", tmp_path / "c10")
    labels = [row["label"] for row in result["rows"]]
    assert labels[:-1] == ["random_init", "none", "tasks", "tc2", "gessl", "tc2 K=2", "tc2 K=8"]
    assert labels[-1] == f"none batch={result['config']['train']['batch_size'] // 2}"   # GeSSL's task batch
    assert list(result["k_ablation"]) == ["2", "4", "8"]
    assert "k_curve.png" in result["plots"]
    k8 = yaml.safe_load((tmp_path / "c10" / "tc2_K8_seed0" / "config.yaml").read_text())
    assert k8["plugin"]["n_tasks"] == 8


@pytest.mark.data
def test_colored_mnist_suite_data_is_the_registered_source_at_the_default_rho(shared_data):
    cfg = DataConfig(name="colored_mnist", root=str(shared_data), max_train=500)
    ours, source = colored_training_data(cfg, 0.9), load_data(cfg)
    assert torch.equal(ours.train.images, source.train.images) and torch.equal(ours.train.groups, source.train.groups)
    assert torch.equal(ours.test.images, source.test.images)


def test_methods_add_rows_paired_within_their_own_method(capsys, tmp_path):
    base = config_mod.load_config((), ["method.name=simclr"])
    from tc2ssl.benchmarks.suites import method_rows
    rows = method_rows(base, ["none", "tc2"], ["simclr", "byol", "byol"])
    assert rows == [Row("byol/none", "none", ("method.name=byol",), "byol/none"),
                    Row("byol/tc2", "tc2", ("method.name=byol",), "byol/none")]
    assert rows[1].folder == "byol_tc2"
    suite = SUITES.get("cifar10_subset")
    values = {"none": [0.5, 0.6], "tc2": [0.51, 0.62], "byol/none": [0.40, 0.42], "byol/tc2": [0.45, 0.47]}
    runs = {label: {str(seed): {"metrics": {"linear_probe": v, "knn": v}, "seconds": 1.0, "run_dirs": [],
                                "conflict": {}} for seed, v in enumerate(vs)} for label, vs in values.items()}
    result = summarize_runs(suite, get_preset("cpu"), base, [Row("none", "none"), Row("tc2", "tc2"), *rows],
                            [0, 1], {"max_test": 0}, runs)
    assert result["paired"]["byol/tc2"]["linear_probe"]["mean"] == pytest.approx(0.05)  # against byol/none
    assert result["paired"]["tc2"]["linear_probe"]["mean"] == pytest.approx(0.015)      # against none
    assert "byol/none" not in result["paired"] and "none" not in result["paired"]
    assert main(["benchmark", "--methods", "byol,dino", "pacs", f"out={tmp_path / 'o'}"]) == 2
    assert "unknown SSL method 'dino'" in one_line_error(capsys) and not (tmp_path / "o").exists()


def test_a_row_variant_carries_its_overrides_only_into_its_own_runs(tmp_path):
    """``--plugins 'tc2 plugin.beta1=0.01'``: a tc2 row with that override, beside the plain tc2 row, paired with
    the same none runs, in its own folder; with --methods it becomes METHOD/variant with the method's override."""
    from tc2ssl.benchmarks.suites import method_rows, plugin_row, run_config

    variant = plugin_row("tc2 plugin.beta1=0.01  plugin.n_tasks=2")
    assert variant == Row("tc2 plugin.beta1=0.01  plugin.n_tasks=2", "tc2", ("plugin.beta1=0.01", "plugin.n_tasks=2"))
    assert variant.baseline == "none" and variant.equal_compute
    plain, varied = (run_config(["model.backbone=small_cnn_tiny"], row, 1, tmp_path)
                     for row in (plugin_row("tc2"), variant))
    assert (plain.plugin.beta1, plain.plugin.n_tasks) == (0.05, 4)
    assert (varied.plugin.beta1, varied.plugin.n_tasks, varied.plugin.name) == (0.01, 2, "tc2")
    assert plain.out != varied.out and varied.seed == plain.seed == 1
    base = config_mod.load_config((), ["method.name=simclr"])
    (byol_variant,) = method_rows(base, ["tc2 plugin.beta1=0.01"], ["byol"])
    assert byol_variant == Row("byol/tc2 plugin.beta1=0.01", "tc2", ("method.name=byol", "plugin.beta1=0.01"),
                               "byol/none")


def test_calibration_controls_get_no_equal_compute_comparator():
    """The controls are compared with TC² at equal epochs; a comparator run of their own would be wasted compute.
    The plug-in rows (gessl included) keep theirs, with --methods too (tests/benchmarks/test_compute.py: the
    matching skips them)."""
    from tc2ssl.benchmarks.suites import method_rows, plugin_row

    controls = ["tc2_frozen", "random_proj", "tasks_nf", "tc2_frozen plugin.beta1=0.01"]
    assert not any(plugin_row(spec).equal_compute for spec in controls)
    assert all(plugin_row(spec).equal_compute for spec in ("none", "tasks", "tc2", "gessl", "tc2 plugin.beta1=0.01"))
    base = config_mod.load_config((), ["method.name=simclr"])
    byol = {row.label: row.equal_compute for row in method_rows(base, ["none", "tc2", "tc2_frozen"], ["byol"])}
    assert byol == {"byol/none": True, "byol/tc2": True, "byol/tc2_frozen": False}


def test_random_init_row_is_the_untrained_start_of_the_pretraining(tmp_path):
    """The ``random_init`` row evaluates the very weights the same seed's pretraining starts from."""
    from tc2ssl.benchmarks.suites import SuiteContext, pretrain_backbone
    from tc2ssl.train.loop import build_run

    cfg = config_mod.load_config((), ["model.backbone=small_cnn_tiny", "data.max_train=64", "train.batch_size=32",
                                      "seed=3", f"out={tmp_path / 'r'}"])
    data = load_data(cfg.data)
    ctx = SuiteContext({}, torch.device("cpu"), untrained=True)
    backbone, run_dir = pretrain_backbone(cfg, data, ctx)
    start = build_run(cfg, data).method.backbone.state_dict()
    assert set(backbone.state_dict()) == set(start)
    assert all(torch.equal(v, start[k]) for k, v in backbone.state_dict().items())
    assert (run_dir / "config.yaml").is_file() and not (run_dir / "metrics.jsonl").exists()
    other = pretrain_backbone(dataclasses.replace(cfg, seed=4), data, ctx)[0].state_dict()
    assert not all(torch.equal(v, start[k]) for k, v in other.items())


def test_gessl_rows_bring_the_baseline_at_the_task_batch():
    from tc2ssl.benchmarks.suites import DEFAULT_PLUGINS, gessl_fairness_rows

    base = config_mod.load_config((), ["train.batch_size=128", "plugin.gessl.n_batches=4"])
    rows = gessl_fairness_rows(base, ["none", "gessl"])
    assert [(r.label, r.plugin, r.overrides) for r in rows] == [("none batch=32", "none", ("train.batch_size=32",))]
    assert gessl_fairness_rows(base, ["none", "tc2"]) == [] and "gessl" in DEFAULT_PLUGINS


def test_posthoc_rows_start_from_the_same_seeds_none_run_and_pair_with_their_control(tmp_path, capsys):
    from tc2ssl.benchmarks.suites import posthoc_rows, run_config

    base = config_mod.load_config((), ["train.epochs=6"])
    rows = posthoc_rows(base, ["none", "tc2", "umm"], {"posthoc_epochs": 0})
    assert [(r.label, r.plugin, r.baseline) for r in rows] == [("none +3 epochs", "none", "none"),
                                                             ("umm", "umm", "none +3 epochs")]
    assert posthoc_rows(base, ["none"], {"posthoc_epochs": 0}) == []
    assert posthoc_rows(base, ["none", "umm"], {"posthoc_epochs": 2})[0].label == "none +2 epochs"
    cfg = run_config(["model.backbone=small_cnn_tiny"], rows[1], 4, tmp_path)
    assert cfg.train.init_from == str(tmp_path / "none_seed4") and cfg.train.epochs == 3
    assert cfg.train.lr == 5e-4 and cfg.train.warmup_epochs == 0 and cfg.out == str(tmp_path / "umm_seed4")
    with pytest.raises(config_mod.ConfigError, match="needs none as well"):
        posthoc_rows(base, ["tc2", "umm"], {"posthoc_epochs": 0})


@pytest.mark.data
@pytest.mark.filterwarnings("ignore")
def test_umm_row_fine_tunes_the_none_run_and_keeps_its_frozen_layers(shared_data, tmp_path):
    """The smoke colored_mnist with --plugins none,umm: UMM starts from none_seed0's weights (its frozen early layers
    stay bit-identical to them), the control continues plain SSL from the same weights (and changes them)."""
    from safetensors.torch import load_file

    out = tmp_path / "cm"
    assert main(["benchmark", "--preset", "smoke", "--plugins", "none,umm", "colored_mnist", f"out={out}"]) == 0
    result = json.loads((out / "results.json").read_text())
    control = [row["label"] for row in result["rows"]][1]
    assert [row["label"] for row in result["rows"]] == ["none", control, "umm"] and control.startswith("none +")
    assert set(result["paired"]) == {control, "umm"}
    start, umm, plain = (load_file(out / f"{folder}_seed0" / "encoder.safetensors")
                         for folder in ("none", "umm", control.replace(" ", "_")))
    frozen = [k for k in start if k.startswith(("blocks.0.", "blocks.1."))]          # f_e = block1-2
    assert frozen and all(torch.equal(umm[k], start[k]) for k in frozen)
    assert any(not torch.equal(umm[k], start[k]) for k in start if k not in frozen)
    assert any(not torch.equal(plain[k], start[k]) for k in start)
    assert f"| umm | {control} | " in (out / "results.md").read_text()          # paired with its control
    umm_cfg = yaml.safe_load((out / "umm_seed0" / "config.yaml").read_text())
    assert umm_cfg["train"]["init_from"] == str(out / "none_seed0")


def test_benchmark_config_presets_reach_every_row_before_the_users_overrides(monkeypatch, capsys):
    """`-p calibrated` expands to the preset's key=value overrides, ahead of the user's (which win)."""
    import tc2ssl.benchmarks as benchmarks

    seen = {}

    def fake_run_benchmark(suite, preset, plugins, seeds, overrides, methods=()):
        seen.update(suite=suite, preset=preset, overrides=list(overrides))
        return {"summary": {}}

    monkeypatch.setattr(benchmarks, "run_benchmark", fake_run_benchmark)
    assert main(["benchmark", "--preset", "smoke", "-p", "calibrated", "colored_mnist",
                 "plugin.view_agreement=false"]) == 0
    assert seen["overrides"][-1] == "plugin.view_agreement=false"
    assert "plugin.view_agreement=true" in seen["overrides"][:-1] and "plugin.weight_mode=shrink" in seen["overrides"]
    cfg = config_mod.load_config((), seen["overrides"])
    assert cfg.plugin.weight_mode == "shrink" and cfg.plugin.view_agreement is False


@pytest.mark.data
@pytest.mark.filterwarnings("ignore")
def test_equal_compute_from_step_timing_end_to_end(shared_data, tmp_path):
    """``suite.equal_compute=2``: the seed-0 runs are timed in interleaved rounds, the comparator's epochs follow,
    and a second invocation on the same folder reuses the stored timing (same epochs, file untouched)."""
    args = ["benchmark", "--preset", "smoke", "--plugins", "none,tc2", "colored_mnist", f"out={tmp_path / 'cm'}",
            "suite.equal_compute=2", "train.epochs=2"]
    assert main(args) == 0
    result = json.loads((tmp_path / "cm" / "results.json").read_text())
    timing_file = tmp_path / "cm" / "equal_compute.json"
    timing = json.loads(timing_file.read_text())
    (folder,) = timing["tc2"]["folders"]
    assert timing["tc2"]["baseline"] == "none" and folder["ratio"] > 0 and folder["row_steps"] == 2 * 4
    match = result["equal_compute"]["tc2"]
    assert match["epochs"] == max(1, round(2 * folder["ratio"] * folder["row_steps"] / folder["baseline_steps"]))
    assert match["comparator"] == ("none" if match["epochs"] == 2 else "none@tc2")
    assert result["options"]["equal_compute"] == 2
    stamp = timing_file.stat().st_mtime_ns
    assert main(args) == 0
    assert timing_file.stat().st_mtime_ns == stamp
    assert json.loads((tmp_path / "cm" / "results.json").read_text())["equal_compute"] == result["equal_compute"]


def test_a_row_variant_with_preset_gets_the_presets_overrides_and_fails_on_an_unknown_one(tmp_path):
    """``--plugins 'tc2 preset=calibrated'``: the config ``-p calibrated`` gives every row, for this row only, beside
    the default tc2 row; the label keeps the entry's text (its own folder). An unknown preset names itself."""
    from tc2ssl.benchmarks.suites import plugin_row, run_config

    row = plugin_row("tc2 preset=calibrated plugin.beta1=0.01")
    assert row.label == "tc2 preset=calibrated plugin.beta1=0.01" and row.plugin == "tc2" and row.equal_compute
    assert row.overrides == (*config_mod.preset_overrides("calibrated"), "plugin.beta1=0.01")
    varied = run_config(["model.backbone=small_cnn_tiny"], row, 0, tmp_path)
    expected = config_mod.load_config(("calibrated",), ["model.backbone=small_cnn_tiny", "plugin.name=tc2",
                                                         "plugin.beta1=0.01"])
    calibrated = ("shrink", "subspace", True)
    assert (varied.plugin.weight_mode, varied.plugin.factor_mode, varied.plugin.view_agreement) == calibrated
    assert varied.plugin == expected.plugin and varied.plugin.beta1 == 0.01
    plain = run_config(["model.backbone=small_cnn_tiny"], plugin_row("tc2"), 0, tmp_path)
    assert plain.plugin.weight_mode != "shrink" and plain.out != varied.out
    with pytest.raises(ConfigError, match="unknown preset 'nonesuch'"):
        plugin_row("tc2 preset=nonesuch")
