"""An interrupted ``tc2ssl benchmark`` resumes: finished runs are reused when their config matches (refused when it
does not), the unfinished one continues from its checkpoint, and the results equal an uninterrupted run's."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tc2ssl import config as config_mod
from tc2ssl.benchmarks.suites import SUITES, Row, SuiteContext, run_config, run_row
from tc2ssl.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
ARGS = ["--preset", "smoke", "--plugins", "none,tc2", "colored_mnist", "train.epochs=4", "suite.curve_every=1"]


def finished_record(tmp_path, stored_overrides: list[str]) -> tuple[config_mod.RunConfig, dict]:
    """A run config of row ``none`` and a benchmark.json of a finished run whose config has ``stored_overrides``."""
    base = ["model.backbone=small_cnn_tiny", "train.batch_size=32"]
    run_cfg = run_config(base, Row("none", "none"), 0, tmp_path)
    stored = config_mod.to_dict(run_config([*base, *stored_overrides], Row("none", "none"), 0, tmp_path))
    record = {"metrics": {"average": 0.5}, "seconds": 1.0, "run_dirs": [run_cfg.out], "diagnostics": {},
              "curve": {}, "conflict": {}}
    Path(run_cfg.out).mkdir(parents=True)
    (Path(run_cfg.out) / "benchmark.json").write_text(json.dumps({**record, "config": stored, "details": {}}))
    return run_cfg, record


def test_a_finished_run_of_the_same_config_is_reused_without_training(tmp_path):
    run_cfg, record = finished_record(tmp_path, ["train.progress=false"])   # a resume-free key may differ
    ctx = SuiteContext({}, "cpu")
    assert run_row(SUITES.get("colored_mnist"), Row("none", "none"), run_cfg, ctx) == {**record, "universality": {}}


def test_a_reused_run_from_before_sigma_was_recorded_gets_it_from_its_details(tmp_path):
    run_cfg, record = finished_record(tmp_path, [])
    stored = json.loads((Path(run_cfg.out) / "benchmark.json").read_text())
    stored["details"] = {"universality": {"sigma_task": 0.25, "U_task": 0.78}}
    (Path(run_cfg.out) / "benchmark.json").write_text(json.dumps(stored))
    reused = run_row(SUITES.get("colored_mnist"), Row("none", "none"), run_cfg, SuiteContext({}, "cpu"))
    assert reused["universality"] == {"sigma_task": 0.25, "U_task": 0.78}


def test_a_finished_run_of_another_config_is_refused_naming_the_difference(tmp_path):
    run_cfg, _ = finished_record(tmp_path, ["train.lr=0.123"])
    with pytest.raises(ConfigError, match=r"finished run of another config \(train.lr: checkpoint 0.123"):
        run_row(SUITES.get("colored_mnist"), Row("none", "none"), run_cfg, SuiteContext({}, "cpu"))


def benchmark_command(out: Path) -> list[str]:
    return [sys.executable, "-m", "tc2ssl", "benchmark", *ARGS, f"out={out}"]


def environment() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}


def wait_for(predicate, process, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.mark.slow
@pytest.mark.data
@pytest.mark.filterwarnings("ignore")
def test_a_killed_benchmark_resumes_to_the_results_of_an_uninterrupted_one(shared_data, tmp_path):
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    process = subprocess.Popen(benchmark_command(killed), env=environment(), cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert wait_for(lambda: (killed / "none_seed0" / "benchmark.json").is_file(), process, 600), (
            process.stderr.read().decode()[-2000:] if process.poll() is not None else "timed out")
        # kill while the second run is mid-training: after its first epoch checkpoint, before its last epoch
        assert wait_for(lambda: (killed / "tc2_seed0" / "checkpoint.pt").is_file(), process, 600)
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    epochs_done = sum('"kind": "epoch"' in line for line in
                      (killed / "tc2_seed0" / "metrics.jsonl").read_text().splitlines())
    assert not (killed / "tc2_seed0" / "benchmark.json").exists() and 1 <= epochs_done < 4

    resumed = subprocess.run(benchmark_command(killed), env=environment(), cwd=REPO, capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "reusing the finished run" in resumed.stderr and "resuming" in resumed.stderr
    subprocess.run(benchmark_command(whole), env=environment(), cwd=REPO, check=True, capture_output=True)

    after_kill, uninterrupted = (json.loads((d / "results.json").read_text()) for d in (killed, whole))
    for label in ("none", "tc2"):
        assert after_kill["runs"][label]["0"]["metrics"] == uninterrupted["runs"][label]["0"]["metrics"]
        assert ([p["knn"] for p in after_kill["curves"][label]] == [p["knn"] for p in uninterrupted["curves"][label]])
        assert [p["epoch"] for p in after_kill["curves"][label]] == [0, 1, 2, 3, 4]
    assert after_kill["summary"] == uninterrupted["summary"]
