"""Add TC² to your own PyTorch training loop (runs on CPU in about a minute).

    python examples/tc2_in_your_loop.py

Your encoder, your optimiser, your loop; tc2ssl supplies the SSL head and loss (SimCLR here), the K tasks per
batch, the calibration networks f_v and f_w (stage 1) and the bi-level encoder gradient (stage 2).
"""
import os

import torch
import torch.nn as nn
from sklearn.datasets import load_digits

import tc2ssl.api as tc2ssl

# --- your data: uint8 images [N, C, H, W] (here scikit-learn's bundled 8x8 digits, upsampled to 16 px) -------
digits = torch.from_numpy((load_digits().images / 16 * 255).round()).to(torch.uint8)[:, None]
images = nn.functional.interpolate(digits.float(), size=16, mode="bilinear").round().to(torch.uint8)

# --- your encoder: any module mapping images to pooled features -----------------------------------------------
encoder = nn.Sequential(
    nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
    nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
    nn.AdaptiveAvgPool2d(1), nn.Flatten(),
)

# --- three lines of tc2ssl ------------------------------------------------------------------------------------
method = tc2ssl.ssl_method("simclr", encoder, feat_dim=64, proj_output_dim=32)
tc2 = tc2ssl.TC2Step(method, image_size=16, channels=1, augment="digits", n_tasks=4, n_views=4)
optimizer = torch.optim.AdamW(method.parameters(), lr=2e-3)

generator = torch.Generator().manual_seed(0)
epochs, batch = int(os.environ.get("TC2SSL_EXAMPLE_EPOCHS", "3")), 128
steps = epochs * (len(images) // batch)
for epoch in range(epochs):
    order = torch.randperm(len(images), generator=generator)
    for b in range(len(images) // batch):
        optimizer.zero_grad()
        metrics = tc2(images[order[b * batch:(b + 1) * batch]])   # sets .grad on the encoder and SSL head
        optimizer.step()
        method.after_step(tc2.step / steps)
    summary = tc2.end_epoch()
    print(f"epoch {epoch}: query loss {metrics['loss']:.4f}, L_v {metrics['tc2/loss_v']:.4f}, "
          f"L_w {metrics['tc2/loss_w']:.4f}, inter-task gradient cosine {summary.get('conflict/cos_mean', 0):+.3f}")

# downstream: use `encoder` exactly as you would after the baseline (f_v and f_w are training-time only)
with torch.no_grad():
    features = encoder(images[:8].float() / 127.5 - 1)
print("features", tuple(features.shape))
