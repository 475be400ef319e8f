import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_throughput():
    spec = importlib.util.spec_from_file_location("throughput", REPO / "benchmarks" / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_floor_counts_follow_the_passes_the_maths_requires():
    """Per batch of N images: baseline 2N forward+backward; stage 2 needs the support (Eq. 6) and query (Eq. 7)
    views forward+backward and the anchors forward; TC² adds the statistics forward of all N·m views (only the
    query views when the support forward is shared); FD adds two gradient probes over the support views."""
    floor_counts = load_throughput().floor_counts
    n, m, ms = 128, 4, 2
    assert floor_counts("baseline", "-", n, m, ms) == {"forward_nograd": 0, "forward_graph": 256, "backward": 256}
    plus_t = floor_counts("tasks", "first_order", n, m, ms)
    assert plus_t == {"forward_nograd": 256, "forward_graph": 512, "backward": 512}
    tc2 = floor_counts("tc2", "first_order", n, m, ms)
    assert tc2 == {"forward_nograd": 256 + 512, "forward_graph": 512, "backward": 512}
    assert floor_counts("tc2", "first_order", n, m, ms, shared_support=True)["forward_nograd"] == 256 + 256
    fd = floor_counts("tc2", "finite_difference", n, m, ms)
    assert fd["forward_graph"] - tc2["forward_graph"] == fd["backward"] - tc2["backward"] == 2 * n * ms
    exact = floor_counts("tc2", "exact", n, m, ms)
    assert exact["forward_graph"] == tc2["forward_graph"] and exact["backward"] > tc2["backward"]
    # with backward = 2 forwards and no-grad = graph forward, the first-order TC² floor is 3x the baseline's
    unit = {"forward_nograd": 1.0, "forward_graph": 1.0, "backward": 2.0}
    module = load_throughput()
    ratio = module.floor_seconds(tc2, unit) / module.floor_seconds(floor_counts("baseline", "-", n, m, ms), unit)
    assert ratio == pytest.approx(3.0)


def test_gessl_floor_counts_the_passes_of_its_maths():
    """Per batch of N images (2N views over the M tasks): inner, look-ahead and outer forward+backward plus the
    no-grad forward of π at ψ; aid_fd adds two probes per inner step, implicit_cg two per CG step; the one-hot
    target needs neither the look-ahead nor ψ's forward."""
    counts = load_throughput().gessl_floor_counts
    n = 128
    assert counts("first_order", n) == {"forward_nograd": 256, "forward_graph": 3 * 256, "backward": 3 * 256}
    assert counts("aid_fd", n) == {"forward_nograd": 256, "forward_graph": 5 * 256, "backward": 5 * 256}
    assert counts("aid_fd", n, inner_steps=2, lookahead_steps=3)["forward_graph"] == (2 + 3 + 1 + 4) * 256
    assert counts("implicit_cg", n, cg_steps=5)["backward"] == (1 + 1 + 1 + 10) * 256
    assert counts("exact", n)["backward"] == 5 * 256 and counts("exact", n)["forward_graph"] == 3 * 256
    assert counts("first_order", n, onehot=True) == {"forward_nograd": 0, "forward_graph": 2 * 256,
                                                      "backward": 2 * 256}


@pytest.mark.slow
def test_throughput_quick_prints_the_ratio_last(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--quick", "--batch", "64",
                           "--backbone", "small_cnn_tiny", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["tc2_to_baseline_step_ratio"] > 1.0
    assert 0.0 < last["tc2_stage1_share"] < 1.0
    assert 0.0 < last["tc2_augmentation_share"] < 1.0
    assert last["tc2_step_to_floor"] > 0.0
    report = json.loads((tmp_path / "throughput.json").read_text())
    assert {"baseline", "tasks", "tc2"} <= set(report["main"])
    shares = report["main"]["tc2"]["share"]
    assert sum(shares.values()) == pytest.approx(1.0, abs=0.05)
    assert {"augmentation", "statistics_forward", "stage1", "stage2"} <= set(shares)
    assert report["floor"]["rows"]["tc2/first_order"]["views"]["forward_nograd"] == 64 * (4 + 2)
    assert (tmp_path / "throughput.md").read_text().startswith("Throughput:")


@pytest.mark.slow
def test_throughput_sweeps_k_and_m_and_reports_points_it_cannot_run(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--sweep", "--repeats", "2",
                           "--warmup", "1", "--batch", "32", "--backbone", "small_cnn_tiny", "--k-sweep", "2,4",
                           "--m-sweep", "2:1,3:2", "--no-shared", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "throughput.json").read_text())
    assert set(report["sweep_n_tasks"]["points"]) == {"baseline", "K=2", "K=4"}
    assert report["sweep_n_tasks"]["spread_max_over_min"] >= 1.0
    assert set(report["sweep_n_views"]["points"]) == {"baseline", "m=3,m'=2"}
    assert "simclr" in report["sweep_n_views"]["skipped"]["m=2,m'=1"]
    assert "k_sweep_spread" in json.loads(proc.stdout.strip().splitlines()[-1])


def test_protocol_tables_pair_models_by_seed(tmp_path):
    """Few-shot and fine-tune scores of two models over three seeds: mean ± std per model, the paired difference
    with its t-interval (differences 2, 4, 6 points: mean 4, std 2, t_{0.975,2} = 4.303 → ±4.97)."""
    spec = importlib.util.spec_from_file_location("protocol_tables", REPO / "benchmarks" / "protocol_tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    for seed, (base, other) in enumerate([(0.50, 0.52), (0.60, 0.64), (0.40, 0.46)]):
        for model, accuracy in (("none", base), ("umm", other)):
            folder = tmp_path / f"s{seed}" / model
            folder.mkdir(parents=True)
            episodes = {"prototype": {"mean": accuracy, "ci95": 0.01, "episodes": 600}}
            (folder / "eval_usps_fewshot.json").write_text(json.dumps({"pretrained": {"5way_1shot": episodes}}))
            (folder / "eval_usps_finetune.json").write_text(json.dumps({"pretrained": {"accuracy": accuracy}}))
    (tmp_path / "s3" / "none").mkdir(parents=True)           # an unfinished seed: skipped
    for protocol in ("fewshot", "finetune"):
        text = tables.table(tables.load(tmp_path, "usps", protocol, ["none", "umm"]), "none")
        row = text.splitlines()[2]
        assert "| 50.00 ± 10.00 | 54.00 ± 9.17 | +4.00 [-0.97, +8.97] |" in row, row
        assert "(seeds: s0, s1, s2;" in text


def test_step_cost_script_times_runs_against_the_first(tmp_path, capsys):
    """benchmarks/step_cost.py on two tiny finished runs (SimCLR, BYOL): the reference's ratio is exactly 1, the
    other's is positive, and the table names both folders."""
    from tc2ssl import config as config_mod
    from tc2ssl.train.loop import pretrain

    dirs = []
    for method in ("simclr", "byol"):
        cfg = config_mod.load_config((), ["model.backbone=small_cnn_tiny", "data.max_train=64", "train.batch_size=32",
                                          "train.epochs=1", "train.progress=false", f"method.name={method}",
                                          f"out={tmp_path / method}"])
        dirs.append(str(pretrain(cfg)))
    spec = importlib.util.spec_from_file_location("step_cost", REPO / "benchmarks" / "step_cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([*dirs, "--rounds", "2", "--warmup", "1", "--threads", "1"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    ratios = json.loads(printed[-1])
    assert list(ratios) == dirs and ratios[dirs[0]] == 1.0 and ratios[dirs[1]] > 0
    assert any(dirs[1] in line for line in printed[:-1])
