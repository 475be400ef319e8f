"""Run folders that cannot be clobbered: one writer at a time, no mixing of two runs' files.

* **Lock.** A process that writes a run folder holds ``fcntl.flock`` on ``<out>/.tc2ssl.lock`` (which records its
  pid) for the life of the run, and removes it at the end; a second writer gets a one-line error naming that pid.
  The kernel drops the lock when its process dies, so the file a crashed or killed run leaves behind is a stale
  lock that the next run simply locks again.
* **No clobbering.** A run refuses a folder that holds anything (also a user's own files) unless it is the same
  run resumed (``train.resume=true`` with a checkpoint, or with the same config when no checkpoint was written
  yet) or ``train.overwrite=true``, which moves the old contents into ``<out>/.replaced-<UTC time>/``.
* **Orphan temporary files** of atomic writes cut short by a kill (``.<name>.*.tmp``) are removed once the lock is
  held (no other writer can own them then).
* **Evaluations name their encoder.** ``eval*.json`` records the sha256 of the ``encoder.safetensors`` it measured
  (``pretrained.encoder_sha256``);
  when training writes a new encoder, evaluations of another one are removed (:func:`remove_stale_evaluations`).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tc2ssl.errors import RunFolderError

LOCK_NAME = ".tc2ssl.lock"
REPLACED_PREFIX = ".replaced-"
ORPHAN_TEMP = re.compile(r"^\..+\.[^.]+\.tmp$")   # atomic_write_bytes' mkstemp(prefix=".<name>.", suffix=".tmp")
ENCODER_NAME = "encoder.safetensors"

#: run folders whose lock this process holds (resolved path -> lock file descriptor)
_HELD: dict[str, int] = {}
#: the folder of the last run this process claimed (for the interrupt message)
_LAST_CLAIMED: list[Path] = []

#: errnos of a disk that refuses writes: reported as one line, never as a traceback
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def disk_error(exc: OSError, path: Path | str) -> RunFolderError:
    """The one-line error for a write that the disk refused (full, read-only, no permission)."""
    reason = exc.strerror or os.strerror(exc.errno or 0)
    hint = "free some space" if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else "make it writable"
    return RunFolderError(f"cannot write {path}: {reason}; {hint} or choose another out= (earlier files are kept)")


def _is_launched_child() -> bool:
    """A process started by a multi-process launch (rank > 0): rank 0 owns the run folder."""
    from tc2ssl.distributed import is_secondary_process

    return is_secondary_process() or os.environ.get("LOCAL_RANK", "0") not in ("", "0")


def _lock(out: Path) -> int:
    """Open and flock ``out/.tc2ssl.lock``; retried when the file was replaced between open and flock (its
    holder removes it on release)."""
    path = out / LOCK_NAME
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise disk_error(exc, path) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise RunFolderError(f"{out} is in use by another tc2ssl process (pid {holder}); wait for it to "
                                 "finish or choose another out=") from None
        try:
            same_file = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    except OSError as exc:
        _unlock(out, fd)
        raise disk_error(exc, path) from None
    return fd


def _unlock(out: Path, fd: int) -> None:
    """Remove the lock file while still holding it (no other process can hold this inode), then release."""
    with contextlib.suppress(OSError):
        os.unlink(out / LOCK_NAME)
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def clean_orphan_temp_files(out: Path) -> list[str]:
    """Remove ``.<name>.*.tmp`` left by atomic writes that a kill cut short; returns the names removed."""
    removed = []
    for entry in out.iterdir():
        if entry.is_file() and ORPHAN_TEMP.match(entry.name):
            entry.unlink()
            removed.append(entry.name)
    return removed


def _own_run(out: Path, cfg) -> bool:
    """True when ``out`` holds this run, resumable: a checkpoint (the resume checks its config) or a
    config.yaml equal to ``cfg`` up to the keys a resume may change (a run killed before its first checkpoint)."""
    from tc2ssl import config as config_mod
    from tc2ssl.errors import ConfigError
    from tc2ssl.train.checkpoint import CHECKPOINT_NAME
    from tc2ssl.train.loop import _config_diff, _resolved
    from tc2ssl.yaml_io import read_yaml_mapping

    if (out / CHECKPOINT_NAME).is_file():
        return True
    try:
        recorded = read_yaml_mapping(out / "config.yaml", "run config")
    except ConfigError:
        return False
    return not _config_diff(_resolved(recorded), config_mod.to_dict(cfg))


def prepare_run_folder(out: Path, cfg) -> None:
    """Refuse a folder holding anything but this run's own resumable files, unless ``train.overwrite=true``
    (then the old contents move into ``.replaced-<time>/``)."""
    entries = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME and not p.name.startswith(REPLACED_PREFIX))
    if not entries:
        return
    if cfg.train.resume and _own_run(out, cfg):
        return
    if getattr(cfg.train, "overwrite", False):
        aside = out / f"{REPLACED_PREFIX}{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}"
        aside.mkdir()
        for name in entries:
            os.replace(out / name, aside / name)
        print(f"train.overwrite=true: moved {len(entries)} earlier file(s) of {out} into {aside.name}/",
              file=sys.stderr)
        return
    shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
    raise RunFolderError(f"out={out} already holds files ({shown}) that are not this run's; choose another out=, "
                         "resume that run with train.resume=true (same config), or set train.overwrite=true to move "
                         f"them into {out}/{REPLACED_PREFIX}<time>/")


@contextlib.contextmanager
def claimed_run_folder(cfg=None, out: Path | str | None = None, prepare: bool = True) -> Iterator[Path]:
    """Hold the lock of the run folder (``cfg.out``, or ``out``) for the block, after removing orphan temporary
    files and (``prepare``, with ``cfg``) refusing or moving aside files that are not this run's. Re-entrant
    within a process; a no-op (yielding the folder) in a launched process of rank > 0."""
    out = Path(os.path.expanduser(str(out if out is not None else cfg.out)))
    key = str(out.resolve())
    if key in _HELD or _is_launched_child():
        yield out
        return
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise disk_error(exc, out) from None
    fd = _lock(out)
    _HELD[key] = fd
    try:
        clean_orphan_temp_files(out)
        if prepare and cfg is not None:
            prepare_run_folder(out, cfg)
        _LAST_CLAIMED[:] = [out]
        yield out
    finally:
        del _HELD[key]
        _unlock(out, fd)
        if created:   # a run that failed before writing anything leaves no folder behind
            with contextlib.suppress(OSError):
                out.rmdir()


def interrupted_message() -> str:
    """What a Ctrl-C leaves behind, for the CLI: the checkpoint of the last claimed run folder, if any."""
    from tc2ssl.train.checkpoint import CHECKPOINT_NAME

    if _LAST_CLAIMED and (_LAST_CLAIMED[0] / CHECKPOINT_NAME).is_file():
        return (f"interrupted; the last epoch checkpoint is kept at {_LAST_CLAIMED[0] / CHECKPOINT_NAME} "
                "(resume with train.resume=true)")
    return "interrupted before the first epoch checkpoint was written; there is nothing to resume"


# ---------------------------------------------------------------------------------------------------- evaluations
def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def evaluation_sha256(json_path: Path) -> str | None:
    """The encoder hash an ``eval*.json`` records; None when it records none or cannot be read."""
    try:
        record = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    pretrained = record.get("pretrained") if isinstance(record, dict) else None
    return pretrained.get("encoder_sha256") if isinstance(pretrained, dict) else None


def remove_stale_evaluations(out: Path) -> list[str]:
    """Remove every ``eval*.json`` (with its ``.md``; ``eval_table.md`` goes with ``eval.json``) that does not
    record the sha256 of ``out/encoder.safetensors``; returns the names removed."""
    encoder = out / ENCODER_NAME
    current = file_sha256(encoder) if encoder.is_file() else None
    removed = []
    for json_path in sorted(out.glob("eval*.json")):
        if current is not None and evaluation_sha256(json_path) == current:
            continue
        companions = [json_path, json_path.with_suffix(".md")]
        if json_path.name == "eval.json":
            companions.append(out / "eval_table.md")
        for path in companions:
            if path.exists():
                path.unlink()
                removed.append(path.name)
    return removed
