"""SSL methods, one file each, registered by name (``method.name``)."""
from tc2ssl.methods.base import METHODS, SSLMethod, build_method

# one import per method file: importing registers it
from tc2ssl.methods import simclr  # noqa: F401,E402
from tc2ssl.methods import moco  # noqa: F401,E402
from tc2ssl.methods import byol  # noqa: F401,E402
from tc2ssl.methods import simsiam  # noqa: F401,E402
from tc2ssl.methods import barlow_twins  # noqa: F401,E402
from tc2ssl.methods import swav  # noqa: F401,E402
from tc2ssl.methods import vicreg  # noqa: F401,E402
from tc2ssl.methods import mae  # noqa: F401,E402

__all__ = ["METHODS", "SSLMethod", "build_method"]
