"""BYOL and SimSiam have no negatives: under TC² their only outer loss is the query loss of Eq. 7 (D-TC-12: the
predictor's output against stop-gradient support anchors), which must not let the encoder collapse. D-TC-33's
detector: the per-dimension std of the ℓ2-normalised embeddings below 0.01/√d (healthy: about 1/√d).

A few dozen steps of the real loop (small_cnn_tiny, d = 16, 256 digits, batch 32, K = 2, a deliberately large
learning rate) with the embeddings of fixed views measured at the end of every epoch.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from tc2ssl.config import load_config
from tc2ssl.data import load_data
from tc2ssl.plugins.tc2 import TC2
from tc2ssl.train.loop import pretrain
from tc2ssl.workflows import random_init_backbone

DIM = 16
TINY = ["plugin.name=tc2", "model.backbone=small_cnn_tiny", "train.batch_size=32", "plugin.n_tasks=2",
        "eval.enabled=false", "train.progress=false", f"method.proj_output_dim={DIM}", "method.proj_hidden_dim=16",
        "method.pred_hidden_dim=16", "data.max_train=256", "plugin.conflict_every=0"]
EPOCHS = 4                                                                         # 4 x 8 = 32 steps


def per_dimension_std(method, views: torch.Tensor) -> torch.Tensor:
    """std over the rows of n(z) for each of the d dimensions, z the training-mode embeddings (the calibration
    point stage 2 trains) of views [N, 2, C, H, W]; BN running statistics are left as they were."""
    buffers = {k: b.clone() for k, b in method.named_buffers()}
    with torch.no_grad():
        z = method.embed(views.flatten(0, 1))
        for k, b in method.named_buffers():
            b.copy_(buffers[k])
    return F.normalize(z.float(), dim=-1).std(dim=0)


@pytest.mark.filterwarnings("ignore:tc2 health")           # gate_sparsity on 32 steps: not what is tested
@pytest.mark.parametrize("method", ["byol", "simsiam"])
def test_tc2_alone_does_not_collapse_byol_or_simsiam(tmp_path, monkeypatch, method):
    cfg = load_config((), [*TINY, f"method.name={method}", f"train.epochs={EPOCHS}", "train.lr=1e-2",
                           f"out={tmp_path / 'run'}"])
    data = load_data(cfg.data)
    measured = []
    epoch_summary = TC2.epoch_summary

    def measuring_summary(self, epoch):
        probe = self.view_maker(data.train.images[:128], 2, 12345)
        measured.append(per_dimension_std(self.method, probe))
        return epoch_summary(self, epoch)

    monkeypatch.setattr(TC2, "epoch_summary", measuring_summary)
    out = pretrain(cfg, data)

    assert len(measured) == EPOCHS
    threshold = 0.01 / math.sqrt(DIM)
    for epoch, std in enumerate(measured):
        assert std.shape == (DIM,)
        assert std.min() > threshold, (f"{method} + TC² collapsed by epoch {epoch}: per-dimension std of n(z) "
                                       f"min {std.min():.2e} <= 0.01/sqrt(d) = {threshold:.2e}")
    steps = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "step"]
    assert all(math.isfinite(r["loss"]) for r in steps)
    # not vacuous: the encoder did train (its weights moved well away from the random init)
    initial = random_init_backbone(cfg, data.train.channels).state_dict()
    trained = load_file(out / "encoder.safetensors")
    moved = [float((trained[k] - initial[k]).norm() / initial[k].norm()) for k in trained if k.endswith(".weight")
             and initial[k].dim() > 1]
    assert max(moved) > 0.05, moved
