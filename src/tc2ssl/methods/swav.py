"""SwAV (Caron et al., 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments").

Heads: lightly's ``SwaVProjectionHead``, whose output is the calibration point (D-TC-07), and
``SwaVPrototypes`` (``cfg.n_prototypes`` prototypes), applied *after* calibration to n(ẑ) with the functional
parameters ``ctx.params``. The prototypes are ℓ2-normalised at construction and after every outer step
(``after_step``, lightly's ``SwaVPrototypes.normalize``). Multi-crop: ``data.augment=swav data.local_views=6``
(the baseline; codes from the two global crops only, :meth:`SwAV.baseline_loss`). Not implemented: the feature
queue and the first-epoch freezing of the prototypes (small-batch refinements of the paper).

Loss (SwAV Eq. 3, D-SSL-02): swapped prediction, lightly's ``SwaVLoss`` with temperature ``cfg.temperature``
(SwAV uses 0.1; set ``method.temperature=0.1``) and 3 Sinkhorn iterations at ε = 0.05; for v views it is the
mean over the ordered view pairs (u, w ≠ u) of the cross-entropy between softmax(scores_u/τ) and the Sinkhorn
codes of view w.

Query loss (D-TC-12): the Brier score between the query's prototype softmax p = softmax(scores/τ) and the
Sinkhorn codes q of its support anchor (c_i = n(mean_u ẑ_{i,u}), codes over the task's n anchors), taken as the
expected Brier score of a label drawn from q: E_{k∼q}‖p − e_k‖² = ‖p‖² − 2⟨p, q⟩ + 1, the squared-error analogue
of SwAV's cross-entropy E_{k∼q}[−log p_k]. Unlike ‖p − q‖², it keeps SwAV's equipartition defence: a collapsed
encoder gets uniform codes and scores ≥ 1 − 1/K, while matching sharp codes scores near 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.loss import SwaVLoss
from lightly.loss.swav_loss import sinkhorn
from lightly.models.modules import SwaVProjectionHead, SwaVPrototypes

from tc2ssl.methods.base import METHODS, LossContext, SSLMethod, check_anchors, check_views


def expected_brier(probs: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """E_{k∼q}‖p − e_k‖² = Σ_k q_k‖p − e_k‖² = (Σ_k q_k)(‖p‖² + 1) − 2⟨p, q⟩, row-wise over the last dimension."""
    return codes.sum(-1) * (probs.square().sum(-1) + 1) - 2 * (probs * codes).sum(-1)


@METHODS.register("swav")
class SwAV(SSLMethod):
    name = "swav"
    cosine_based = True
    min_support_views = 2

    def __init__(self, backbone, cfg):
        super().__init__(backbone, cfg)
        self.projector = SwaVProjectionHead(backbone.feat_dim, cfg.proj_hidden_dim, cfg.proj_output_dim)
        self.prototypes = SwaVPrototypes(cfg.proj_output_dim, cfg.n_prototypes)
        with torch.no_grad():
            self.prototypes.normalize()
        self.criterion = SwaVLoss(temperature=cfg.temperature)

    def prototype_scores(self, z: torch.Tensor, params: dict | None) -> torch.Tensor:
        """Scores of n(ẑ) against the prototypes [..., K], with the functional prototype parameters when given."""
        flat = F.normalize(z.reshape(-1, z.shape[-1]), dim=-1)
        return self.call_child("prototypes", flat, params).view(*z.shape[:-1], -1)

    def support_loss(self, z: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        check_views(z, 2)
        scores = self.prototype_scores(z, ctx.params).float()  # Sinkhorn's exp(s/ε) overflows in half precision
        return self.criterion([scores[:, u] for u in range(z.shape[1])], []).squeeze(0)

    def baseline_loss(self, z: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        """The plain baseline's loss: with more than two views (multi-crop, ``data.local_views``), views 0 and 1 are
        the global crops whose Sinkhorn codes every other view predicts, and the local crops get no codes (SwAV
        §3.2, lightly's high/low-resolution outputs); with two views, the support loss."""
        if z.shape[1] <= 2:
            return self.support_loss(z, ctx)
        scores = self.prototype_scores(z, ctx.params).float()
        return self.criterion([scores[:, u] for u in range(2)],
                              [scores[:, u] for u in range(2, z.shape[1])]).squeeze(0)

    def query_loss(self, z_query: torch.Tensor, anchors: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        check_anchors(anchors, z_query)
        with torch.no_grad():
            codes = sinkhorn(self.prototype_scores(anchors, ctx.params).float(),           # [n, K]
                             iterations=self.criterion.sinkhorn_iterations, epsilon=self.criterion.sinkhorn_epsilon)
        probs = (self.prototype_scores(z_query, ctx.params) / self.cfg.temperature).softmax(dim=-1)  # [n, q, K]
        return expected_brier(probs, codes[:, None]).mean()

    def after_step(self, progress: float) -> None:
        with torch.no_grad():
            self.prototypes.normalize()
