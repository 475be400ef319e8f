"""Per-layer probes: every tap of a real backbone, and known answers on a backbone whose taps hold the pixels
(linearly separable digits) or nothing (a constant: majority-class accuracy)."""
import pytest
import torch

from tc2ssl.config import load_config
from tc2ssl.data import load_data
from tc2ssl.errors import ConfigError
from tc2ssl.eval.layers import layer_probes
from tc2ssl.models import build_backbone
from tc2ssl.models.backbones import Backbone


class PixelsAndNothing(Backbone):
    """Tap ``pixels``: the flattened image; tap ``nothing``: zeros."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.tap_names = ("pixels", "nothing")
        self.feat_dim = 256

    def forward_features(self, x, taps=("pixels",)):
        features = {"pixels": x.flatten(1) * self.scale, "nothing": torch.zeros(x.shape[0], 4)}
        return {t: features[t] for t in self._resolve(taps)}

    def forward(self, x):
        return x.flatten(1) * self.scale


@pytest.fixture(scope="module")
def digits():
    return load_data(load_config((), []).data)


def test_known_answers_per_tap(digits):
    cfg = load_config((), ["eval.probe_cs=[1.0]"]).eval
    result = layer_probes(PixelsAndNothing(), digits.train, digits.test, cfg)
    assert list(result) == ["pixels", "nothing"]
    assert result["pixels"]["accuracy"] > 0.9 and result["pixels"]["feature_dim"] == 256
    majority = torch.bincount(digits.test.labels).max().item() / len(digits.test)
    assert result["nothing"]["accuracy"] <= majority + 1e-9


def test_every_tap_of_the_small_cnn_and_a_chosen_subset(digits):
    cfg = load_config((), ["model.backbone=small_cnn_tiny", "eval.probe_cs=[1.0]"])
    torch.manual_seed(0)
    backbone = build_backbone(cfg.model, 1)
    result = layer_probes(backbone, digits.train, digits.test, cfg.eval)
    assert list(result) == ["block1", "block2", "block3", "block4"]
    assert [r["feature_dim"] for r in result.values()] == [16, 32, 64, 64]
    assert all(r["accuracy"] > 0.3 for r in result.values())
    chosen = load_config((), ["model.backbone=small_cnn_tiny", "eval.probe_cs=[1.0]", "eval.layer_taps=[early]"])
    assert list(layer_probes(backbone, digits.train, digits.test, chosen.eval)) == ["block2"]
    bad = load_config((), ["eval.layer_taps=[block9]"])
    with pytest.raises(ConfigError, match="unknown layer tap 'block9'"):
        layer_probes(backbone, digits.train, digits.test, bad.eval)
