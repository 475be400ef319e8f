"""Helpers of the reliability suite: run the CLI in-process and check its one-line errors; tiny runs."""
from __future__ import annotations

from pathlib import Path

from tc2ssl.cli import main

# digits, small_cnn_tiny, 2 steps per epoch: a complete pretraining in about a second
TINY = ["model.backbone=small_cnn_tiny", "train.batch_size=16", "data.max_train=32", "train.epochs=1",
        "train.progress=false", "eval.enabled=false"]
# the same with a quick evaluation
TINY_EVAL = [*TINY[:-1], "eval.enabled=true", "eval.probe_cs=[1.0]", "eval.probe_max_iter=50", "eval.max_train=200",
             "eval.random_init_baseline=false"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``tc2ssl ARGV`` run in this process."""
    capsys.readouterr()
    rc = main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def assert_one_line_error(rc: int, err: str, *fragments: str) -> str:
    """Exit status 2, no traceback, and exactly one error line ``tc2ssl: error: ...`` (the last line; progress
    lines such as "resuming ..." may precede it) holding every fragment; returns the line."""
    assert rc == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("tc2ssl: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes): to assert that nothing was lost or changed."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
