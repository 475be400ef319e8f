"""The runnable examples under examples/ run as a user would run them (one epoch, to keep the suite fast)."""
import math
import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_tc2_in_your_loop_example_trains_and_prints_finite_losses():
    env = {**os.environ, "TC2SSL_EXAMPLE_EPOCHS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(EXAMPLES / "tc2_in_your_loop.py")], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    epoch = re.fullmatch(r"epoch 0: query loss (\S+), L_v (\S+), L_w (\S+), inter-task gradient cosine (\S+)",
                         lines[0])
    assert epoch, done.stdout
    values = [float(v) for v in epoch.groups()]
    assert all(math.isfinite(v) for v in values) and -1.0 <= values[3] <= 1.0
    assert values[0] > 0 and values[1] > 0          # the Brier query loss and L_v of a real batch are positive
    assert lines[-1] == "features (8, 64)"


def _load_example(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_detection_transfer_trains_faster_rcnn_on_the_exported_resnet(tmp_path):
    """The exported ResNet-18 (CIFAR stem) as the body of a Faster R-CNN: forward and backward on a 2-image batch
    with boxes give a finite loss and gradients in the encoder's own layers, whose weights came from the file."""
    import torch
    from safetensors.torch import load_file

    example = _load_example("detection_transfer")
    torch.manual_seed(0)
    path = example.fresh_encoder_file(tmp_path)
    detector = example.build_detector(path, num_classes=3, image_size=64)
    body = detector.backbone.body
    exported = load_file(path)
    assert torch.equal(body.conv1.weight, exported["conv1.weight"]) and body.conv1.weight.shape[-1] == 3
    images, targets = example.synthetic_batch(n_images=2, size=64)
    detector.train()
    losses = detector(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    for name in ("conv1.weight", "layer1.0.conv1.weight", "layer4.1.conv2.weight"):
        grad = body.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
