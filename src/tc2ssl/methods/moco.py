"""MoCo v2 (Chen et al., 2020, "Improved Baselines with Momentum Contrastive Learning"; He et al., 2020, MoCo).

Head: lightly's ``MoCoProjectionHead`` (2-layer MLP without BN, v2); its output is the calibration point
(D-TC-07). Keys come from an EMA copy of backbone + projector (``TargetNetwork``), updated once per outer step
in ``after_step`` with momentum cosine-scheduled from ``cfg.momentum`` to 1, never adapted by an inner step.

Baseline (``baseline_loss``): lightly's MoCo v2 recipe, InfoNCE of online queries q = z(view 0) against the keys
k = z′(view 1) with lightly's ``MemoryBankModule`` of ``cfg.memory_bank_size`` past keys as negatives (equal to
``NTXentLoss(memory_bank_size=(size, d))``, tested). The bank is read always and written (keys enqueued) only
when ``ctx.update_state``. ``memory_bank_size=0`` uses the support loss instead.

Support loss (TC²): D-TC-12 wants negatives from within the task, and no loss may update the bank, so the
support loss uses the other images' keys of the task as negatives (MoCo v3's in-batch InfoNCE), averaged over the
ordered view pairs u ≠ w (for two views, MoCo v3's symmetrised ctr(q₁, k₂) + ctr(q₂, k₁), halved). Keys are the
target network's embeddings of ``ctx.views`` passed through ``ctx.calibrate``; without views (stage 1 of TC² works
on fixed embeddings) the stop-gradient of the online ẑ stands in for the keys.

Query loss (D-TC-12): the Brier score of n-way prototype classification against the support anchors, as SimCLR.
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from lightly.models.modules import MoCoProjectionHead
from lightly.models.modules.memory_bank import MemoryBankModule

from tc2ssl.methods.base import METHODS, LossContext, SSLMethod, check_views
from tc2ssl.methods.byol import TargetNetwork, momentum_at, target_embeddings
from tc2ssl.tc2.losses import brier_query_loss


def info_nce(queries: torch.Tensor, keys: torch.Tensor, negatives: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo's InfoNCE (He et al., Eq. 1): mean_i −log softmax([q_i·k_i, q_i·K⁻ᵀ] / τ)₀, all vectors ℓ2-normalised.

    queries, keys: [B, d], row i of each is a positive pair; negatives: [M, d].
    """
    q, k = F.normalize(queries, dim=-1), F.normalize(keys, dim=-1)
    positive = (q * k).sum(dim=-1, keepdim=True)
    logits = torch.cat([positive, q @ F.normalize(negatives, dim=-1).T], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def in_batch_info_nce(queries: torch.Tensor, keys: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with the other rows' keys as negatives (MoCo v3's ctr): mean_i −log softmax_j(q_i·k_j / τ)_i."""
    logits = F.normalize(queries, dim=-1) @ F.normalize(keys, dim=-1).T / temperature
    return F.cross_entropy(logits, torch.arange(queries.shape[0], device=queries.device))


@METHODS.register("moco")
class MoCo(SSLMethod):
    name = "moco"
    cosine_based = True
    min_support_views = 2

    def __init__(self, backbone, cfg):
        super().__init__(backbone, cfg)
        self.projector = MoCoProjectionHead(backbone.feat_dim, cfg.proj_hidden_dim, cfg.proj_output_dim)
        self.target = TargetNetwork(self.backbone, self.projector)
        bank_size = (cfg.memory_bank_size, cfg.proj_output_dim) if cfg.memory_bank_size else 0
        self.memory_bank = MemoryBankModule(size=bank_size, feature_dim_first=False)

    def baseline_loss(self, z: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        check_views(z, 2)
        if self.cfg.memory_bank_size == 0:
            return self.support_loss(z, ctx)
        if z.shape[1] != 2:
            raise ValueError(f"the MoCo baseline takes 2 views per image (query, key), got {z.shape[1]}")
        key_views = None if ctx.views is None else ctx.views[:, 1:]
        keys = F.normalize(target_embeddings(self.target, z[:, 1:], replace(ctx, views=key_views))[:, 0], dim=-1)
        keys, negatives = self.memory_bank(keys, update=ctx.update_state)  # negatives: the bank before this batch
        return info_nce(z[:, 0], keys, negatives.to(z.dtype), self.cfg.temperature)

    def support_loss(self, z: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        check_views(z, 2)
        keys = target_embeddings(self.target, z, ctx)
        v = z.shape[1]
        pairs = [in_batch_info_nce(z[:, u], keys[:, w], self.cfg.temperature)
                 for u in range(v) for w in range(v) if u != w]
        return torch.stack(pairs).mean()

    def query_loss(self, z_query: torch.Tensor, anchors: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        return brier_query_loss(z_query, anchors, self.cfg.temperature)

    def after_step(self, progress: float) -> None:
        self.target.update(self.backbone, self.projector, momentum_at(progress, self.cfg.momentum))
