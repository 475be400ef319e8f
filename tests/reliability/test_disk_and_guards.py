"""A full or read-only disk, a diverging loss and Ctrl-C: one line each, and the last good checkpoint kept."""
from __future__ import annotations

import errno
import os
import subprocess
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from reliability_helpers import TINY, assert_one_line_error, snapshot

from tc2ssl.errors import TrainingError
from tc2ssl.plugins.baseline import Baseline
from tc2ssl.train import checkpoint as checkpoint_mod
from tc2ssl.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from tc2ssl.train.loop import check_epoch_loss

RESUMABLE = [*TINY, "train.epochs=2", "train.max_steps=2"]     # stops after epoch 0 (2 steps per epoch)
RESUME = [*TINY, "train.epochs=2", "train.resume=true"]


def assert_epoch_0_kept(out: Path) -> None:
    state = load_checkpoint(out / CHECKPOINT_NAME)
    assert state["epoch"] == 0 and state["global_step"] == 2
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("code, reason", [(errno.ENOSPC, "No space left on device"),
                                          (errno.EROFS, "Read-only file system")])
def test_a_refused_checkpoint_write_is_one_line_and_keeps_the_last_checkpoint(code, reason, cli, tmp_path,
                                                                              monkeypatch):
    """Simulated: fsync of the next checkpoint fails as a full / read-only disk would."""
    out = tmp_path / "run"
    assert cli("pretrain", *RESUMABLE, f"out={out}")[0] == 0
    kept = (out / CHECKPOINT_NAME).read_bytes()

    fsync = os.fsync

    def refuse(fd):
        if ".checkpoint.pt." in os.readlink(f"/proc/self/fd/{fd}"):   # the checkpoint's temporary file
            raise OSError(code, os.strerror(code))
        fsync(fd)

    monkeypatch.setattr(checkpoint_mod.os, "fsync", refuse)
    rc, _, err = cli("pretrain", *RESUME, f"out={out}")
    assert_one_line_error(rc, err, f"cannot write {out / CHECKPOINT_NAME}", reason, "earlier files are kept")
    assert (out / CHECKPOINT_NAME).read_bytes() == kept
    assert_epoch_0_kept(out)


@contextmanager
def small_tmpfs(tmp_path: Path, size: str):
    """A real tmpfs of ``size`` mounted under tmp_path (root only); skips the test where mounting is refused."""
    mount_point = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    mount_point.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                                           str(mount_point)], check=False, capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and mount permission)")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False, capture_output=True)


def test_a_really_full_disk_is_one_line_and_loses_nothing(cli, tmp_path):
    with small_tmpfs(tmp_path, "8m") as disk:
        out = disk / "run"
        assert cli("pretrain", *RESUMABLE, f"out={out}")[0] == 0
        before = snapshot(out)
        stat = os.statvfs(disk)
        (disk / "filler").write_bytes(bytes(stat.f_bavail * stat.f_frsize - 2048))   # leave 2 KB
        rc, _, err = cli("pretrain", *RESUME, f"out={out}")
        assert_one_line_error(rc, err, "No space left on device")
        assert snapshot(out) == before


def test_a_really_read_only_disk_is_one_line_and_loses_nothing(cli, tmp_path):
    with small_tmpfs(tmp_path, "8m") as disk:
        out = disk / "run"
        assert cli("pretrain", *RESUMABLE, f"out={out}")[0] == 0
        before = snapshot(out)
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        rc, _, err = cli("pretrain", *RESUME, f"out={out}")
        assert_one_line_error(rc, err, "Read-only file system")
        assert snapshot(out) == before


def loss_at(monkeypatch, epoch: int, value: float) -> None:
    """The baseline reports ``value`` as the loss of every step of ``epoch``."""
    training_step = Baseline.training_step

    def poisoned(self, images, info):
        metrics = training_step(self, images, info)
        if info.epoch == epoch:
            metrics["loss"] = torch.tensor(value)
        return metrics

    monkeypatch.setattr(Baseline, "training_step", poisoned)


def test_an_exploding_epoch_stops_the_run_and_keeps_the_last_good_checkpoint(cli, tmp_path, monkeypatch):
    out = tmp_path / "run"
    loss_at(monkeypatch, epoch=1, value=2e25)
    rc, _, err = cli("pretrain", *TINY, "train.epochs=3", f"out={out}")
    assert_one_line_error(rc, err, "loss exploded at epoch 1", "2e+25",
                          f"the last good checkpoint (epoch 0) is kept at {out / CHECKPOINT_NAME}")
    assert_epoch_0_kept(out)
    assert torch.isfinite(torch.tensor(load_checkpoint(out / CHECKPOINT_NAME)["best_epoch_loss"]))


def test_a_non_finite_loss_is_one_line_and_keeps_the_last_checkpoint(cli, tmp_path, monkeypatch):
    out = tmp_path / "run"
    loss_at(monkeypatch, epoch=1, value=float("inf"))
    rc, _, err = cli("pretrain", *TINY, "train.epochs=3", f"out={out}")
    assert_one_line_error(rc, err, "non-finite (inf) at epoch 1", "epoch 0) is kept")
    assert_epoch_0_kept(out)


@pytest.mark.parametrize("best, loss, exploding", [
    (4.0, 44.0, False), (4.0, 44.1, True),         # positive losses: 10 x best above best (11 x best)
    (0.05, 10.05, False), (0.05, 10.06, True),     # small losses: 10 above best
    (-0.9, 9.1, False), (-0.9, 9.2, True),         # negative losses (BYOL, SimSiam): 10 above best
    (None, 1e30, False),                           # the first epoch has nothing to compare with
])
def test_the_explosion_rule(best, loss, exploding, tmp_path):
    if exploding:
        with pytest.raises(TrainingError, match="exploded"):
            check_epoch_loss(loss, best, 3, tmp_path / CHECKPOINT_NAME)
    else:
        assert check_epoch_loss(loss, best, 3, tmp_path / CHECKPOINT_NAME) == (loss if best is None
                                                                               else min(best, loss))


def interrupt_at(monkeypatch, epoch: int) -> None:
    training_step = Baseline.training_step

    def interrupted(self, images, info):
        if info.epoch == epoch:
            raise KeyboardInterrupt
        return training_step(self, images, info)

    monkeypatch.setattr(Baseline, "training_step", interrupted)


def test_ctrl_c_before_the_first_checkpoint_says_there_is_none(cli, tmp_path, monkeypatch):
    interrupt_at(monkeypatch, epoch=0)
    rc, _, err = cli("pretrain", *TINY, f"out={tmp_path / 'run'}")
    assert rc == 130 and "before the first epoch checkpoint was written" in err
    assert "kept" not in err and not (tmp_path / "run" / CHECKPOINT_NAME).exists()


def test_ctrl_c_after_a_checkpoint_names_it(cli, tmp_path, monkeypatch):
    interrupt_at(monkeypatch, epoch=1)
    out = tmp_path / "run"
    rc, _, err = cli("pretrain", *TINY, "train.epochs=2", f"out={out}")
    assert rc == 130 and f"checkpoint is kept at {out / CHECKPOINT_NAME}" in err
    assert_epoch_0_kept(out)
