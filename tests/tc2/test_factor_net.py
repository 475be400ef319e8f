import math

import pytest
import torch

from tc2ssl.errors import ConfigError
from tc2ssl.tc2.factor_net import FactorNet
from tc2ssl.tc2.losses import loss_v, loss_v_optimum
from tc2ssl.tc2.stats import batch_statistics


def spiked(rows: int, scales: list[float], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rotation, _ = torch.linalg.qr(torch.randn(len(scales), len(scales), generator=g))
    return (torch.randn(rows, len(scales), generator=g) * torch.tensor(scales)) @ rotation.T


def test_shape_and_orthonormal_init():  # T2; §3.4: V0ᵀV0 = I, so the orthogonality term is 0 at init
    torch.manual_seed(0)
    net = FactorNet(10, 4)
    zf = torch.randn(30, 10)
    basis = net(batch_statistics(zf))
    assert basis.shape == (10, 4)
    torch.testing.assert_close(basis.T @ basis, torch.eye(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(loss_v(basis, zf, reduction="sum"), ((zf - zf @ basis @ basis.T) ** 2).sum())


def test_output_depends_on_statistics_after_training_the_mlp():
    torch.manual_seed(0)
    net = FactorNet(6, 2)
    torch.nn.init.normal_(net.mlp[-1].weight)
    a, b = net(batch_statistics(torch.randn(20, 6))), net(batch_statistics(torch.randn(20, 6) * 3))
    assert not torch.allclose(a, b)


def test_learns_the_top_eigenspace(one_thread):  # T5
    zf = spiked(64, [3.0, 2.5, 2.0, 0.3, 0.25, 0.2, 0.15, 0.1])
    n_factors = 3
    torch.manual_seed(0)
    net = FactorNet(8, n_factors)
    stats = batch_statistics(zf)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(150):
        loss = loss_v(net(stats), zf)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    basis = net(stats).detach()
    assert loss_v(basis, zf) <= 1.05 * loss_v_optimum(zf, n_factors)
    top = torch.linalg.eigh(zf.T @ zf).eigenvectors[:, -n_factors:]
    cos_largest_angle = torch.linalg.svdvals(top.T @ torch.linalg.qr(basis).Q).min().clamp(max=1.0)
    assert math.degrees(math.acos(cos_largest_angle)) < 10.0


def test_invalid_configuration_and_input():
    with pytest.raises(ConfigError, match="exceeds the representation dimension"):
        FactorNet(4, 5)
    with pytest.raises(ValueError, match=r"\[5, 4\]"):
        FactorNet(4, 2)(torch.randn(4, 4))


def test_functional_call_gradients_match_autograd():
    torch.manual_seed(0)
    net = FactorNet(5, 2)
    torch.nn.init.normal_(net.mlp[-1].weight)
    zf = torch.randn(12, 5)
    stats = batch_statistics(zf)
    params = dict(net.named_parameters())
    grads = torch.func.grad(lambda p: loss_v(torch.func.functional_call(net, p, (stats,)), zf))(params)
    loss_v(net(stats), zf).backward()
    for name, p in net.named_parameters():
        torch.testing.assert_close(grads[name], p.grad)


def test_pca_init_puts_the_base_at_the_eq1_optimum_of_the_batch():
    """plugin.factor_init=pca: V0 ← top eigenvectors of Z_fᵀZ_f; with the MLP's zero init, L_v = its optimum."""
    torch.manual_seed(0)
    zf = torch.randn(256, 12, dtype=torch.float64) @ torch.diag(torch.linspace(3.0, 0.1, 12, dtype=torch.float64))
    net = FactorNet(12, 4).double()
    v = net(batch_statistics(zf))
    assert loss_v(v, zf) > 1.5 * loss_v_optimum(zf, 4)                 # random orthonormal V0: far from it
    net.init_base_from(zf)
    v = net(batch_statistics(zf))
    torch.testing.assert_close(loss_v(v, zf), loss_v_optimum(zf, 4), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(v.T @ v, torch.eye(4, dtype=torch.float64), rtol=0, atol=1e-12)
    few_rows = FactorNet(12, 6).double()                                # 3 rows < 6 factors: completed
    few_rows.init_base_from(zf[:3])
    torch.testing.assert_close(few_rows.base.T @ few_rows.base, torch.eye(6, dtype=torch.float64), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"Z_f must be \[rows, d\] = \[R, 12\]"):
        net.init_base_from(zf[:, :5])
