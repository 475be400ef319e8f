import pytest
import torch

from tc2ssl.config import ModelConfig
from tc2ssl.errors import ConfigError
from tc2ssl.models import build_backbone


@pytest.mark.parametrize("name, dim", [("small_cnn", 128), ("small_cnn_tiny", 64), ("resnet18", 512)])
def test_pooled_features_and_taps(name, dim):
    net = build_backbone(ModelConfig(backbone=name), 3).eval()
    x = torch.randn(2, 3, 16, 16)
    h = net(x)
    assert h.shape == (2, dim) and net.feat_dim == dim
    taps = net.forward_features(x, taps=("early", "last"))
    assert len(taps) == 2 and torch.allclose(taps[net.aliases["last"]], h, atol=1e-5)


def test_resnet_names_match_torchvision():
    import torchvision

    net = build_backbone(ModelConfig(backbone="resnet18", cifar_stem=False), 3)
    ours = {k.removeprefix("net.") for k in net.state_dict()}
    theirs = {k for k in torchvision.models.resnet18().state_dict() if not k.startswith("fc.")}
    assert ours == theirs


def test_grey_input_and_unknown_tap():
    net = build_backbone(ModelConfig(backbone="small_cnn"), 1)
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 128)
    with pytest.raises(ConfigError, match="valid taps"):
        net.forward_features(torch.randn(2, 1, 8, 8), taps=("layer9",))


def test_timm_missing_is_a_clear_error():
    pytest.importorskip  # timm is optional
    try:
        import timm  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="pip install timm"):
            build_backbone(ModelConfig(backbone="timm:resnet18"), 3)


def test_timm_backbone_taps_are_timms_feature_stages():
    timm = pytest.importorskip("timm")
    net = build_backbone(ModelConfig(backbone="timm:resnet10t"), 1).eval()           # pretrained=False
    assert net.tap_names == ("act1", "layer1", "layer2", "layer3", "layer4", "stage_last")
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    h = net(x)
    assert h.shape == (2, 512) and net.feat_dim == 512
    taps = net.forward_features(x, taps=net.tap_names)
    assert {k: tuple(v.shape) for k, v in taps.items()} == {
        "act1": (2, 64), "layer1": (2, 64), "layer2": (2, 128), "layer3": (2, 256), "layer4": (2, 512),
        "stage_last": (2, 512)}
    # the maps of timm's own feature extractor with the same weights, average-pooled
    reference = timm.create_model("resnet10t", pretrained=False, features_only=True, in_chans=1).eval()
    missing, unexpected = reference.load_state_dict(net.net.state_dict(), strict=False)
    assert not missing and not unexpected
    names = reference.feature_info.module_name()
    assert names == list(net.tap_names[:-1])
    for name, feature_map in zip(names, reference(x)):
        torch.testing.assert_close(taps[name], feature_map.mean(dim=(-2, -1)))
    torch.testing.assert_close(taps["stage_last"], h)
    assert list(net.forward_features(x, taps=("early", "last"))) == ["layer2", "stage_last"]
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())    # hooks removed
    with pytest.raises(ConfigError, match="valid taps: act1, layer1"):
        net.forward_features(x, taps=("layer9",))


def test_timm_vit_taps_pool_its_tokens():
    pytest.importorskip("timm")
    net = build_backbone(ModelConfig(backbone="timm:test_vit"), 3).eval()             # 6 blocks of width 64
    x = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    blocks = tuple(f"blocks.{i}" for i in range(6))
    assert net.tap_names == (*blocks, "stage_last") and net.aliases["early"] == "blocks.3"
    seen = {}
    handle = net.net.blocks[5].register_forward_hook(lambda _m, _a, out: seen.setdefault("tokens", out))
    taps = net.forward_features(x, taps=(*blocks, "last"))
    handle.remove()
    assert all(taps[b].shape == (2, 64) for b in blocks) and taps["stage_last"].shape == (2, net.feat_dim)
    torch.testing.assert_close(taps["blocks.5"], seen["tokens"].mean(dim=1))          # [N, T, C] -> mean over T
    torch.testing.assert_close(taps["stage_last"], net(x))


SPLITS = [("small_cnn", "block1", 32), ("small_cnn_tiny", "early", 32), ("resnet18", "layer1", 64),
          ("resnet18", "last", 512), ("vit_tiny", "block1", 64), ("vit_tiny", "block4", 64),
          ("timm:resnet18", "layer2", 128), ("timm:resnet18", "act1", 64)]


@pytest.mark.parametrize("name, at, channels", SPLITS)
def test_split_rest_of_early_is_the_backbone_and_shares_its_parameters(name, at, channels):
    if name.startswith("timm:"):
        pytest.importorskip("timm")
    net = build_backbone(ModelConfig(backbone=name, cifar_stem=True), 3).eval()
    x = torch.randn(2, 3, 16, 16)
    early, rest = net.split(at=at)
    feature_map = early(x)
    assert feature_map.dim() in (3, 4) and channels in (feature_map.shape[1], feature_map.shape[-1])
    assert torch.equal(rest(feature_map), net(x))                        # the same computation, bit for bit
    own = {id(p) for p in net.parameters()}
    parts = [*early.parameters(), *rest.parameters()]
    assert {id(p) for p in parts} == own and len(parts) == len(own)      # shared, every parameter in one part


def test_split_names_an_unknown_layer():
    net = build_backbone(ModelConfig(backbone="small_cnn"), 1)
    with pytest.raises(ConfigError, match="valid taps: block1"):
        net.split(at="layer9")


def test_timm_models_without_top_level_stages_refuse_to_split():
    pytest.importorskip("timm")
    net = build_backbone(ModelConfig(backbone="timm:vit_tiny_patch16_224"), 3)
    with pytest.raises(ConfigError, match="cannot be split"):
        net.split(at="blocks.0")
