import math

import pytest
import torch

from tc2ssl.tc2.health import (
    gate_selectivity,
    health_metrics,
    health_warnings,
    subspace_metrics,
)
from tc2ssl.tc2.losses import loss_v
from tc2ssl.tc2.weight_net import WeightNet

KEYS = {"orth_error", "lv_ratio", "gate_sparsity", "cal_norm_ratio", "v_sigma_min", "embed_std_scaled"}


def batch(dim: int = 8, n_factors: int = 4):
    g = torch.Generator().manual_seed(0)
    zf = torch.nn.functional.normalize(torch.randn(32, dim, generator=g), dim=-1)
    top = torch.linalg.eigh(zf.T @ zf).eigenvectors[:, -n_factors:]
    return zf, top


def gated_net(dim: int, n_factors: int, gate_logit: float, mode: str = "gated") -> WeightNet:
    torch.manual_seed(0)
    net = WeightNet(dim, n_factors, mode=mode)
    with torch.no_grad():
        net.mlp[-1].weight.zero_()
        net.mlp[-1].bias.fill_(gate_logit)
    return net


def test_healthy_calibration_gives_no_warning():
    zf, basis = batch()
    net = gated_net(8, 4, 0.0)
    with torch.no_grad():
        net.mlp[-1].bias[0] = -5.0                                  # one of four factors switched off
    metrics = health_metrics(basis, zf, net, zf, loss_v(basis, zf), 4, "mean")
    assert set(metrics) == KEYS | {"gate_std"}
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in metrics.values())
    assert metrics["lv_ratio"].item() == pytest.approx(1.0, abs=1e-4)    # V is the L_v optimum
    assert metrics["orth_error"].item() < 1e-5 and metrics["v_sigma_min"].item() == pytest.approx(1.0, abs=1e-5)
    assert metrics["gate_sparsity"].item() == pytest.approx(0.25)
    assert 0.3 < metrics["cal_norm_ratio"].item() < 1.0
    assert health_warnings({k: v.item() for k, v in metrics.items()}, epoch=5) == []


def test_collapsed_calibration_warns():  # D-TC-33: ẑ -> 0 when all gates are closed
    zf, basis = batch()
    metrics = health_metrics(basis, zf, gated_net(8, 4, -10.0), zf, loss_v(basis, zf), 4, "mean")
    assert metrics["gate_sparsity"].item() == 1.0 and metrics["cal_norm_ratio"].item() < 1e-3
    found = health_warnings({k: v.item() for k, v in metrics.items()}, epoch=0)
    assert len(found) == 2 and "collapses" in found[0] and "l1_coef" in found[0]
    assert "a constant" in found[1]                             # every gate at σ(−10): a fixed scaling


def test_free_mode_sparsity_counts_near_zero_weights():
    zf, basis = batch()
    net = gated_net(8, 4, 0.0, mode="free")
    with torch.no_grad():
        net.mlp[-1].bias.copy_(torch.tensor([1.0, 1e-5, 0.5, 0.0]))
    metrics = health_metrics(basis, zf, net, zf, loss_v(basis, zf), 4, "mean")
    assert metrics["gate_sparsity"].item() == pytest.approx(0.5)


def test_orthogonality_guard_applies_after_the_first_epoch():
    zf, basis = batch()
    skewed = basis * torch.tensor([1.0, 1.0, 1.0, 1.2])
    metrics = health_metrics(skewed, zf, gated_net(8, 4, 0.0), zf, loss_v(skewed, zf), 4, "mean")
    assert metrics["orth_error"].item() == pytest.approx(0.44, abs=1e-4)  # |1.2² − 1|
    assert metrics["lv_ratio"].item() > 1.0
    values = {k: v.item() for k, v in metrics.items()}
    assert not any("orthogonality" in w for w in health_warnings(values, epoch=0))
    assert any("orthogonality" in w for w in health_warnings(values, epoch=1))


def test_rank_deficiency_and_non_finite_values_warn():
    assert any("rank-deficient" in w for w in health_warnings({"v_sigma_min": 0.01}, epoch=0))
    found = health_warnings({"lv_ratio": math.nan, "cal_norm_ratio": 0.9}, epoch=0)
    assert len(found) == 1 and "lv_ratio is not finite" in found[0]
    assert any("inflates" in w for w in health_warnings({"cal_norm_ratio": 1.5}, epoch=0))
    assert any("selects no factors" in w for w in health_warnings({"gate_sparsity": 0.0}, epoch=0))


def test_zero_optimum_does_not_divide_by_zero():  # n_f = d: min L_v = 0
    zf = torch.nn.functional.normalize(torch.randn(16, 4), dim=-1)
    basis = torch.eye(4)
    metrics = health_metrics(basis, zf, gated_net(4, 4, 0.0), zf, loss_v(basis, zf), 4, "mean")
    assert metrics["lv_ratio"].item() == pytest.approx(1.0, abs=1e-3)


def test_collapsed_embeddings_warn_and_spread_ones_do_not():  # D-TC-33: std per dim < 0.01/√d
    zf, basis = batch()
    healthy = health_metrics(basis, zf, gated_net(8, 4, 0.0), zf, loss_v(basis, zf), 4, "mean")
    assert 0.3 < healthy["embed_std_scaled"].item() < 2.0   # random directions on the sphere: about 1
    g = torch.Generator().manual_seed(1)
    collapsed = torch.nn.functional.normalize(torch.ones(32, 8) + 1e-4 * torch.randn(32, 8, generator=g), dim=-1)
    metrics = health_metrics(basis, collapsed, gated_net(8, 4, 0.0), collapsed, loss_v(basis, collapsed), 4, "mean")
    assert metrics["embed_std_scaled"].item() < 1e-3
    found = health_warnings({k: v.item() for k, v in metrics.items()}, epoch=3)
    assert any("embeddings collapse" in w for w in found)
    # the scale of z does not matter (the detector normalises): 100·z collapsed is still collapsed
    scaled = health_metrics(basis, 100 * collapsed, gated_net(8, 4, 0.0), collapsed, loss_v(basis, collapsed), 4)
    assert scaled["embed_std_scaled"].item() == pytest.approx(metrics["embed_std_scaled"].item(), rel=1e-3)  # fp32


def test_energy_share_guard_compares_v_with_the_pooled_subspace_after_the_first_epoch():  # check R7, restated
    zf, top = batch()
    other = torch.linalg.eigh(zf.T @ zf).eigenvectors[:, :4]               # the trailing eigenvectors: the worst V
    metrics = subspace_metrics(other, zf, pooled=top)
    own = zf.square().sum()
    torch.testing.assert_close(metrics["energy_share"], (zf @ other).square().sum() / own)     # independent sums
    torch.testing.assert_close(metrics["top_share"], (zf @ top).square().sum() / own)
    assert metrics["subspace_cos2"].item() < 1e-5                          # orthogonal to the top subspace
    assert subspace_metrics(top, zf, pooled=top)["subspace_cos2"].item() == pytest.approx(1.0, abs=1e-5)
    values = {k: v.item() for k, v in metrics.items()}
    assert not any("pooled" in w for w in health_warnings(values, epoch=0))
    assert any("pooled" in w for w in health_warnings(values, epoch=1))
    values["energy_share"] = 0.96 * values["pooled_share"]
    assert not any("pooled" in w for w in health_warnings(values, epoch=4))


def test_gate_selectivity_is_one_for_task_blind_gates_and_large_for_task_gates():
    generator = torch.Generator().manual_seed(0)
    tasks = torch.arange(4).repeat_interleave(50)
    blind = torch.rand(200, 6, generator=generator)
    assert 0.3 < gate_selectivity(blind, tasks, 4, generator).item() < 3.0
    by_task = blind * 0.1 + torch.nn.functional.one_hot(tasks, 6).float()  # task k keeps factor k only
    assert gate_selectivity(by_task, tasks, 4, generator).item() > 50



def test_gate_selectivity_shuffles_whole_images_so_view_correlated_gates_score_one():
    """Gates that depend on the image only (its 4 views alike), not on its task: ≈ 1 when the chance level shuffles
    whole images; shuffling single rows would break the views' correlation and score them well above 1."""
    generator = torch.Generator().manual_seed(1)
    n_images, views = 64, 4
    image_tasks = torch.arange(4).repeat_interleave(16)[torch.randperm(n_images, generator=generator)]
    row_tasks = image_tasks.repeat_interleave(views)
    gates = torch.rand(n_images, 6, generator=generator).repeat_interleave(views, dim=0)
    gates = gates + 0.01 * torch.rand(gates.shape, generator=generator)
    by_image = [gate_selectivity(gates, row_tasks, 4, torch.Generator().manual_seed(s), rows_per_image=views).item()
                for s in range(20)]
    by_row = [gate_selectivity(gates, row_tasks, 4, torch.Generator().manual_seed(s)).item() for s in range(20)]
    assert 0.5 < sum(by_image) / 20 < 1.6
    assert sum(by_row) / 20 > 2.5


def test_gate_selectivity_recomputes_grouping_dependent_gates_for_its_chance_level():
    """Gates that are a statistic of the row's group (like view agreement's per-task ω) differ between any two
    random groups by estimation noise alone. Scored against fixed gates the ratio is far above 1; with
    ``gates_of`` (the gates recomputed under each random grouping) random tasks score about 1."""
    generator = torch.Generator().manual_seed(0)
    n_images, rows_per_image, n_tasks, n_factors = 256, 2, 4, 8
    per_image = torch.rand(n_images, n_factors, generator=generator)                   # any per-image quantity

    def gates_of(row_tasks: torch.Tensor) -> torch.Tensor:                            # the group mean of it
        image_tasks = row_tasks.view(-1, rows_per_image)[:, 0]
        membership = torch.nn.functional.one_hot(image_tasks, n_tasks).float()
        group_means = membership.T @ per_image / membership.sum(0)[:, None]
        return group_means[image_tasks].repeat_interleave(rows_per_image, dim=0)

    row_tasks = torch.randperm(n_images, generator=generator).remainder(n_tasks).repeat_interleave(rows_per_image)
    gates = gates_of(row_tasks)
    fixed = gate_selectivity(gates, row_tasks, n_tasks, torch.Generator().manual_seed(1), rows_per_image)
    regrouped = [float(gate_selectivity(gates_of(tasks), tasks, n_tasks, torch.Generator().manual_seed(1),
                                        rows_per_image, gates_of=gates_of))
                 for tasks in (torch.randperm(n_images, generator=generator).remainder(n_tasks)
                               .repeat_interleave(rows_per_image) for _ in range(20))]
    assert float(fixed) > 10
    assert 0.6 < sum(regrouped) / len(regrouped) < 1.6, regrouped
