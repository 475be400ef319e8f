"""Section timing of a training step, for ``benchmarks/throughput.py``.

A plug-in wraps each part of its step in ``section(self.timer, name)``. With no timer set (training) that is a
``nullcontext`` and costs nothing; with a :class:`SectionTimer` the wall-clock seconds of every section are added up,
synchronising the device at each boundary so that asynchronous CUDA work is charged to the section that queued it.
"""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Callable

import torch


class SectionTimer:
    """Accumulates seconds per section name; ``reset()`` between steps.

    ``clock``: ``time.perf_counter`` (wall time, default) or e.g. ``time.process_time`` (CPU time of the process).
    """

    def __init__(self, device: torch.device | str = "cpu", clock: Callable[[], float] = time.perf_counter):
        self.device = torch.device(device)
        self.clock = clock
        self.seconds: dict[str, float] = defaultdict(float)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def __call__(self, name: str):
        self._sync()
        start = self.clock()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] += self.clock() - start

    def reset(self) -> dict[str, float]:
        """The seconds recorded since the last reset, and a fresh start."""
        done, self.seconds = dict(self.seconds), defaultdict(float)
        return done


def section(timer: SectionTimer | None, name: str):
    """``timer(name)`` when a timer is set, else a no-op context."""
    return contextlib.nullcontext() if timer is None else timer(name)
