import json
import subprocess
import sys

import pytest
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_throughput_quick_prints_the_ratio_last(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--quick", "--batch", "64",
                           "--backbone", "small_cnn_tiny", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["tc2_to_baseline_step_ratio"] > 1.0
    assert 0.0 < last["tc2_stage1_share"] < 1.0
    report = json.loads((tmp_path / "throughput.json").read_text())
    assert set(report["main"]) == {"baseline", "tasks", "tc2"}
