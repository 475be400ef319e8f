"""``plugin.gessl.*``: the keys of the GeSSL plug-in (its own config block), with the recommended defaults.

Kept free of torch so that ``tc2ssl.config`` can import it without loading the plug-in."""
from __future__ import annotations

from dataclasses import dataclass

from tc2ssl.config_fields import bounded, choice


@dataclass
class GeSSLConfig:
    n_batches: int = bounded(2, 1, help="M: mini-batch tasks per outer step; the loop's batch is split into M "
                                        "tasks of batch/M images (M = 1: no collaborative update)")
    inner_steps: int = bounded(1, 1, help="K_in: SGD steps of the method's loss on each task (inner level)")
    lookahead_steps: int = bounded(1, 0, help="Λ: further SSL steps from the task-adapted model to the target ψ "
                                              "(0 makes the outer loss identically zero)")
    inner_lr: float = bounded(0.05, 0.0, help="α: step size of the inner steps")
    lookahead_lr: float = bounded(0.0, 0.0, help="step size of the look-ahead steps; 0 = inner_lr")
    hypergradient: str = choice("aid_fd", ("aid_fd", "implicit_cg", "exact", "first_order"),
                                help="aid_fd: unrolled finite differences; implicit_cg: iMAML-style CG; exact: "
                                     "autograd through the unroll (small models); first_order: FOMAML")
    fd_radius: float = bounded(1e-2, 0.0, low_open=True, help="r: the finite-difference probes sit at θ ± (r/‖v‖)v")
    cg_steps: int = bounded(5, 1, help="conjugate-gradient iterations of implicit_cg")
    prox_lambda: float = bounded(1.0, 0.0, low_open=True, help="λ of implicit_cg's proximal inner problem")
    tau_pi: float = bounded(0.0, 0.0, help="temperature of π; 0 = method.temperature")
    target: str = choice("lookahead", ("lookahead", "onehot"),
                         help="outer loss: KL(π_ψ ‖ π_φ) to the look-ahead model, or KL(one-hot ‖ π_φ)")
    outer_data: str = choice("same_views", ("same_views", "fresh_views"),
                             help="views of the outer loss: the task's own, or two new views of its images")
    outer_ssl_weight: float = bounded(0.0, 0.0, help="w: add w·L_ssl(φ) (the method's own loss at the adapted "
                                                     "model) to the outer loss; 0 = the KL alone, as the sources "
                                                     "describe (docs/gessl.md)")
    pi_head: str = choice("auto", ("auto", "projector", "separate"),
                          help="π's embedding: the method's projector, or a separate head on backbone features; "
                               "auto = projector for simclr, separate otherwise")
    pi_hidden_dim: int = bounded(128, 1, help="hidden width of the separate π head")
    pi_dim: int = bounded(128, 1, help="output width of the separate π head")
