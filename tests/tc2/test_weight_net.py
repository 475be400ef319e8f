import pytest
import torch

from tc2ssl.errors import ConfigError
from tc2ssl.tc2.factor_net import FactorNet
from tc2ssl.tc2.losses import loss_w
from tc2ssl.tc2.stats import batch_statistics
from tc2ssl.tc2.weight_net import WeightNet, calibrate


def orthonormal(dim: int, n_factors: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(dim, n_factors, generator=g, dtype=dtype)).Q


def soft_threshold(c: torch.Tensor, threshold: float) -> torch.Tensor:
    return c.sign() * (c.abs() - threshold).clamp(min=0)


@pytest.mark.parametrize("mode", ["gated", "free"])
def test_shapes(mode):  # T2: W is [N·m, n_f], ẑ is [N·m, d]
    torch.manual_seed(0)
    n_images, n_views, dim, n_factors = 6, 4, 10, 5
    zf = torch.randn(n_images * n_views, dim)
    basis = FactorNet(dim, n_factors)(batch_statistics(zf))
    net = WeightNet(dim, n_factors, mode=mode)
    assert net(zf, basis).shape == (n_images * n_views, n_factors)
    assert calibrate(zf, basis, net).shape == (n_images * n_views, dim)


def test_gates_start_open_at_the_bias_init():
    torch.manual_seed(0)
    net = WeightNet(6, 3, gate_bias_init=2.0)
    torch.nn.init.zeros_(net.mlp[-1].weight)
    z, basis = torch.randn(4, 6), orthonormal(6, 3, dtype=torch.float32)
    gates = net.gates(z, basis)
    torch.testing.assert_close(gates, torch.full((4, 3), torch.sigmoid(torch.tensor(2.0)).item()))
    torch.testing.assert_close(net(z, basis), gates * (z @ basis))


def test_identity_calibration():  # T6: n_f = d, orthonormal V, gates = 1 -> ẑ = z
    dim = 8
    net = WeightNet(dim, dim).double()
    with torch.no_grad():
        net.mlp[-1].weight.zero_()
        net.mlp[-1].bias.fill_(50.0)  # σ(50) == 1 in float64
    z = torch.randn(16, dim, dtype=torch.float64)
    torch.testing.assert_close(calibrate(z, orthonormal(dim, dim), net), z, atol=1e-6, rtol=0)


def test_gated_net_learns_the_lasso_optimum(one_thread):  # T7: the gated form reaches soft(c, λ₁/2)
    dim, l1_coef = 8, 0.3
    basis = orthonormal(dim, dim, dtype=torch.float32)
    z = torch.nn.functional.normalize(torch.randn(32, dim, generator=torch.Generator().manual_seed(1)), dim=-1)
    optimum = loss_w(z, soft_threshold(z @ basis, l1_coef / 2), basis, l1_coef)
    torch.manual_seed(0)
    net = WeightNet(dim, dim)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-2)
    for _ in range(150):
        loss = loss_w(z, net(z, basis), basis, l1_coef)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss_w(z, net(z, basis), basis, l1_coef) < 1.01 * optimum


def test_task_context_is_an_extra_input():
    torch.manual_seed(0)
    net = WeightNet(6, 3, task_context=True)
    torch.nn.init.normal_(net.mlp[-1].weight)
    z, basis = torch.randn(4, 6), orthonormal(6, 3, dtype=torch.float32)
    a = net(z, basis, context=torch.zeros(4, 6))
    b = net(z, basis, context=torch.ones(4, 6))
    assert a.shape == (4, 3) and not torch.allclose(a, b)
    with pytest.raises(ValueError, match="task_context=True"):
        net(z, basis)
    with pytest.raises(ValueError, match="task_context=False"):
        WeightNet(6, 3)(z, basis, context=z)


def test_invalid_configuration_and_shapes():
    with pytest.raises(ConfigError, match="weight_mode"):
        WeightNet(4, 2, mode="sparse")
    net = WeightNet(4, 2)
    with pytest.raises(ValueError, match=r"\[4, 2\]"):
        net(torch.randn(3, 4), torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"\[R, 4\]"):
        net(torch.randn(3, 5), torch.randn(4, 2))
    with pytest.raises(ValueError, match="gated"):
        WeightNet(4, 2, mode="free").gates(torch.randn(3, 4), torch.randn(4, 2))


def test_free_mode_ignores_the_basis():  # the literal f_w(z_j): input z only
    torch.manual_seed(0)
    net = WeightNet(5, 2, mode="free")
    z = torch.randn(3, 5)
    torch.testing.assert_close(net(z, orthonormal(5, 2, 0, torch.float32)), net(z, orthonormal(5, 2, 1, torch.float32)))
