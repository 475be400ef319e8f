"""Training plug-ins (``plugin.name``): how a batch becomes encoder gradients.

``none`` is the plain two-view baseline; ``tasks`` is the generic bi-level task step (the paper's "+T": tasks +
bi-level, no calibration); ``tc2`` is Task Conflict Calibration (the task step plus its calibrator); ``gessl`` is
GeSSL (self-motivated target, multi-batch bi-level update, docs/gessl.md); ``umm`` fine-tunes the late layers of a
pretrained encoder (UMM, docs/umm.md). The contract every plug-in implements is
``tc2ssl.plugins.base.Plugin``.
"""
from tc2ssl.plugins.base import PLUGINS, Plugin, build_plugin

from tc2ssl.plugins import baseline, bilevel, gessl, tc2, tc2_controls, umm  # noqa: F401,E402

__all__ = ["PLUGINS", "Plugin", "build_plugin"]
