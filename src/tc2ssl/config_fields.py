"""Field helpers of the typed configuration (``tc2ssl.config``), in a module of their own so that a plug-in's
config block (a dataclass next to its code) can use them without importing ``tc2ssl.config``.

Example::

    @dataclass
    class MyPluginConfig:
        head_dim: int = bounded(8, 1, help="width of the plug-in's head")
        mode: str = choice("fast", ("fast", "exact"))
"""
from __future__ import annotations

from dataclasses import field
from typing import Any


def choice(default: Any, choices: tuple, help: str = "") -> Any:
    """A field whose value must be one of ``choices``."""
    return field(default=default, metadata={"choices": choices, "help": help})


def bounded(default: Any, low: float | None = None, high: float | None = None, help: str = "",
            low_open: bool = False) -> Any:
    """A numeric field with inclusive bounds (``low_open``: the lower bound is exclusive)."""
    return field(default=default, metadata={"low": low, "high": high, "low_open": low_open, "help": help})
