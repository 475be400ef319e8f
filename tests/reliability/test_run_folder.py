"""Run folders cannot be clobbered: another run's (or a user's) files are refused or moved aside, never mixed;
one writer at a time (a lock with stale-lock recovery); orphan temporary files are cleaned; evaluations name the
encoder they measured; result files of different data roots do not collide."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from reliability_helpers import TINY, TINY_EVAL, assert_one_line_error, snapshot

from tc2ssl.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from tc2ssl.train.run_folder import (
    LOCK_NAME,
    claimed_run_folder,
    file_sha256,
    remove_stale_evaluations,
)


def test_a_new_run_refuses_a_folder_with_other_files_and_changes_nothing(cli, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text("my own notes\n")           # a user's file with a run file's name
    (out / "report.md").write_text("# my report\n")
    before = snapshot(out)
    rc, _, err = cli("pretrain", *TINY, f"out={out}")
    assert_one_line_error(rc, err, f"out={out} already holds files", "metrics.jsonl, report.md",
                          "train.overwrite=true")
    assert snapshot(out) == before


def test_a_second_run_into_a_finished_run_folder_is_refused(cli, tmp_path):
    out = tmp_path / "run"
    assert cli("pretrain", *TINY, f"out={out}")[0] == 0
    before = snapshot(out)
    rc, _, err = cli("pretrain", *TINY, f"out={out}", "seed=1")
    assert_one_line_error(rc, err, "already holds files", "checkpoint.pt")
    assert snapshot(out) == before
    # train.resume=true with another config: the resume's own refusal, files untouched
    rc, _, err = cli("pretrain", *TINY, f"out={out}", "seed=1", "train.resume=true")
    assert_one_line_error(rc, err, "config differs", "seed")
    assert snapshot(out) == before


def test_overwrite_moves_the_old_files_aside(cli, tmp_path):
    out = tmp_path / "run"
    assert cli("pretrain", *TINY_EVAL, f"out={out}")[0] == 0
    (out / "notes.txt").write_text("keep me")
    before = snapshot(out)
    rc, _, err = cli("pretrain", *TINY, f"out={out}", "seed=1", "train.overwrite=true")
    assert rc == 0, err
    aside = [p for p in out.iterdir() if p.name.startswith(".replaced-")]
    assert len(aside) == 1 and snapshot(aside[0]) == before               # every old file, unchanged
    assert not (out / "eval.json").exists() and not (out / "notes.txt").exists()   # nothing mixed in
    assert load_checkpoint(out / CHECKPOINT_NAME)["config"]["seed"] == 1


def test_a_second_writer_gets_a_one_line_error_naming_the_holder(cli, tmp_path):
    """Another process holds the folder (a real second process: flock is per open file)."""
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (   # the lock protocol by hand: no torch import, fast
        "import fcntl, os, time\n"
        f"fd = os.open({str(out / LOCK_NAME)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); os.write(fd, b'%d\\n' % os.getpid())\n"
        "print('held', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        rc, _, err = cli("pretrain", *TINY, f"out={out}")
        assert_one_line_error(rc, err, f"{out} is in use by another tc2ssl process (pid {holder.pid})")
        rc, _, err = cli("evaluate", str(out))
        assert rc == 2 and "Traceback" not in err
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: its lock file is stale and the next run simply takes it
    assert (out / LOCK_NAME).read_text().strip() == str(holder.pid)
    rc, _, err = cli("pretrain", *TINY, f"out={out}")
    assert rc == 0, err
    assert not (out / LOCK_NAME).exists()                                    # released at the end of the run


def test_the_lock_is_reentrant_and_exclusive_within_a_process(tmp_path):
    with claimed_run_folder(out=tmp_path, prepare=False), claimed_run_folder(out=tmp_path, prepare=False):
        assert (tmp_path / LOCK_NAME).read_text().strip() == str(os.getpid())   # nested: the same holder
    assert not (tmp_path / LOCK_NAME).exists()


def test_orphan_temporary_files_are_removed_on_start(cli, tmp_path):
    out = tmp_path / "run"
    assert cli("pretrain", *TINY, f"out={out}", "train.epochs=2", "train.max_steps=2")[0] == 0
    orphans = [out / ".checkpoint.pt.abc123.tmp", out / ".metrics.jsonl.x_9.tmp"]
    for orphan in orphans:
        orphan.write_bytes(b"half a checkpoint")
    (out / ".hidden.tmp.keep").write_text("not ours")
    rc, _, err = cli("pretrain", *TINY, f"out={out}", "train.epochs=2", "train.resume=true")
    assert rc == 0, err
    assert not any(o.exists() for o in orphans) and (out / ".hidden.tmp.keep").exists()


def test_a_run_killed_before_its_first_checkpoint_restarts_with_resume(cli, tmp_path):
    """config.yaml and a partial metrics.jsonl but no checkpoint: the same config resumes (from scratch); another
    config is refused."""
    out = tmp_path / "run"
    assert cli("pretrain", *TINY, f"out={out}")[0] == 0
    (out / CHECKPOINT_NAME).unlink()
    (out / "encoder.safetensors").unlink()
    rc, _, err = cli("pretrain", *TINY, f"out={out}", "seed=3", "train.resume=true")
    assert_one_line_error(rc, err, "already holds files")
    rc, _, err = cli("pretrain", *TINY, f"out={out}", "train.resume=true")
    assert rc == 0 and "starting from scratch" in err


def test_evaluations_record_their_encoder_and_stale_ones_are_removed(cli, tmp_path):
    out = tmp_path / "run"
    assert cli("pretrain", *TINY_EVAL, f"out={out}", "train.epochs=2", "train.max_steps=2")[0] == 0
    recorded = json.loads((out / "eval.json").read_text())["pretrained"]["encoder_sha256"]
    assert recorded == file_sha256(out / "encoder.safetensors")
    assert remove_stale_evaluations(out) == []                       # it describes this encoder: kept
    (out / "eval_usps.json").write_text(json.dumps({"pretrained": {"encoder_sha256": "0" * 64}}))
    (out / "eval_usps.md").write_text("stale")
    # resuming trains epoch 1: a new encoder, so every evaluation of the old one goes
    rc, _, err = cli("pretrain", *TINY, f"out={out}", "train.epochs=2", "train.resume=true")
    assert rc == 0, err
    assert not any(out.glob("eval*")), sorted(p.name for p in out.iterdir())


def _npz(path: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    for split, size in (("train", n), ("test", n // 2)):
        np.savez(path / f"{split}.npz", images=rng.integers(0, 255, (size, 8, 8), dtype=np.uint8),
                 labels=np.arange(size) % 2)


def test_evaluations_of_two_npz_roots_do_not_collide(cli, tmp_path):
    run = tmp_path / "run"
    assert cli("pretrain", *TINY, f"out={run}")[0] == 0
    roots = [tmp_path / "a" / "data", tmp_path / "b" / "data"]       # the same folder name, different data
    for seed, root in enumerate(roots):
        _npz(root, 40, seed)
        rc, _, err = cli("evaluate", str(run), "eval.data=npz", f"eval.root={root}", "eval.probe_cs=[1.0]",
                         "eval.random_init_baseline=false")
        assert rc == 0, err
    names = sorted(p.name for p in run.glob("eval_npz*.json"))
    assert len(names) == 2 and all(n.startswith("eval_npz-data-") for n in names), names


def test_evaluate_honours_the_seed(cli, tmp_path, monkeypatch):
    """`evaluate RUN seed=N`: the probe (its validation split and eval.max_train subset) uses seed N; the random
    initialisation baseline stays the run's own; the json records the seed."""
    from tc2ssl import workflows

    run = tmp_path / "run"
    assert cli("pretrain", *TINY, f"out={run}")[0] == 0
    probe_seeds = []
    evaluate_encoder = workflows.evaluate_encoder

    def spy(backbone, run_cfg, splits, device):
        probe_seeds.append(run_cfg.seed)
        return evaluate_encoder(backbone, run_cfg, splits, device)

    monkeypatch.setattr(workflows, "evaluate_encoder", spy)
    for seed in (0, 5):
        rc, _, err = cli("evaluate", str(run), f"seed={seed}", "eval.probe_cs=[1.0]", "eval.max_train=20")
        assert rc == 0, err
        result = json.loads((run / "eval_digits.json").read_text())["pretrained"]
        assert result["eval_seed"] == seed and result["n_train"] == 20
    assert probe_seeds == [0, 0, 5, 5]                                 # pretrained and random init, per call
    assert "seed: 0" in (run / "config.yaml").read_text()               # the run's own config is unchanged


@pytest.mark.slow
def test_two_concurrent_runs_into_one_folder(tmp_path):
    """Two `tc2ssl pretrain` processes started together on one folder: exactly one runs, the other stops with the
    lock message (or, when the first has already finished, the already-holds-files message); the folder holds
    the complete files of one run."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "tc2ssl", "pretrain", *TINY, "train.epochs=3", f"out={out}"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    loser = next(err for rc, err in results if rc == 2)
    assert "in use by another tc2ssl process" in loser or "already holds files" in loser, loser
    assert "Traceback" not in loser
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [0, 1, 2]   # one run's metrics, not two
    assert load_checkpoint(out / CHECKPOINT_NAME)["epoch"] == 2
