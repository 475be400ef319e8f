"""Resumable runs: a run killed with SIGKILL and resumed with ``train.resume=true`` ends bit-identical to an
uninterrupted run; resuming refuses a checkpoint of another config or a corrupt one."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tc2ssl.config import load_config
from tc2ssl.errors import CheckpointError
from tc2ssl.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from tc2ssl.train.loop import pretrain

# digits, 320 training images / batch 16 = 20 steps per epoch
SUBPROCESS_RUN = ["model.backbone=small_cnn_tiny", "train.batch_size=16", "data.max_train=320", "train.epochs=3",
                  "train.log_every=1", "eval.enabled=false", "seed=7"]
# checkpoint entries that must match between the resumed and the uninterrupted run (config differs in out/resume)
TRAINING_STATE = ("epoch", "global_step", "method", "plugin", "plugin_extra", "optimizer", "scheduler")
RUN_TIMEOUT_S = 300


def read_records(path: Path) -> list[dict]:
    """The complete JSON lines of a metrics.jsonl that may be in the middle of being written."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def pretrain_command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tc2ssl", "pretrain", *SUBPROCESS_RUN, f"out={out}", *extra]


def start(command: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with log.open("w") as fh:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, log: Path) -> str:
    proc.wait(timeout=RUN_TIMEOUT_S)
    output = log.read_text()
    assert proc.returncode == 0, output
    return output


def assert_identical(a, b, where: str = "") -> None:
    """Nested dicts / lists / tensors / numbers are equal, tensors bit for bit."""
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b, where


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("images_per_s", "seconds")} for r in records]


def kill_resume_and_compare(tmp_path: Path, *extra: str) -> None:
    run_a, run_b = tmp_path / "run_a", tmp_path / "run_b"
    proc_b = start(pretrain_command(run_b, *extra), tmp_path, tmp_path / "b.log")  # the uninterrupted run
    proc_a = start(pretrain_command(run_a, *extra), tmp_path, tmp_path / "a.log")
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        if proc_a.poll() is not None:
            proc_b.kill()
            log = (tmp_path / "a.log").read_text()
            pytest.fail(f"run a ended (rc {proc_a.returncode}) before it was killed:\n{log}")
        records = read_records(run_a / "metrics.jsonl")
        if (run_a / CHECKPOINT_NAME).exists() and any(r["kind"] == "step" and r["epoch"] == 1 for r in records):
            break
        assert time.monotonic() < deadline, "run a made no progress"
        time.sleep(0.005)
    os.kill(proc_a.pid, signal.SIGKILL)
    proc_a.wait()
    assert proc_a.returncode == -signal.SIGKILL

    killed_at = load_checkpoint(run_a / CHECKPOINT_NAME)
    assert killed_at["epoch"] < 2
    logged_steps = [r["step"] for r in read_records(run_a / "metrics.jsonl") if r["kind"] == "step"]
    assert max(logged_steps) >= killed_at["global_step"]  # steps after the checkpoint exist and must be redone

    resumed = start(pretrain_command(run_a, "train.resume=true", *extra), tmp_path, tmp_path / "a_resume.log")
    assert f"from epoch {killed_at['epoch'] + 1}" in finish(resumed, tmp_path / "a_resume.log")
    finish(proc_b, tmp_path / "b.log")

    encoder_a, encoder_b = load_file(run_a / "encoder.safetensors"), load_file(run_b / "encoder.safetensors")
    assert_identical(encoder_a, encoder_b, "encoder")
    state_a, state_b = load_checkpoint(run_a / CHECKPOINT_NAME), load_checkpoint(run_b / CHECKPOINT_NAME)
    assert state_a["epoch"] == 2 and state_a["global_step"] == 60
    for key in TRAINING_STATE:
        assert_identical(state_a[key], state_b[key], key)

    records_a, records_b = read_records(run_a / "metrics.jsonl"), read_records(run_b / "metrics.jsonl")
    steps_a = [r["step"] for r in records_a if r["kind"] == "step"]
    assert steps_a == list(range(60))  # log_every=1: every step once, no duplicate from the killed attempt
    assert [r["epoch"] for r in records_a if r["kind"] == "epoch"] == [0, 1, 2]
    assert without_timing(records_a) == without_timing(records_b)


def test_sigkill_then_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    kill_resume_and_compare(tmp_path)


@pytest.mark.slow
def test_sigkill_then_resume_tc2_restores_its_own_networks(tmp_path):
    # stage1_optimizer=adam: f_v / f_w have optimiser state of their own (plugin_extra) that must be restored too
    kill_resume_and_compare(tmp_path, "plugin.name=tc2", "plugin.n_tasks=2", "plugin.stage1_optimizer=adam")
    state = load_checkpoint(tmp_path / "run_a" / CHECKPOINT_NAME)
    assert any(k.startswith("calibrator.factor_net.") for k in state["plugin"])
    assert any(k.startswith("calibrator.weight_net.") for k in state["plugin"])
    assert state["plugin_extra"]["stage1_optimizer"]["state"]


# ---------------------------------------------------------------------------------------------------- in-process
TINY_RUN = ["model.backbone=small_cnn_tiny", "train.batch_size=16", "data.max_train=32", "train.epochs=2"]


def tiny_config(out: Path, *extra: str):
    return load_config((), [*TINY_RUN, f"out={out}", *extra])


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path):
    pretrain(tiny_config(tmp_path))
    with pytest.raises(CheckpointError, match=r"config differs.*method\.temperature: checkpoint 0\.5 vs now 0\.2"):
        pretrain(tiny_config(tmp_path, "train.resume=true", "method.temperature=0.2"))


def test_resume_ignores_keys_that_do_not_change_the_training(tmp_path):
    stopped = tmp_path / "stopped"
    pretrain(tiny_config(stopped, "train.epochs=3", "train.max_steps=2"))  # 2 steps per epoch: ends after epoch 0
    pretrain(tiny_config(stopped, "train.epochs=3", "train.resume=true", "train.log_every=1"))
    pretrain(tiny_config(tmp_path / "straight", "train.epochs=3"))
    assert load_checkpoint(stopped / CHECKPOINT_NAME)["epoch"] == 2
    assert_identical(load_file(stopped / "encoder.safetensors"),
                     load_file(tmp_path / "straight" / "encoder.safetensors"))


def test_resume_from_a_corrupt_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"\x00garbage, not a torch checkpoint")
    with pytest.raises(CheckpointError, match="corrupt or not a tc2ssl checkpoint"):
        pretrain(tiny_config(tmp_path, "train.resume=true"))


def test_resume_without_a_checkpoint_starts_from_scratch(tmp_path, capsys):
    pretrain(tiny_config(tmp_path / "fresh"))
    pretrain(tiny_config(tmp_path / "resumed", "train.resume=true"))
    assert "no checkpoint" in capsys.readouterr().err
    assert_identical(load_file(tmp_path / "fresh" / "encoder.safetensors"),
                     load_file(tmp_path / "resumed" / "encoder.safetensors"))
    steps = [r["step"] for r in read_records(tmp_path / "resumed" / "metrics.jsonl") if r["kind"] == "step"]
    assert steps[0] == 0
