"""The runnable examples under examples/ run as a user would run them (one epoch, to keep the suite fast)."""
import math
import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_tc2_in_your_loop_example_trains_and_prints_finite_losses():
    env = {**os.environ, "TC2SSL_EXAMPLE_EPOCHS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(EXAMPLES / "tc2_in_your_loop.py")], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    epoch = re.fullmatch(r"epoch 0: query loss (\S+), L_v (\S+), L_w (\S+), inter-task gradient cosine (\S+)",
                         lines[0])
    assert epoch, done.stdout
    values = [float(v) for v in epoch.groups()]
    assert all(math.isfinite(v) for v in values) and -1.0 <= values[3] <= 1.0
    assert values[0] > 0 and values[1] > 0          # the Brier query loss and L_v of a real batch are positive
    assert lines[-1] == "features (8, 64)"
