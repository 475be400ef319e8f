
import pytest
import torch

from tc2ssl.errors import CheckpointError
from tc2ssl.train.checkpoint import (export_encoder, load_checkpoint, load_encoder_weights, save_checkpoint)


def test_round_trip_and_atomic_replace(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"epoch": 1, "w": torch.arange(3.0), "nested": {"a": [1, 2]}})
    save_checkpoint(path, {"epoch": 2, "w": torch.ones(2)})
    state = load_checkpoint(path)
    assert state["epoch"] == 2 and torch.equal(state["w"], torch.ones(2))
    assert list(tmp_path.iterdir()) == [path]  # no temporary files left behind


def test_corrupt_and_missing_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "none.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_arbitrary_objects_are_not_unpickled(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "x": Evil()}, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_encoder_export_strips_prefix(tmp_path):
    from tc2ssl.config import ModelConfig
    from tc2ssl.models import build_backbone

    net = build_backbone(ModelConfig(backbone="resnet18"), 3)
    export_encoder(tmp_path / "enc.safetensors", net, {"backbone": "resnet18", "in_channels": 3})
    tensors, meta = load_encoder_weights(tmp_path / "enc.safetensors")
    assert "conv1.weight" in tensors and meta["backbone"] == "resnet18"
    assert torch.equal(tensors["layer1.0.conv1.weight"], net.state_dict()["net.layer1.0.conv1.weight"])
