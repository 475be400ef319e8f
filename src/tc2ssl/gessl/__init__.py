"""GeSSL ("On the Universality of Self-Supervised Learning"): the auxiliary contrastive classifier π, the
self-motivated target, the σ-measurement and universality score, and the per-task bi-level objective that the
``plugin.name=gessl`` plug-in runs. See docs/gessl.md for the equation-to-code map."""
from tc2ssl.gessl.head import PiHead, anchor_log_probs, pair_log_probs
from tc2ssl.gessl.sigma import sigma_from_log_probs, sigma_ssl, sigma_task, universality
from tc2ssl.gessl.target import kl_to_target, onehot_cross_entropy

__all__ = ["PiHead", "anchor_log_probs", "pair_log_probs", "kl_to_target", "onehot_cross_entropy",
           "sigma_from_log_probs", "sigma_ssl", "sigma_task", "universality"]
