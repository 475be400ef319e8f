import torch
import torch.nn as nn

import tc2ssl.api as api
from tc2ssl.errors import ConfigError

import pytest


def encoder():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten())


def test_tc2_step_in_a_user_loop_sets_encoder_grads_and_updates_calibrators():
    torch.manual_seed(0)
    net = encoder()
    method = api.ssl_method("simclr", net, feat_dim=8, proj_output_dim=8, proj_hidden_dim=16)
    step = api.TC2Step(method, image_size=8, channels=1, augment="digits", n_tasks=2, n_views=3)
    images = (torch.rand(16, 1, 8, 8) * 255).to(torch.uint8)
    before = {k: v.clone() for k, v in step.plugin.named_parameters()}
    metrics = step(images)
    assert torch.isfinite(metrics["loss"]) and "tc2/loss_v" in metrics
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    assert any(not torch.equal(v, before[k]) for k, v in step.plugin.named_parameters())
    assert step.step == 1
    assert "conflict/cos_mean" in step.end_epoch() and step.epoch == 1


def test_plus_t_and_validation():
    method = api.ssl_method("simclr", encoder(), feat_dim=8, proj_output_dim=8)
    plus_t = api.TC2Step(method, image_size=8, channels=1, plugin="tasks", augment="none", n_tasks=2, n_views=3)
    assert getattr(plus_t.plugin, "calibrator", None) is None
    with pytest.raises(ConfigError, match="feat_dim"):
        api.ssl_method("simclr", encoder())
    with pytest.raises(ConfigError, match="plugin.n_tasks"):
        api.TC2Step(method, image_size=8, channels=1, n_tasks=0)


def test_tc2_step_takes_any_k_with_remainder_error():
    """train.* plays no part in the API: the config checks of train.batch_size against plugin.n_tasks
    (K <= batch, K divides the batch under remainder=error) must not reject a K the user's loop can serve."""
    torch.manual_seed(0)
    method = api.ssl_method("simclr", encoder(), feat_dim=8, proj_output_dim=8, proj_hidden_dim=16)
    step = api.TC2Step(method, image_size=8, channels=1, augment="none", n_tasks=3, n_views=3, remainder="error")
    metrics = step((torch.rand(24, 1, 8, 8) * 255).to(torch.uint8))                  # 24 = 3 tasks of 8
    assert torch.isfinite(metrics["loss"])
    with pytest.raises(ConfigError, match="not divisible by plugin.n_tasks=3"):
        step((torch.rand(25, 1, 8, 8) * 255).to(torch.uint8))
    assert api.TC2Step(method, image_size=8, channels=1, augment="none", n_tasks=300).plugin.cfg.n_tasks == 300
