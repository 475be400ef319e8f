"""``plugin.umm.*``: the keys of the UMM plug-in (docs/umm.md explains each choice)."""
from __future__ import annotations

from dataclasses import dataclass, field

from tc2ssl.config_fields import bounded, choice


@dataclass
class UMMConfig:
    early: str = field(default="early", metadata={
        "help": "the last backbone layer (tap name) of the frozen early part f_e; early = block2 (small_cnn, "
                "vit_tiny) / layer2 (ResNets)"})
    beta: float = bounded(1.0, 0.0, help="weight of JS(p ‖ uniform) in the inner objective")
    lam: float = bounded(0.1, 0.0, help="weight of ΔR (instance partition) in the outer objective (the authors' "
                                        "code: 1, which measured worse on digits: docs/umm.md)")
    eps2: float = bounded(0.1, 0.0, low_open=True, help="ε² of the outer ΔR (the authors' eps = 0.1 is an ε²)")
    gamma: float = bounded(1.0, 0.0, help="weight of R_c in the outer ΔR (1 = ΔR)")
    inner_lr: float = bounded(1e-2, 0.0, help="α: the inner SGD step of the bi-level problem")
    hypergradient: str = choice("finite_difference", ("finite_difference", "exact", "first_order"),
                                help="finite_difference = DARTS; exact = through the inner step (no BatchNorm)")
    fd_radius: float = bounded(1e-2, 0.0, low_open=True, help="r of the DARTS probe ε = r/‖v‖")
    interleave_every: int = bounded(0, 0, help="0 = post hoc (every step is UMM, f_e frozen for the fit); k > 0 = "
                                               "during pretraining, every k-th epoch is a UMM epoch")
