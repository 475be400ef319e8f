"""Take a tc2ssl encoder to object detection: the exported ResNet as the body of a torchvision Faster R-CNN.

    python examples/detection_transfer.py [RUN_FOLDER_OR_ENCODER_FILE]

``tc2ssl.api.load_encoder`` gives a plain ``torchvision.models.ResNet`` (stem as trained, ``fc`` removed) and the
input normalisation it was trained with; ``BackboneWithFPN`` puts a feature pyramid on its four stages, and the
detector's own transform normalises with the encoder's mean/std. Without an argument a freshly initialised
ResNet-18 (CIFAR stem) is written and used, so the example runs anywhere; give a run folder of
``tc2ssl pretrain model.backbone=resnet18 ...`` (3-channel data) to start from your pretrained weights.

BatchNorm becomes ``FrozenBatchNorm2d`` (the pretrained statistics, fixed): detection batches are a few images, too
few for batch statistics, as in torchvision's and Detectron2's detectors.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
import torch.nn as nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.misc import FrozenBatchNorm2d

from tc2ssl.api import load_encoder


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d of ``module`` by a FrozenBatchNorm2d holding its statistics and affine weights."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


def build_detector(encoder_path: str | Path, num_classes: int = 3, image_size: int = 128) -> FasterRCNN:
    """A Faster R-CNN (FPN on layer1..layer4 of the encoder) for ``num_classes`` classes (background included)."""
    encoder, transform = load_encoder(encoder_path)
    if not hasattr(encoder, "layer4"):
        raise SystemExit(f"{encoder_path}: detection needs a ResNet encoder (model.backbone=resnet18/resnet50)")
    in_channels_list = [_stage_channels(getattr(encoder, f"layer{i}")) for i in (1, 2, 3, 4)]
    body = BackboneWithFPN(freeze_batchnorm(encoder), return_layers={f"layer{i}": str(i - 1) for i in (1, 2, 3, 4)},
                           in_channels_list=in_channels_list, out_channels=64)
    # the CIFAR stem keeps full resolution in layer1 (strides 1, 2, 4, 8, and 16 for the max-pooled extra level)
    stride = 1 if transform.metadata["stem"] == "cifar" else 4
    anchors = AnchorGenerator(sizes=tuple((8 * stride * 2 ** i,) for i in range(5)),
                              aspect_ratios=((0.5, 1.0, 2.0),) * 5)
    norm = transform.metadata["normalization"]
    return FasterRCNN(body, num_classes=num_classes, rpn_anchor_generator=anchors, min_size=image_size,
                      max_size=image_size, image_mean=norm["mean"], image_std=norm["std"])


def _stage_channels(stage: nn.Sequential) -> int:
    """Output channels of a ResNet stage (its last block's last BatchNorm)."""
    norms = [m for m in stage[-1].modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
    return norms[-1].weight.shape[0]


def synthetic_batch(n_images: int = 2, size: int = 128, seed: int = 0):
    """Images (float [0, 1], 3 x size x size) each holding a bright square of class 1 and a dark one of class 2."""
    gen = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(n_images):
        image = torch.rand(3, size, size, generator=gen) * 0.2 + 0.4
        boxes = []
        for value in (1.0, 0.0):
            side = int(torch.randint(size // 6, size // 3, (1,), generator=gen))
            x0, y0 = (int(v) for v in torch.randint(0, size - side, (2,), generator=gen))
            image[:, y0:y0 + side, x0:x0 + side] = value
            boxes.append([x0, y0, x0 + side, y0 + side])
        images.append(image)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor([1, 2])})
    return images, targets


def fresh_encoder_file(folder: Path) -> Path:
    """An untrained ResNet-18 (CIFAR stem, 3 channels) written as a pretraining run writes its encoder."""
    from tc2ssl.config import ModelConfig, RunConfig, to_dict
    from tc2ssl.models import build_backbone
    from tc2ssl.models.export import encoder_metadata
    from tc2ssl.train.checkpoint import export_encoder

    model = ModelConfig(backbone="resnet18", cifar_stem=True)
    backbone = build_backbone(model, 3)
    path = folder / "encoder.safetensors"
    export_encoder(path, backbone, encoder_metadata(backbone, "resnet18", 3, 32, to_dict(RunConfig(model=model))))
    return path


def main() -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = sys.argv[1] if len(sys.argv) > 1 else fresh_encoder_file(Path(tmp))
        detector = build_detector(path, num_classes=3, image_size=128)
    optimizer = torch.optim.SGD([p for p in detector.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    images, targets = synthetic_batch()
    detector.train()
    for step in range(2):
        losses = detector(images, targets)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        parts = ", ".join(f"{name} {value.item():.3f}" for name, value in losses.items())
        print(f"step {step}: loss {total.item():.4f} ({parts})")
    detector.eval()
    with torch.no_grad():
        detections = detector(images[:1])[0]
    print(f"detections {tuple(detections['boxes'].shape)}")


if __name__ == "__main__":
    main()
