"""``plugin.view_agreement``: the weighted LASSO whose per-factor weight ω is the factor's view noise-to-signal ratio
in the task (docs/tc2.md). Values are checked against hand-computed cases, not against the calibrator's formula."""
from __future__ import annotations

import pytest
import torch

from tc2ssl.config import load_config
from tc2ssl.data.tasks import TaskSplit
from tc2ssl.errors import ConfigError
from tc2ssl.methods.base import build_method
from tc2ssl.models import build_backbone
from tc2ssl.plugins.base import build_plugin
from tc2ssl.tc2.calibrator import Calibration
from tc2ssl.tc2.losses import loss_w
from tc2ssl.tc2.weight_net import WeightNet

DIM = 8


def build_plugin_of(*overrides: str, presets: tuple[str, ...] = ("calibrated",)):
    cfg = load_config(presets, ["plugin.name=tc2", "plugin.n_tasks=2", *overrides])
    return build_plugin(cfg, build_method(cfg.method, build_backbone(cfg.model, 1)), None)


def build_calibrator(*overrides: str, presets: tuple[str, ...] = ("calibrated",)):
    return build_plugin_of("method.name=simclr", f"method.proj_output_dim={DIM}", "model.backbone=small_cnn_tiny",
                           *overrides, presets=presets).calibrator


def reference_omega(noise_to_signal: list[float]) -> torch.Tensor:
    """ω from the noise-to-signal ratios ρ of one task's factors: (ρ + 0.05)/(mean ρ + 0.05)."""
    rho = torch.tensor(noise_to_signal)
    return (rho + 0.05) / (rho.mean() + 0.05)


def test_equally_consistent_factors_give_the_plain_lasso():
    calibrator = build_calibrator()
    basis = torch.eye(DIM)[:, :2]
    image = torch.randn(5, 1, DIM)
    same = image.expand(5, 3, DIM)                                   # every view equal: a = 1, ρ = 0 everywhere
    assert torch.allclose(calibrator.view_penalty(same, basis), torch.ones(15, 2))


def test_an_agreed_factor_is_spared_and_a_contradicted_one_shrunk():
    calibrator = build_calibrator()
    basis = torch.eye(DIM)[:, :2]
    z = torch.zeros(5, 2, DIM)
    z[:, :, 0] = torch.randn(5, 1)                                   # factor 0: the same in both views (ρ = 0)
    z[:, 0, 1] = torch.randn(5)                                      # factor 1: opposite views, a = −1 -> 0.05,
    z[:, 1, 1] = -z[:, 0, 1]                                         # ρ = 19
    assert torch.allclose(calibrator.view_penalty(z, basis), reference_omega([0.0, 19.0]).expand(10, 2))


def test_penalty_follows_the_noise_to_signal_ratio_of_a_known_mixture():
    """Factor 0 = s + e_v over 3 views: a shared part s = ±1 (variance 1) and a view-specific part with Σ_v e = 0
    and Σ_v e² = 3 per image (variance 1). Per image: (Σ_v c)² = 9, Σ_v c² = 3 + 3 = 6, so Σ_{v≠w} c_v c_w = 3
    and a = 3 / ((3 − 1)·6) = 1/4: ρ = (1 − a)/a = 3. Factor 1 = s alone: ρ = 0."""
    calibrator = build_calibrator()
    basis = torch.eye(DIM)[:, :2]
    shared = torch.tensor([1.0, -1.0, 1.0, -1.0])[:, None]                                      # [n=4, 1]
    noise = torch.tensor([[1.0, 1.0, -2.0], [-1.0, -1.0, 2.0], [1.0, -2.0, 1.0], [-1.0, 2.0, -1.0]]) / 2 ** 0.5
    z = torch.zeros(4, 3, DIM)
    z[..., 0] = shared + noise
    z[..., 1] = shared
    assert torch.allclose(calibrator.view_penalty(z, basis), reference_omega([3.0, 0.0]).expand(12, 2), atol=1e-5)


def test_tasks_get_their_own_penalty():
    calibrator = build_calibrator()
    basis = torch.eye(DIM)[:, :2]
    z = torch.zeros(4, 2, DIM)
    z[:2, :, 0] = torch.tensor([[1.0], [2.0]])                # task 0 agrees on factor 0, disagrees on factor 1
    z[:2, :, 1] = torch.tensor([[1.0, -1.0], [2.0, -2.0]])
    z[2:, :, 1] = torch.tensor([[3.0], [1.0]])                # task 1: the other way round
    z[2:, :, 0] = torch.tensor([[1.0, -1.0], [1.0, -1.0]])
    omega = calibrator.factor_penalty(z, basis, torch.tensor([0, 0, 1, 1]), 2)
    assert torch.allclose(omega, torch.stack([reference_omega([0.0, 19.0]), reference_omega([19.0, 0.0])]))
    rows = calibrator.view_penalty(z, basis, torch.tensor([0, 0, 1, 1]), 2)
    assert torch.equal(rows, omega[[0, 0, 0, 0, 1, 1, 1, 1]])                      # image-major rows


def test_weighted_soft_threshold_and_loss():
    net = WeightNet(2, 2, mode="shrink")
    net.threshold_scale = 0.5
    z, basis = torch.tensor([[2.0, -3.0]]), torch.eye(2)
    penalty = torch.tensor([[0.0, 4.0]])                      # factor 0 unshrunk, factor 1's threshold 0.5·4 = 2
    assert torch.allclose(net(z, basis, None, penalty), torch.tensor([[2.0, -1.0]]))
    assert torch.allclose(net.gates(z, basis, None, penalty), torch.tensor([[1.0, 1 / 3]]))
    weights = torch.tensor([[2.0, -1.0]])
    # ‖z − WVᵀ‖² = (−3 + 1)² = 4; λ₁ Σ ω|W| = 0.1·(0·2 + 4·1) = 0.4
    assert float(loss_w(z, weights, basis, l1_coef=0.1, penalty=penalty)) == pytest.approx(4.4)
    with pytest.raises(ValueError, match="penalty must be"):
        net(z, basis, None, torch.ones(1, 3))
    with pytest.raises(ValueError, match="weight_mode='shrink'"):
        WeightNet(2, 2, mode="gated")(z, basis, None, penalty)


def test_the_calibration_reads_the_views_and_refuses_bare_rows():
    calibrator = build_calibrator()
    basis = torch.linalg.qr(torch.randn(DIM, DIM)).Q[:, :4]
    calibrator.set_l1(torch.randn(20, DIM), basis)
    calibration = Calibration(calibrator, basis)
    z = torch.randn(5, 2, DIM)
    out = calibration(z)
    assert out.shape == z.shape
    expected = calibrator.calibrated(calibrator.prep(z).reshape(-1, DIM), basis, None, None,
                                     calibrator.view_penalty(calibrator.prep(z), basis)).view(z.shape)
    assert torch.equal(out, expected)
    with pytest.raises(ValueError, match="views of a task"):
        calibration(z.reshape(-1, DIM))


def test_invalid_combinations_are_config_errors():
    with pytest.raises(ConfigError, match="weight_mode=shrink"):
        build_calibrator("plugin.view_agreement=true", presets=())
    with pytest.raises(ConfigError, match="token latents"):
        build_plugin_of(presets=("mae", "calibrated"))


def test_stage1_weighs_loss_w_by_the_view_penalty():
    """Stage 1's L_w equals Eq. 2 with ω from each task's views (recomputed here from the definition)."""
    plugin = build_plugin_of("method.name=simclr", f"method.proj_output_dim={DIM}", "model.backbone=small_cnn_tiny")
    calibrator = plugin.calibrator
    n_images, n_views = 8, 4
    z = torch.nn.functional.normalize(torch.randn(n_images, n_views, DIM), dim=-1)
    order = torch.rand(n_images, n_views).argsort(1)
    split = TaskSplit(groups=torch.arange(n_images).view(2, 4), support_idx=order[:, :2], query_idx=order[:, 2:],
                      n_kept=n_images)
    batch = calibrator._stage1_batch(z, split, None, 0, query_loss=plugin.query_loss)
    phi = calibrator.parameter_dict()
    basis = calibrator.factors(batch.stats, phi).detach()
    calibrator.set_l1(batch.rows, basis)
    _, (_, _, lw) = calibrator.objective(phi, batch, "query")
    rows = batch.lw_rows["query"]
    omega = torch.zeros(n_images * n_views, basis.shape[1])
    for task in range(2):
        views = z[split.groups[task]] @ basis                                      # [4, m, n_f]
        cross = sum(views[:, v] * views[:, w] for v in range(n_views) for w in range(n_views) if v != w).sum(0)
        agreement = (cross / ((n_views - 1) * views.square().sum((0, 1)))).clamp(0.05, 1)
        rho = (1 - agreement) / agreement
        for image in split.groups[task]:
            omega[image * n_views:(image + 1) * n_views] = (rho + 0.05) / (rho.mean() + 0.05)
    z_rows = batch.rows[rows]
    coords = z_rows @ basis
    weights = coords.sign() * (coords.abs() - omega[rows] * float(calibrator.l1_value) / 2).clamp(min=0)
    expected = ((z_rows - weights @ basis.T).square().sum(-1)
                + float(calibrator.l1_value) * (omega[rows] * weights.abs()).sum(-1)).mean()
    assert float(lw) == pytest.approx(float(expected), rel=1e-4)


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_an_epoch_of_the_calibrated_preset_trains_with_open_and_closed_gates(method, tmp_path):
    """A whole epoch through the plug-in (stage 1, health, stage 2; BYOL also calibrates its target views)."""
    from tc2ssl.train.loop import pretrain

    cfg = load_config(("calibrated",), ["plugin.name=tc2", f"method.name={method}", "model.backbone=small_cnn_tiny",
                                        "train.batch_size=32", "plugin.n_tasks=2", "eval.enabled=false",
                                        "train.progress=false", "method.proj_output_dim=16",
                                        "method.proj_hidden_dim=16", "data.max_train=64", "train.epochs=1",
                                        "plugin.health_every=1", f"out={tmp_path / method}"])
    pretrain(cfg)
    import json
    steps = [json.loads(line) for line in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if s.get("kind") == "step" and "tc2/gate_sparsity" in s]
    assert steps and all(torch.isfinite(torch.tensor(s["loss"])) for s in steps)
    assert 0.0 < steps[-1]["tc2/gate_sparsity"] < 1.0              # some gates closed, not all
