import itertools

import pytest
import torch
from lightly.loss import NTXentLoss

from tc2ssl.errors import ConfigError
from tc2ssl.tc2.losses import (brier_query_loss, loss_tc2, loss_v, loss_v_optimum, loss_w, nt_xent_multiview,
                               proto_mse_loss)


def orthonormal(dim: int, n_factors: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(dim, n_factors, generator=g, dtype=torch.float64)).Q


def soft_threshold(c: torch.Tensor, threshold: float) -> torch.Tensor:
    return c.sign() * (c.abs() - threshold).clamp(min=0)


def spiked(rows: int = 50, dim: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scales = torch.linspace(3.0, 0.1, dim, dtype=torch.float64)
    rotation = orthonormal(dim, dim, seed + 1)
    return (torch.randn(rows, dim, generator=g, dtype=torch.float64) * scales) @ rotation.T + 0.3


# ---------------------------------------------------------------- L_v (Eq. 1)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_loss_v_optimum_is_the_trailing_eigenvalue_sum(reduction):  # T4
    zf, n_factors = spiked(), 3
    eigenvalues, eigenvectors = torch.linalg.eigh(zf.T @ zf)           # ascending
    expected = eigenvalues[:-n_factors].sum() / (zf.shape[0] if reduction == "mean" else 1)
    top = eigenvectors[:, -n_factors:]
    assert abs(loss_v(top, zf, reduction) - expected) < 1e-8
    assert abs(loss_v_optimum(zf, n_factors, reduction) - expected) < 1e-8
    g = torch.Generator().manual_seed(2)
    for i in range(100):
        candidate = torch.randn(8, n_factors, generator=g, dtype=torch.float64)
        if i % 2 == 0:
            candidate = torch.linalg.qr(candidate).Q
        assert loss_v(candidate, zf, reduction) >= expected - 1e-10


def test_loss_v_terms_and_reductions():
    zf = torch.randn(10, 4, dtype=torch.float64)
    basis = 2 * orthonormal(4, 2)                                           # VᵀV = 4I
    residual = zf - zf @ basis @ basis.T
    torch.testing.assert_close(loss_v(basis, zf, "sum"), 2 * 9.0 + residual.square().sum())
    torch.testing.assert_close(loss_v(basis, zf, "mean"), 2 * 9.0 + residual.square().sum() / 10)


def test_loss_v_casts_half_precision_up():
    zf, basis = torch.randn(8, 4).to(torch.bfloat16), orthonormal(4, 2).to(torch.bfloat16)
    assert loss_v(basis, zf).dtype == torch.float32


# ---------------------------------------------------------------- L_w (Eq. 2) and the LASSO optimum
def prox_gradient_lasso(z, basis, l1_coef, steps=60, step_size=0.2):
    """Proximal gradient on the per-sample (S2) over free W: smooth part from loss_w, ℓ1 by soft-thresholding."""
    weights = torch.zeros(z.shape[0], basis.shape[1], dtype=z.dtype, requires_grad=True)
    for _ in range(steps):
        smooth = loss_w(z, weights, basis, l1_coef=0.0, reduction="sum")
        (grad,) = torch.autograd.grad(smooth, weights)
        weights = soft_threshold(weights.detach() - step_size * grad, step_size * l1_coef).requires_grad_(True)
    return weights.detach()


def test_loss_w_is_minimised_at_the_soft_threshold():  # T7: Eq. 2's per-sample optimum (WeightNet: test_weight_net)
    z = torch.nn.functional.normalize(torch.randn(20, 6, dtype=torch.float64), dim=-1)
    basis = orthonormal(6, 4)
    coords = z @ basis
    sparsities = []
    for l1_coef in [0.0, 0.1, 0.3, 0.6, 1.0]:
        free = prox_gradient_lasso(z, basis, l1_coef)
        closed_form = soft_threshold(coords, l1_coef / 2)
        torch.testing.assert_close(free, closed_form, atol=1e-5, rtol=0)
        gates = (1 - l1_coef / (2 * coords.abs())).clamp(min=0)             # the gated optimum, g ∈ [0, 1]
        torch.testing.assert_close(gates * coords, closed_form, atol=1e-12, rtol=0)
        # loss_w itself is minimised there: no perturbation of W lowers it
        best = loss_w(z, closed_form, basis, l1_coef)
        for seed in range(5):
            noise = 1e-3 * torch.randn(closed_form.shape, generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.float64)
            assert loss_w(z, closed_form + noise, basis, l1_coef) > best
        sparsities.append((free == 0).float().mean().item())
    assert all(a <= b for a, b in itertools.pairwise(sparsities)) and sparsities[-1] > sparsities[0]


def test_loss_w_value_and_reductions():
    """Eq. 2 on a case worked by hand: V = I, z = [[1, 0], [0, 2]], W = [[0.5, 0], [0, 0]], λ₁ = 0.5.
    Row 1: ‖(0.5, 0)‖² + 0.5·0.5 = 0.5; row 2: ‖(0, 2)‖² + 0 = 4. Mean 2.25, sum 4.5."""
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    weights = torch.tensor([[0.5, 0.0], [0.0, 0.0]])
    basis = torch.eye(2)
    assert loss_w(z, weights, basis, 0.5, "mean").item() == pytest.approx(2.25)
    assert loss_w(z, weights, basis, 0.5, "sum").item() == pytest.approx(4.5)
    # a non-identity V: z = V w exactly leaves only the ℓ1 term, λ₁ Σ|w| = 0.5 · (1 + 2)
    basis = torch.tensor([[0.6, -0.8], [0.8, 0.6]])
    exact = torch.tensor([[1.0, -2.0]])
    assert loss_w(exact @ basis.T, exact, basis, 0.5, "mean").item() == pytest.approx(1.5, abs=1e-6)


def test_loss_tc2():  # Eq. 3
    assert loss_tc2(torch.tensor(2.0), torch.tensor(3.0), 0.5).item() == 3.5


# ---------------------------------------------------------------- NT-Xent
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_matches_lightly_for_two_views(temperature):
    z = torch.randn(7, 2, 5, dtype=torch.float64)
    expected = NTXentLoss(temperature=temperature)(z[:, 0], z[:, 1])
    torch.testing.assert_close(nt_xent_multiview(z, temperature), expected, atol=1e-12, rtol=0)


def test_nt_xent_multiview_is_the_mean_over_view_pairs():  # D-SSL-02
    z = torch.randn(6, 3, 4, dtype=torch.float64)
    pairwise = NTXentLoss(temperature=0.3)
    expected = sum(pairwise(z[:, a], z[:, b]) for a, b in [(0, 1), (0, 2), (1, 2)]) / 3
    torch.testing.assert_close(nt_xent_multiview(z, 0.3), expected, atol=1e-12, rtol=0)


def test_nt_xent_in_factor_space():  # T8: NT-Xent(ẑ) == NT-Xent(W) for orthonormal V
    basis = orthonormal(10, 4)
    weights = torch.randn(8, 2, 4, dtype=torch.float64)
    torch.testing.assert_close(nt_xent_multiview(weights @ basis.T, 0.5), nt_xent_multiview(weights, 0.5),
                               atol=1e-6, rtol=0)


def test_losses_work_under_torch_func():
    z = torch.randn(3, 5, 3, 4, dtype=torch.float64)                     # 3 tasks of [n=5, v=3, d=4]
    batched = torch.func.vmap(lambda t: nt_xent_multiview(t, 0.5))(z)
    torch.testing.assert_close(batched, torch.stack([nt_xent_multiview(t, 0.5) for t in z]))
    grad = torch.func.grad(lambda t: nt_xent_multiview(t, 0.5))(z[0])
    leaf = z[0].clone().requires_grad_(True)
    nt_xent_multiview(leaf, 0.5).backward()
    torch.testing.assert_close(grad, leaf.grad)
    anchors = torch.randn(5, 4, dtype=torch.float64)
    assert torch.func.grad(lambda q: brier_query_loss(q, anchors, 0.5))(z[0]).shape == (5, 3, 4)
    basis = orthonormal(4, 2)
    assert torch.func.grad(lambda v: loss_v(v, z[0, :, 0]))(basis).shape == (4, 2)
    w = torch.randn(5, 2, dtype=torch.float64)
    assert torch.func.grad(lambda w_: loss_w(z[0, :, 0], w_, basis))(w).shape == (5, 2)


# ---------------------------------------------------------------- L_sse^q (§3.7)
def test_brier_collapsed_embeddings_score_one_minus_one_over_n():  # T11
    n = 6
    z_query = torch.ones(n, 2, 3, dtype=torch.float64)
    assert brier_query_loss(z_query, torch.ones(n, 3, dtype=torch.float64), 0.5).item() == pytest.approx(1 - 1 / n,
                                                                                                         abs=1e-15)
    assert brier_query_loss(z_query, torch.ones(n, 3, dtype=torch.float64), 0.5, "sum").item() == pytest.approx(
        2 * n * (1 - 1 / n), abs=1e-12)


@pytest.mark.parametrize("n", [2, 3, 8, 17, 32])
@pytest.mark.parametrize("temperature", [0.05, 0.5, 2.0])
def test_brier_collapsed_encoder_scores_one_minus_one_over_n_for_any_common_vector(n, temperature):  # T11
    """Every query view and every anchor is the same (arbitrary) vector: p is uniform over the n images, so each
    row scores (1 − 1/n)² + (n − 1)/n² = 1 − 1/n, whatever τ, the vector or the number of query views."""
    common = torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    z_query = common.expand(n, 3, 5).clone() * torch.rand(n, 3, 1, dtype=torch.float64) * 4   # any positive scale
    anchors = torch.nn.functional.normalize(common, dim=0).expand(n, 5).clone()
    loss = brier_query_loss(z_query, anchors, temperature)
    assert loss.dtype == torch.float64
    assert abs(loss.item() - (1 - 1 / n)) < 1e-14
    assert abs(brier_query_loss(z_query, anchors, temperature, "sum").item() - 3 * n * (1 - 1 / n)) < 1e-11


def test_brier_perfect_prototypes_decrease_to_zero_as_temperature_falls():  # T11: τ → 0 gives Brier → 0
    anchors = torch.linalg.qr(torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))).Q.T
    z_query = anchors[:, None, :].repeat(1, 2, 1) * 3.0                  # each query view sits on its own anchor
    losses = [brier_query_loss(z_query, anchors, t).item() for t in (2.0, 1.0, 0.3, 0.1, 0.03, 0.01)]
    assert all(a > b for a, b in itertools.pairwise(losses))
    assert losses[-1] < 1e-20 and losses[0] > 0.1


def test_brier_perfect_prototypes_at_low_temperature():  # T11
    anchors = torch.eye(5, dtype=torch.float64)
    z_query = anchors[:, None, :].repeat(1, 3, 1) * 2.0
    assert brier_query_loss(z_query, anchors, 0.01).item() < 1e-20
    assert brier_query_loss(z_query, anchors, 1.0).item() > 0.1


def test_proto_mse():
    anchors = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    z_query = torch.tensor([[[3.0, 0.0], [0.0, 1.0]], [[0.0, 5.0], [0.0, 5.0]]])
    # rows: identical direction -> 0; orthogonal -> ‖e1 − e2‖² = 2
    torch.testing.assert_close(proto_mse_loss(z_query, anchors), torch.tensor(0.5))
    torch.testing.assert_close(proto_mse_loss(z_query, anchors, "sum"), torch.tensor(2.0))


def test_shape_and_value_errors():
    with pytest.raises(ValueError, match=r"\[d, n_f\] with d = 4"):
        loss_v(torch.randn(5, 2), torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"W must be \[R, n_f\] = \[3, 2\]"):
        loss_w(torch.randn(3, 4), torch.randn(3, 3), torch.randn(4, 2))
    with pytest.raises(ConfigError, match="reduction"):
        loss_v(torch.randn(4, 2), torch.randn(3, 4), reduction="none")
    with pytest.raises(ConfigError, match="l1_coef"):
        loss_w(torch.randn(3, 4), torch.randn(3, 2), torch.randn(4, 2), l1_coef=-1.0)
    with pytest.raises(ValueError, match=r"anchors must be \[n_images, d\] = \[4, 3\]"):
        brier_query_loss(torch.randn(4, 2, 3), torch.randn(3, 3), 0.5)
    with pytest.raises(ConfigError, match="temperature"):
        brier_query_loss(torch.randn(4, 2, 3), torch.randn(4, 3), 0.0)
    with pytest.raises(ValueError, match=r"\[n_images >= 2, n_views >= 2, d\]"):
        nt_xent_multiview(torch.randn(4, 1, 3))
    with pytest.raises(ConfigError, match="n_factors"):
        loss_v_optimum(torch.randn(5, 3), 4)
