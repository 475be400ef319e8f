"""Training plug-ins (``plugin.name``): how a batch becomes encoder gradients.

``none`` is the plain two-view baseline; ``tasks`` is the paper's "+T" (tasks + bi-level, no calibration);
``tc2`` is Task Conflict Calibration; ``umm`` fine-tunes the late layers of a pretrained encoder (UMM).
"""
from tc2ssl.plugins.base import PLUGINS, Plugin, build_plugin

from tc2ssl.plugins import baseline, tc2, umm  # noqa: F401,E402

__all__ = ["PLUGINS", "Plugin", "build_plugin"]
