"""Few-shot evaluation of frozen features: N-way K-shot episodes (Vinyals et al. 2016; the protocol of GeSSL's and
"Rethinking Few-Shot Image Classification" (Tian et al. 2020) evaluations).

An episode draws ``n_way`` classes from the test split's classes that hold at least ``k_shot + n_query`` images,
then ``k_shot`` support and ``n_query`` query images of each, without overlap. Two heads classify the queries from
the support set alone, on ℓ2-normalised features:

- ``prototype``: the nearest class mean (Snell et al. 2017, "Prototypical Networks"), Euclidean distance;
- ``logistic``: an L2-regularised logistic regression (C = 1) fitted on the support features (Tian et al. 2020).

The score is the mean query accuracy over ``episodes`` episodes with its 95% confidence interval
1.96 · std / √episodes (std over episodes, population form, as the few-shot literature's evaluation code).
With ``groups`` (e.g. PACS domains), episodes are also drawn within each group: cross-domain few-shot, where the
domains the encoder never saw in pretraining are the cross-domain ones.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F

HEADS = ("prototype", "logistic")


def mean_confidence_interval(accuracies) -> tuple[float, float]:
    """(mean, 95% half-width 1.96 · std / √n) of per-episode accuracies (population std)."""
    values = np.asarray(accuracies, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"accuracies must be a non-empty 1-D sequence, got shape {values.shape}")
    return float(values.mean()), float(1.96 * values.std() / math.sqrt(values.size))


def eligible_classes(labels: torch.Tensor, per_class: int) -> list[int]:
    """Classes with at least ``per_class`` images."""
    classes, counts = torch.unique(labels, return_counts=True)
    return [int(c) for c, n in zip(classes, counts) if n >= per_class]


def sample_episode(labels: torch.Tensor, n_way: int, k_shot: int, n_query: int, generator: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One episode: (support index [n_way·k_shot], support episode-labels 0..n_way-1, query index
    [n_way·n_query], query episode-labels), indices into ``labels``; support and query never share an image."""
    if n_way < 2 or k_shot < 1 or n_query < 1:
        raise ValueError(f"an episode needs n_way >= 2, k_shot >= 1, n_query >= 1; got {n_way}, {k_shot}, {n_query}")
    classes = eligible_classes(labels, k_shot + n_query)
    if len(classes) < n_way:
        raise ValueError(f"{n_way}-way {k_shot}-shot episodes with {n_query} queries need {n_way} classes of at "
                         f"least {k_shot + n_query} images; only {len(classes)} have that many")
    chosen = torch.tensor(classes)[torch.randperm(len(classes), generator=generator)[:n_way]]
    support, query = [], []
    for members in (torch.nonzero(labels == c).flatten() for c in chosen.tolist()):
        picked = members[torch.randperm(members.numel(), generator=generator)[:k_shot + n_query]]
        support.append(picked[:k_shot])
        query.append(picked[k_shot:])
    way = torch.arange(n_way)
    return (torch.cat(support), way.repeat_interleave(k_shot), torch.cat(query), way.repeat_interleave(n_query))


def prototype_predict(support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Nearest class mean (Euclidean) of each query; labels 0..n_way-1."""
    n_way = int(support_labels.max()) + 1
    prototypes = torch.zeros(n_way, support.shape[1], dtype=support.dtype).index_add_(0, support_labels, support)
    prototypes /= torch.bincount(support_labels, minlength=n_way).unsqueeze(1).to(support.dtype)
    return torch.cdist(query, prototypes).argmin(dim=1)


def logistic_predict(support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """An L2-regularised logistic regression (C = 1, L-BFGS) fitted on the support set."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=1.0, max_iter=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(support.double().numpy(), support_labels.numpy())
    return torch.from_numpy(model.predict(query.double().numpy()).astype(np.int64))


_PREDICT = {"prototype": prototype_predict, "logistic": logistic_predict}


def few_shot_accuracies(features: torch.Tensor, labels: torch.Tensor, n_way: int, k_shot: int, n_query: int,
                        episodes: int, heads=HEADS, seed: int = 0) -> dict[str, list[float]]:
    """Per-episode query accuracy of every head; all heads see the same episodes."""
    if features.dim() != 2 or labels.shape != (features.shape[0],):
        raise ValueError(f"features must be [N, D] and labels [N], got {tuple(features.shape)} and "
                         f"{tuple(labels.shape)}")
    unknown = [h for h in heads if h not in _PREDICT]
    if unknown:
        raise ValueError(f"unknown few-shot head(s) {unknown}; valid heads: {', '.join(HEADS)}")
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    features = F.normalize(features.double(), dim=1)
    labels = labels.long()
    generator = torch.Generator().manual_seed(seed)
    accuracies: dict[str, list[float]] = {head: [] for head in heads}
    for _ in range(episodes):
        s_idx, s_lab, q_idx, q_lab = sample_episode(labels, n_way, k_shot, n_query, generator)
        for head in heads:
            predicted = _PREDICT[head](features[s_idx], s_lab, features[q_idx])
            accuracies[head].append(float((predicted == q_lab).double().mean()))
    return accuracies


def _settings(features, labels, n_way, shots, n_query, episodes, heads, seed) -> dict:
    out = {}
    for k_shot in shots:
        per_head = few_shot_accuracies(features, labels, n_way, k_shot, n_query, episodes, heads, seed)
        out[f"{n_way}way_{k_shot}shot"] = {head: dict(zip(("mean", "ci95"), mean_confidence_interval(acc)),
                                                      episodes=len(acc))
                                           for head, acc in per_head.items()}
    return out


def few_shot_eval(features: torch.Tensor, labels: torch.Tensor, n_way: int = 5, shots=(1, 5), n_query: int = 15,
                  episodes: int = 600, heads=HEADS, seed: int = 0, groups: torch.Tensor | None = None,
                  group_names: list[str] | None = None) -> dict:
    """``{"<n>way_<k>shot": {head: {"mean", "ci95", "episodes"}}}`` over ``episodes`` episodes per setting, and
    with ``groups`` the same per group under ``"groups"`` (a group with too few classes is left out, with the
    reason under ``"skipped"``)."""
    options = (n_way, shots, n_query, episodes, heads, seed)
    result = {"n_way": n_way, "shots": list(shots), "n_query": n_query, "episodes": episodes,
              "chance": 1.0 / n_way, **_settings(features, labels, *options)}
    if groups is not None:
        result["groups"], result["skipped"] = {}, {}
        for group_id in torch.unique(groups).tolist():
            name = group_names[group_id] if group_names else str(group_id)
            member = groups == group_id
            try:
                result["groups"][name] = _settings(features[member], labels[member], *options)
            except ValueError as exc:
                result["skipped"][name] = str(exc)
    return result
