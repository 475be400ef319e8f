"""The auxiliary classification head π of GeSSL: a contrastive classifier over the anchors of one mini-batch task.

A mini-batch of N images is an N-class task whose classes are the images themselves. View 1 of image j is the
anchor (the "cluster centre") of class j; view 2 of image i is a sample of class i. π classifies it against all N
anchors with a temperature-scaled cosine softmax,

    π(x)_j = softmax_j( cos(h(x), h(a_j)) / τ_π ),      j = 1..N,                                       # Eq. (G1)

where h is the embedding π works on and every model uses its own embeddings of the anchors. The roles of the two
views are then swapped, so each image is classified once from each side. The target of view 2 of image i is the
one-hot e_i, and KL(e_i ‖ π(x)) = −log π(x)_i: the σ-measurement of a task is an InfoNCE cross-entropy.

h is either the method's projector (``pi_head=projector``; for SimCLR, π is then exactly the NT-Xent softmax
restricted to the anchors) or a :class:`PiHead` on the backbone's pooled features.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class PiHead(nn.Module):
    """h of π for methods whose projector is not a contrastive embedding: Linear -> ReLU -> Linear on the backbone
    feature [B, in_dim] -> [B, out_dim]. No BatchNorm, so that π of one view never depends on the other views of
    the forward call."""

    def __init__(self, in_dim: int, hidden_dim: int = 128, out_dim: int = 128):
        super().__init__()
        if min(in_dim, hidden_dim, out_dim) < 1:
            raise ValueError(f"PiHead dimensions must be >= 1, got in={in_dim}, hidden={hidden_dim}, out={out_dim}")
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=False), nn.Linear(hidden_dim, out_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() != 2:
            raise ValueError(f"PiHead takes pooled features [B, dim], got shape {tuple(features.shape)}")
        return self.net(features)


def anchor_log_probs(samples: torch.Tensor, anchors: torch.Tensor, temperature: float) -> torch.Tensor:
    """log π of Eq. (G1): row i holds log softmax_j(cos(samples_i, anchors_j)/τ) [N, N]; class of row i is i."""
    if samples.dim() != 2 or samples.shape != anchors.shape:
        raise ValueError(f"samples and anchors must both be [N, d] with the same shape, got "
                         f"{tuple(samples.shape)} and {tuple(anchors.shape)}")
    if not temperature > 0:
        raise ValueError(f"the temperature of π must be > 0, got {temperature!r}")
    logits = F.normalize(samples, dim=-1) @ F.normalize(anchors, dim=-1).T / temperature
    return logits.log_softmax(dim=-1)


def pair_log_probs(embeddings: torch.Tensor, temperature: float) -> torch.Tensor:
    """log π for both directions of a two-view task: embeddings [N, 2, d] -> [2, N, N], where [0] classifies view 2
    against the view-1 anchors and [1] view 1 against the view-2 anchors."""
    if embeddings.dim() != 3 or embeddings.shape[1] != 2:
        raise ValueError(f"π needs two views per image, embeddings [N, 2, d]; got {tuple(embeddings.shape)}")
    if embeddings.shape[0] < 2:
        raise ValueError(f"π needs at least 2 images (classes) per task, got {embeddings.shape[0]}")
    first, second = embeddings[:, 0], embeddings[:, 1]
    return torch.stack([anchor_log_probs(second, first, temperature), anchor_log_probs(first, second, temperature)])
