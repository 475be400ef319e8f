"""Training plug-ins (``plugin.name``): how a batch becomes encoder gradients.

``none`` is the plain two-view baseline; ``tasks`` is the paper's "+T" (tasks + bi-level, no calibration);
``tc2`` is Task Conflict Calibration; ``gessl`` is GeSSL (self-motivated target, multi-batch bi-level update).
"""
from tc2ssl.plugins.base import PLUGINS, Plugin, build_plugin

from tc2ssl.plugins import baseline, gessl, tc2  # noqa: F401,E402

__all__ = ["PLUGINS", "Plugin", "build_plugin"]
