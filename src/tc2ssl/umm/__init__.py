"""UMM, the Undoing Memorization Mechanism (Qiang, Song et al., "On the Generalization and Causal Explanation in
Self-Supervised Learning"): fine-tune the late layers of a pretrained SSL encoder, early layers frozen, by a
bi-level objective that maximises the coding rate reduction of the last-layer output. See docs/umm.md."""
from tc2ssl.umm.alignment import alignment_objective, kmeans, ridge_alignment
from tc2ssl.umm.objectives import (gradient_norm_distribution, inner_objective, js_divergence, js_to_uniform,
                                   outer_objective)

__all__ = ["alignment_objective", "gradient_norm_distribution", "inner_objective", "js_divergence", "js_to_uniform",
           "kmeans", "outer_objective", "ridge_alignment"]
