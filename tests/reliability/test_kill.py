"""kill -9 at a random point of training, of a checkpoint write and of the evaluation, then `train.resume=true`:
the run ends bit-identical to an uninterrupted one (weights, optimiser state, metrics, evaluation), and the
temporary file a killed checkpoint write leaves is removed. Slow: each case runs tc2ssl in subprocesses."""
from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tc2ssl.train.checkpoint import CHECKPOINT_NAME, load_checkpoint

pytestmark = pytest.mark.slow

_spec = importlib.util.spec_from_file_location("resume_helpers", Path(__file__).parents[1] / "train" / "test_resume.py")
resume_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(resume_helpers)

# 320 digits / batch 16 = 20 steps per epoch, 3 epochs, then a quick evaluation
RUN = ["model.backbone=small_cnn_tiny", "train.batch_size=16", "data.max_train=320", "train.epochs=3",
       "train.log_every=1", "train.progress=false", "seed=7", "eval.probe_cs=[1.0]", "eval.max_train=200",
       "eval.probe_max_iter=100", "eval.random_init_baseline=false"]
TIMEOUT_S = 300

# runs tc2ssl with a pause (announced on stderr) inside every checkpoint write, after the temporary file is
# complete and before it replaces checkpoint.pt, and before the evaluation: the moments the tests kill at
DRIVER = """
import os, sys, time
from tc2ssl.train import checkpoint
from tc2ssl import workflows
replace, evaluate = os.replace, workflows.evaluate_encoder
class PausingOs:
    def __getattr__(self, name):
        return getattr(os, name)
    def replace(self, src, dst):
        if str(dst).endswith("checkpoint.pt"):
            print("PAUSE checkpoint", flush=True, file=sys.stderr)
            time.sleep(float(os.environ["PAUSE_S"]))
        return replace(src, dst)
def pausing_evaluate(*args, **kwargs):
    print("PAUSE evaluation", flush=True, file=sys.stderr)
    time.sleep(float(os.environ["PAUSE_S"]))
    return evaluate(*args, **kwargs)
checkpoint.os = PausingOs()
workflows.evaluate_encoder = pausing_evaluate
from tc2ssl.cli import main
sys.exit(main(sys.argv[1:]))
"""


def command(out: Path, *extra: str, driver: bool = False) -> list[str]:
    head = [sys.executable, "-c", DRIVER] if driver else [sys.executable, "-m", "tc2ssl"]
    return [*head, "pretrain", *RUN, f"out={out}", *extra]


def run(cmd: list[str], log: Path, pause_s: float = 0.0) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PAUSE_S=str(pause_s),
               PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    with log.open("w") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)


def wait_for(proc: subprocess.Popen, log: Path, ready) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not ready():
        assert proc.poll() is None, f"the run ended before the kill point:\n{log.read_text()}"
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.002)


def kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = run(command(out), out.parent / "log")
    assert proc.wait(timeout=TIMEOUT_S) == 0, (out.parent / "log").read_text()
    return out


def resume_and_compare(out: Path, reference: Path) -> None:
    log = out.parent / "resume.log"
    proc = run(command(out, "train.resume=true"), log)
    assert proc.wait(timeout=TIMEOUT_S) == 0, log.read_text()
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp") or p.name == ".tc2ssl.lock"]
    resume_helpers.assert_identical(load_file(out / "encoder.safetensors"),
                                    load_file(reference / "encoder.safetensors"), "encoder")
    state, expected = load_checkpoint(out / CHECKPOINT_NAME), load_checkpoint(reference / CHECKPOINT_NAME)
    for key in resume_helpers.TRAINING_STATE:
        resume_helpers.assert_identical(state[key], expected[key], key)
    records = resume_helpers.read_records(out / "metrics.jsonl")
    assert [r["step"] for r in records if r["kind"] == "step"] == list(range(60))
    assert resume_helpers.without_timing(records) == \
        resume_helpers.without_timing(resume_helpers.read_records(reference / "metrics.jsonl"))

    def evaluation(folder):   # the hash differs: the export's metadata records the resumed config
        result = json.loads((folder / "eval.json").read_text())["pretrained"]
        return {k: v for k, v in result.items() if k != "encoder_sha256"}

    assert evaluation(out) == evaluation(reference)


def test_kill_at_a_random_step_of_training(tmp_path, reference):
    seed = random.SystemRandom().randrange(2 ** 32)
    kill_after = random.Random(seed).randrange(1, 58)          # a logged step; some land before any checkpoint
    out = tmp_path / "run"
    proc = run(command(out), tmp_path / "log")
    wait_for(proc, tmp_path / "log", lambda: any(
        r.get("kind") == "step" and r["step"] >= kill_after for r in resume_helpers.read_records(out / "metrics.jsonl")))
    kill(proc)
    print(f"random seed {seed}: killed after step {kill_after}")
    resume_and_compare(out, reference)


def test_kill_inside_a_checkpoint_write(tmp_path, reference):
    seed = random.SystemRandom().randrange(2 ** 32)
    which = random.Random(seed).choice([1, 2])                 # the first or the second epoch's checkpoint
    out = tmp_path / "run"
    log = tmp_path / "log"
    proc = run(command(out, driver=True), log, pause_s=2.0)
    wait_for(proc, log, lambda: log.read_text().count("PAUSE checkpoint") >= which)
    kill(proc)
    print(f"random seed {seed}: killed inside checkpoint write {which}")
    orphans = [p for p in out.iterdir() if p.name.startswith(".checkpoint.pt.") and p.name.endswith(".tmp")]
    assert len(orphans) == 1                                   # the complete temporary file, never renamed
    if which == 1:
        assert not (out / CHECKPOINT_NAME).exists()
    else:
        assert load_checkpoint(out / CHECKPOINT_NAME)["epoch"] == 0
    resume_and_compare(out, reference)


def test_kill_during_the_evaluation(tmp_path, reference):
    seed = random.SystemRandom().randrange(2 ** 32)
    pause = random.Random(seed).uniform(0.0, 1.0)
    out = tmp_path / "run"
    log = tmp_path / "log"
    proc = run(command(out, driver=True), log, pause_s=1.0)
    wait_for(proc, log, lambda: "PAUSE evaluation" in log.read_text())
    time.sleep(pause)
    kill(proc)
    print(f"random seed {seed}: killed {pause:.2f} s into the evaluation")
    assert not (out / "eval.json").exists()
    resume_and_compare(out, reference)
