"""What a pretraining run shows while it trains, beside ``metrics.jsonl``: Lightning Fabric loggers and an online
linear probe and kNN monitor on detached features (solo-learn style).

- ``train.loggers``: any of ``csv`` (``<out>/csv/version_N/metrics.csv``), ``tensorboard`` (event files in
  ``<out>/tensorboard/version_N``) and ``wandb`` (when the ``wandb`` package is installed). Every step record of
  ``metrics.jsonl`` goes to them as ``step/<name>``, every epoch record as ``epoch/<name>``; the run's config as
  hyperparameters (not to the CSV logger, which has none: the run folder's config.yaml holds it).
- ``train.online_probe=true``: after every optimiser step, the backbone's pooled features of the step's (unaugmented)
  training images, computed in eval mode without autograd, train a linear classifier on the standardised features
  with its own Adam optimiser (lr 0.01). The encoder never sees a gradient from it. Logged per
  epoch: ``online_probe_train_acc`` (the probe's accuracy on each batch before its update, averaged) and
  ``online_probe_test_acc`` (on a fixed subset of the test split).
- ``train.knn_monitor_every=E`` (0 = off): every E epochs, weighted kNN (``eval.knn_k``, ``eval.knn_temperature``)
  from a fixed subset of training features to a fixed subset of test features: ``knn_monitor_acc``.

Both subsets hold at most ``train.monitor_images`` images, drawn once from the run seed; without a labelled test
split, the training subset is halved into bank and queries. The monitor's extra forward passes run in eval mode
(BatchNorm running statistics untouched) and draw no random numbers, so a run's weights are the same with and
without it. Its state is not checkpointed: after a resume the probe starts again.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from tc2ssl.errors import ConfigError

LOGGERS = ("csv", "tensorboard", "wandb")
PROBE_LR = 1e-2


def check_monitor_config(train_cfg) -> None:
    """Reject unknown ``train.loggers`` names (before any work starts)."""
    unknown = [name for name in train_cfg.loggers if name not in LOGGERS]
    if unknown:
        raise ConfigError(f"train.loggers has unknown logger(s) {unknown}; valid values: {', '.join(LOGGERS)}")


def build_loggers(names, out_dir: Path) -> list:
    """Fabric loggers for ``names`` (see module doc), writing under ``out_dir``."""
    loggers = []
    for name in dict.fromkeys(names):
        if name == "csv":
            from lightning.fabric.loggers import CSVLogger

            loggers.append(CSVLogger(root_dir=str(out_dir), name="csv"))
        elif name == "tensorboard":
            from lightning.fabric.loggers import TensorBoardLogger

            try:
                loggers.append(TensorBoardLogger(root_dir=str(out_dir), name="tensorboard", default_hp_metric=False))
            except ModuleNotFoundError:
                raise ConfigError("train.loggers=[tensorboard] needs tensorboard: pip install 'tc2ssl[tensorboard]'"
                                  ) from None
        elif name == "wandb":
            try:
                import wandb  # noqa: F401
            except ImportError:
                raise ConfigError("train.loggers=[wandb] needs wandb: pip install 'tc2ssl[wandb]'") from None
            from lightning.pytorch.loggers import WandbLogger

            loggers.append(WandbLogger(save_dir=str(out_dir), project="tc2ssl"))
        else:
            raise ConfigError(f"unknown logger {name!r}; valid values: {', '.join(LOGGERS)}")
    return loggers


def standardise(features: torch.Tensor, reference: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``features`` [N, D] standardised per dimension with the mean and std of ``reference`` [M, D]."""
    return (features - reference.mean(dim=0)) / (reference.std(dim=0, unbiased=False) + eps)


class OnlineProbe(nn.Module):
    """A linear classifier on standardised detached features, trained step by step by its own optimiser.

    Training standardises a batch with its own statistics; testing with those of a reference set of training
    features from the same encoder (the encoder drifts, so running statistics, as a BatchNorm keeps, would lag)."""

    def __init__(self, feat_dim: int, n_classes: int, lr: float = PROBE_LR):
        super().__init__()
        self.linear = nn.Linear(feat_dim, n_classes)
        self.optimizer = torch.optim.Adam(self.linear.parameters(), lr=lr)

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> float:
        """One step of cross-entropy on ``features`` [N, D] (detached); returns the accuracy before the step."""
        features = features.detach()
        with torch.enable_grad():
            logits = self.linear(standardise(features, features))
            loss = F.cross_entropy(logits, labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return float((logits.argmax(dim=1) == labels).double().mean())

    @torch.no_grad()
    def accuracy(self, features: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor) -> float:
        """Accuracy on ``features`` standardised with the statistics of the training features ``reference``."""
        logits = self.linear(standardise(features, reference))
        return float((logits.argmax(dim=1) == labels).double().mean())


class TrainingMonitor:
    """Loggers plus the online probe and kNN monitor of one run (see module doc); inactive parts cost nothing."""

    def __init__(self, cfg, backbone: nn.Module, data, out_dir: Path, device: torch.device, active: bool = True):
        """``active=False`` (a process of rank > 0): nothing is logged or probed."""
        train_cfg = cfg.train
        check_monitor_config(train_cfg)
        self.loggers = build_loggers(train_cfg.loggers, Path(out_dir)) if active else []
        self.backbone, self.device, self.eval_cfg = backbone, device, cfg.eval
        self.knn_every = train_cfg.knn_monitor_every if active else 0
        self.probe: OnlineProbe | None = None
        self.train_images = data.train.images
        self.train_labels = data.train.labels
        online_probe = train_cfg.online_probe and active
        if (online_probe or self.knn_every) and self.train_labels is None:
            raise ConfigError(f"train.online_probe / train.knn_monitor_every need a labelled training set; "
                              f"{cfg.data.name!r} has no labels (turn them off)")
        self._epoch_accuracies: list[float] = []
        if online_probe or self.knn_every:
            self._fixed_subsets(data, train_cfg.monitor_images, cfg.seed)
        if online_probe:
            n_classes = int(max(self.train_labels.max(), self.query_labels.max())) + 1
            self.probe = OnlineProbe(backbone.feat_dim, n_classes)
        from lightning.fabric.loggers import CSVLogger

        from tc2ssl.config import to_dict

        for logger in self.loggers:
            if not isinstance(logger, CSVLogger):      # Fabric's CSV logger has no hyperparameters (config.yaml has)
                logger.log_hyperparams(to_dict(cfg))

    def _fixed_subsets(self, data, max_images: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        train_pick = torch.randperm(len(data.train), generator=gen)[:max_images]
        test = data.test
        if test is not None and test.labels is not None:
            test_pick = torch.randperm(len(test), generator=gen)[:max_images]
            self.bank_images, self.bank_labels = data.train.images[train_pick], data.train.labels[train_pick]
            self.query_images, self.query_labels = test.images[test_pick], test.labels[test_pick]
        else:
            half = max(1, len(train_pick) // 2)
            bank, query = train_pick[:half], train_pick[half:]
            self.bank_images, self.bank_labels = data.train.images[bank], data.train.labels[bank]
            self.query_images, self.query_labels = data.train.images[query], data.train.labels[query]

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        from tc2ssl.eval.features import extract_features

        return extract_features(self.backbone, images, self.eval_cfg.batch_size, self.device)

    def on_step(self, batch_index: torch.Tensor) -> None:
        """Train the online probe on the features of ``train_images[batch_index]`` (after the optimiser step)."""
        if self.probe is None:
            return
        features = self._features(self.train_images[batch_index])
        self._epoch_accuracies.append(self.probe.update(features, self.train_labels[batch_index]))

    def log_step(self, record: dict, step: int) -> None:
        self._log("step", record, step)

    def end_epoch(self, epoch: int) -> dict[str, float]:
        """The epoch's monitor metrics (for ``metrics.jsonl``'s epoch record)."""
        metrics: dict[str, float] = {}
        knn_due = bool(self.knn_every) and (epoch + 1) % self.knn_every == 0
        if self.probe is None and not knn_due:
            return metrics
        bank, queries = self._features(self.bank_images), self._features(self.query_images)
        if self.probe is not None:
            if self._epoch_accuracies:
                metrics["online_probe_train_acc"] = sum(self._epoch_accuracies) / len(self._epoch_accuracies)
            metrics["online_probe_test_acc"] = self.probe.accuracy(queries, self.query_labels, reference=bank)
            self._epoch_accuracies = []
        if knn_due:
            from tc2ssl.eval.knn import knn_accuracy

            metrics["knn_monitor_acc"] = knn_accuracy(bank, self.bank_labels, queries, self.query_labels,
                                                      k=self.eval_cfg.knn_k, temperature=self.eval_cfg.knn_temperature)
        return metrics

    def log_epoch(self, record: dict, step: int) -> None:
        self._log("epoch", record, step)
        for logger in self.loggers:
            logger.save()

    def _log(self, kind: str, record: dict, step: int) -> None:
        if not self.loggers:
            return
        values = {f"{kind}/{k}": float(v) for k, v in record.items()
                  if k != "kind" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        for logger in self.loggers:
            logger.log_metrics(values, step=step)

    def close(self, status: str = "success") -> None:
        for logger in self.loggers:
            logger.finalize(status)
