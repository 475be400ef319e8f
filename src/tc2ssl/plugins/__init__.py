"""Training plug-ins (``plugin.name``): how a batch becomes encoder gradients.

``none`` is the plain two-view baseline; ``tasks`` is the generic bi-level task step (the paper's "+T": tasks +
bi-level, no calibration); ``tc2`` is Task Conflict Calibration (the task step plus its calibrator); ``umm`` fine-tunes
the late layers of a pretrained encoder (UMM, docs/umm.md). The contract every plug-in implements is
``tc2ssl.plugins.base.Plugin``.
"""
from tc2ssl.plugins.base import PLUGINS, Plugin, build_plugin

from tc2ssl.plugins import baseline, bilevel, tc2, umm  # noqa: F401,E402

__all__ = ["PLUGINS", "Plugin", "build_plugin"]
