"""Drop-in encoders: exported weights load strictly into fresh torchvision / timm modules patched by hand and give
tc2ssl's own features; the header records stem and normalisation; formats a backbone has not are refused."""
import json

import pytest
import torch
import torch.nn as nn
import torchvision
from safetensors import safe_open
from safetensors.torch import load_file

from tc2ssl.cli import main
from tc2ssl.config import ModelConfig, RunConfig, to_dict
from tc2ssl.data.base import to_unit
from tc2ssl.errors import ConfigError
from tc2ssl.models import build_backbone
from tc2ssl.models.backbones import TorchvisionResNet
from tc2ssl.models.export import encoder_metadata, export_encoder_file, load_encoder
from tc2ssl.train.checkpoint import export_encoder

ATOL = 1e-5


def randomise_batchnorm(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so that eval-mode BatchNorm is not the identity."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return module.eval()


def write_run_encoder(tmp_path, model: ModelConfig, channels: int, resolution: int):
    """An encoder.safetensors as a pretraining run writes it (same metadata call as train/loop.py)."""
    torch.manual_seed(0)
    backbone = randomise_batchnorm(build_backbone(model, channels))
    cfg = RunConfig(model=model)
    path = tmp_path / "encoder.safetensors"
    export_encoder(path, backbone, encoder_metadata(backbone, model.backbone, channels, resolution, to_dict(cfg)))
    return backbone, path


def images(channels: int, side: int, n: int = 4) -> torch.Tensor:
    return torch.randint(0, 256, (n, channels, side, side), generator=torch.Generator().manual_seed(1),
                         dtype=torch.uint8)


@pytest.mark.parametrize("channels", [3, 1])
def test_resnet18_cifar_stem_loads_into_plain_torchvision_with_the_same_features(tmp_path, channels):
    backbone, path = write_run_encoder(tmp_path, ModelConfig(backbone="resnet18", cifar_stem=True), channels, 32)
    # a fresh torchvision ResNet-18, patched by hand as the header says
    with safe_open(str(path), framework="pt") as fh:
        header = fh.metadata()
    assert header["stem"] == "cifar" and json.loads(header["resolution"]) == 32
    assert json.loads(header["normalization"])["mean"] == [0.5] * channels
    plain = torchvision.models.resnet18()
    plain.conv1 = nn.Conv2d(channels, 64, 3, 1, 1, bias=False)
    plain.maxpool = nn.Identity()
    plain.fc = nn.Identity()
    plain.load_state_dict(load_file(path), strict=True)
    x = images(channels, 32)
    expected = backbone(to_unit(x))
    normalised = (x.float() / 255 - 0.5) / 0.5          # the recorded mean/std on [0, 1] pixels
    torch.testing.assert_close(plain.eval()(normalised), expected, atol=ATOL, rtol=0)
    encoder, transform = load_encoder(tmp_path)          # the run folder
    assert isinstance(encoder, torchvision.models.ResNet) and not encoder.training
    torch.testing.assert_close(encoder(transform(x)), expected, atol=ATOL, rtol=0)
    # float input in [0, 1] gives the same
    torch.testing.assert_close(encoder(transform(x.float() / 255)), expected, atol=ATOL, rtol=0)


def test_imagenet_stem_resnet_exports_unpatched_keys(tmp_path):
    backbone, path = write_run_encoder(tmp_path, ModelConfig(backbone="resnet18", cifar_stem=False), 3, 64)
    plain = torchvision.models.resnet18()
    plain.fc = nn.Identity()
    plain.load_state_dict(load_file(path), strict=True)      # nothing to patch but the classifier
    x = images(3, 64, n=2)
    torch.testing.assert_close(plain.eval()(to_unit(x)), backbone(to_unit(x)), atol=ATOL, rtol=0)


def test_torchvision_resnet_loads_into_timm_resnet(tmp_path):
    timm = pytest.importorskip("timm")
    backbone, path = write_run_encoder(tmp_path, ModelConfig(backbone="resnet18", cifar_stem=True), 3, 32)
    plain = timm.create_model("resnet18", pretrained=False, num_classes=0)
    plain.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    plain.maxpool = nn.Identity()
    out = export_encoder_file(tmp_path, "timm")
    plain.load_state_dict(load_file(out), strict=True)
    x = images(3, 32)
    torch.testing.assert_close(plain.eval()(to_unit(x)), backbone(to_unit(x)), atol=ATOL, rtol=0)


@pytest.mark.parametrize("name,channels,side", [("resnet18", 1, 32), ("vit_tiny_patch16_224", 3, 224)])
def test_timm_backbone_loads_into_plain_timm_with_the_same_features(tmp_path, name, channels, side):
    timm = pytest.importorskip("timm")
    backbone, path = write_run_encoder(tmp_path, ModelConfig(backbone=f"timm:{name}"), channels, side)
    tensors = load_file(path)
    assert not any(k.startswith("net.") for k in tensors)     # timm's own names
    plain = timm.create_model(name, pretrained=False, num_classes=0, in_chans=channels)
    plain.load_state_dict(tensors, strict=True)
    x = images(channels, side, n=2)
    expected = backbone(to_unit(x))
    torch.testing.assert_close(plain.eval()(to_unit(x)), expected, atol=ATOL, rtol=0)
    encoder, transform = load_encoder(path)
    torch.testing.assert_close(encoder(transform(x)), expected, atol=ATOL, rtol=0)


def test_timm_file_with_the_old_net_prefix_still_loads(tmp_path):
    pytest.importorskip("timm")
    backbone, path = write_run_encoder(tmp_path, ModelConfig(backbone="timm:resnet18"), 3, 32)
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as fh:
        header = fh.metadata()
    save_file({f"net.{k}": v for k, v in load_file(path).items()}, path, metadata=header)
    encoder, transform = load_encoder(path)
    x = images(3, 32, n=2)
    torch.testing.assert_close(encoder(transform(x)), backbone(to_unit(x)), atol=ATOL, rtol=0)


def test_own_backbone_exports_as_state_dict_only(tmp_path):
    backbone, path = write_run_encoder(tmp_path, ModelConfig(backbone="small_cnn"), 1, 16)
    for fmt in ("torchvision", "timm"):
        with pytest.raises(ConfigError, match="state_dict"):
            export_encoder_file(path, fmt)
    out = export_encoder_file(path, "state_dict")
    assert out.name == "encoder_state_dict.pt"
    state = torch.load(out, weights_only=True)
    fresh = build_backbone(ModelConfig(backbone="small_cnn"), 1)
    fresh.load_state_dict(state, strict=True)
    x = images(1, 16)
    torch.testing.assert_close(fresh.eval()(to_unit(x)), backbone(to_unit(x)), atol=ATOL, rtol=0)
    assert json.loads(out.with_suffix(".json").read_text())["stem"] == "none"


def test_cli_export_writes_torchvision_file_and_refuses_wrong_formats(tmp_path, capsys):
    write_run_encoder(tmp_path, ModelConfig(backbone="resnet18"), 3, 32)
    assert main(["export", str(tmp_path), "--format", "torchvision"]) == 0
    written = capsys.readouterr().out.strip()
    assert written.endswith("encoder_torchvision.safetensors")
    plain = torchvision.models.resnet18()
    plain.conv1, plain.maxpool, plain.fc = nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.Identity(), nn.Identity()
    plain.load_state_dict(load_file(written), strict=True)
    own = tmp_path / "own"
    own.mkdir()
    write_run_encoder(own, ModelConfig(backbone="small_cnn_tiny"), 1, 16)
    assert main(["export", str(own), "--format", "timm"]) == 2
    assert "tc2ssl's own module" in capsys.readouterr().err


def test_pretrained_keeps_conv1_and_records_imagenet_normalisation(tmp_path, monkeypatch):
    """model.pretrained=true (weights replaced by a seeded random net: no download in tests): grey data goes through
    the adapter (replicate, ImageNet mean/std), the 7x7 RGB conv1 is kept, the exported module expects that."""
    import tc2ssl.models.pretrained as pretrained_mod

    def offline_weights(net, weights):
        assert "IMAGENET1K_V1" in str(weights)
        torch.manual_seed(3)
        net.load_state_dict(torchvision.models.resnet18(weights=None).state_dict())

    monkeypatch.setattr(pretrained_mod, "load_torchvision_weights", offline_weights)
    backbone = randomise_batchnorm(TorchvisionResNet("resnet18", in_channels=1, cifar_stem=False, pretrained=True))
    torch.manual_seed(3)
    reference_conv1 = torchvision.models.resnet18(weights=None).conv1.weight
    assert torch.equal(backbone.net.conv1.weight, reference_conv1)       # conv1 kept, RGB
    meta = encoder_metadata(backbone, "resnet18", 1, 64, to_dict(RunConfig(model=ModelConfig(backbone="resnet18",
                                                                                              cifar_stem=False))))
    assert meta["module_in_channels"] == 3 and meta["stem"] == "imagenet"
    assert meta["normalization"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert meta["normalization"]["std"] == pytest.approx([0.229, 0.224, 0.225])
    export_encoder(tmp_path / "encoder.safetensors", backbone, meta)
    monkeypatch.undo()                                   # loading builds a plain, untrained torchvision ResNet
    encoder, transform = load_encoder(tmp_path)
    x = images(1, 64, n=2)
    imagenet = (x.float().expand(-1, 3, -1, -1) / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) \
        / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(transform(x), imagenet, atol=1e-6, rtol=0)
    # the two paths normalise in a different order (adapter inside the backbone, transform outside), and a
    # ResNet-18's 512 features of size up to about 6 carry that float32 rounding (seen: 1.8e-5 at 6.0, relative
    # 3e-6); a wrong mean, std or channel order moves them by 1e-2 or more
    torch.testing.assert_close(encoder(transform(x)), backbone(to_unit(x)), atol=ATOL, rtol=1e-5)
