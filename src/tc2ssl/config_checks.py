"""The numeric and cross-field checks of a config, run by :func:`tc2ssl.config.validate` before any work.

Rules (each violation is a :class:`ConfigError` naming the key, the value and the allowed range):

* every float in the config, also inside lists and mappings (``eval.probe_cs``), is finite: NaN and ±inf are
  refused everywhere, whatever the field's bounds say (a NaN compares false with every bound);
* every integer lies in [-2^63, 2^63); ``seed`` in [0, 2^63);
* :data:`SANE_RANGES`: fields whose declared bounds admit values that only ever mean a typo (a temperature of
  1e-30 overflows every exponent, a learning rate of 1e6 diverges at step 0);
* the shapes a step needs: at least 2 images per task for the task plug-ins (``train.batch_size // plugin.n_tasks``;
  a contrastive or batch-normalised loss needs 2 images), and at least 2 images in each part of the baseline's
  conflict diagnostic (``train.batch_size // plugin.conflict_tasks`` when ``plugin.conflict_every`` > 0);
* the evaluation's sizes: ``eval.max_train`` 0 (all) or at least 2 (a probe needs two classes).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from tc2ssl.errors import ConfigError

INT64_LIMIT = 2 ** 63

#: key -> (lowest, highest) allowed, both inclusive; on top of the field's own bounds
SANE_RANGES: dict[str, tuple[float, float]] = {
    "seed": (0, INT64_LIMIT - 1),
    "method.temperature": (1e-3, 1e3),
    "eval.knn_temperature": (1e-3, 1e3),
    "train.lr": (0.0, 10.0),
    "train.epochs": (1, 1_000_000),
    "train.batch_size": (2, 1_000_000),
    "train.warmup_epochs": (0.0, 1_000_000.0),
    "plugin.stage1_adam_lr": (0.0, 10.0),
    "eval.probe_max_iter": (1, 1_000_000),
    "eval.batch_size": (1, 1_000_000),
}

#: plug-ins whose batch is partitioned into ``plugin.n_tasks`` tasks, for plug-in classes without ``uses_tasks``
TASK_PLUGINS = ("tc2", "tasks")


def _walk(value: Any, key: str):
    """(key, number) for every int/float leaf under ``value`` (dataclasses, lists, tuples, dicts)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _walk(getattr(value, f.name), f"{key}.{f.name}" if key else f.name)
    elif isinstance(value, dict):
        for name, item in value.items():
            yield from _walk(item, f"{key}.{name}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _walk(item, f"{key}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield key, value


def _bound(value: float) -> str:
    return "2^63 - 1" if value == INT64_LIMIT - 1 else f"{value:g}"


def check_numbers(cfg) -> None:
    """Every number finite and within the int64 range and :data:`SANE_RANGES`."""
    for key, value in _walk(cfg, ""):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}={value} is not a finite number; give a finite value")
        if key in SANE_RANGES:
            low, high = SANE_RANGES[key]
            if not low <= value <= high:
                raise ConfigError(f"{key}={value!r} is out of range; it must lie in [{_bound(low)}, {_bound(high)}]")
        if isinstance(value, int) and not -INT64_LIMIT <= value < INT64_LIMIT:
            raise ConfigError(f"{key}={value} is out of range; it must lie in [-2^63, 2^63)")


def check_cross_fields(cfg) -> None:
    """The constraints between fields that a training step or the evaluation relies on."""
    from tc2ssl.plugins import PLUGINS

    batch, plugin = cfg.train.batch_size, cfg.plugin
    plugin_class = PLUGINS.get(plugin.name)
    if getattr(plugin_class, "uses_tasks", plugin.name in TASK_PLUGINS) and batch // plugin.n_tasks < 2:
        raise ConfigError(f"train.batch_size={batch} with plugin.n_tasks={plugin.n_tasks} leaves "
                          f"{batch // plugin.n_tasks} image(s) per task; every task needs at least 2: use "
                          f"train.batch_size >= {2 * plugin.n_tasks} or fewer tasks")
    if plugin.name == "none" and plugin.conflict_every and batch // plugin.conflict_tasks < 2:
        raise ConfigError(f"train.batch_size={batch} splits into plugin.conflict_tasks={plugin.conflict_tasks} "
                          f"parts of {batch // plugin.conflict_tasks} image(s) for the conflict diagnostic, which "
                          f"needs at least 2 per part: use train.batch_size >= {2 * plugin.conflict_tasks} or "
                          "plugin.conflict_every=0")
    if cfg.eval.max_train == 1:
        raise ConfigError("eval.max_train=1 cannot hold the 2 classes a linear probe needs; use 0 (all) or >= 2")


def check_limits(cfg) -> None:
    """:func:`check_numbers` and :func:`check_cross_fields`; expands ``~`` in ``out``, ``data.root``, ``eval.root``."""
    import os

    check_numbers(cfg)
    check_cross_fields(cfg)
    cfg.out = os.path.expanduser(cfg.out)
    for section in (cfg.data, cfg.eval):
        if section.root:
            section.root = os.path.expanduser(section.root)
