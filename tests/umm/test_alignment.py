"""The alternative reading: k-means prior and ridge alignment, Danskin-exact."""
import pytest
import torch

from tc2ssl.umm.alignment import alignment_objective, kmeans, ridge_alignment


def test_kmeans_recovers_separated_clusters_and_is_deterministic():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[5.0, 0.0], [0.0, 5.0], [-5.0, -5.0]], dtype=torch.float64)
    truth = torch.arange(60) % 3
    z = centres[truth] + 0.1 * torch.randn(60, 2, generator=gen, dtype=torch.float64)
    labels, _ = kmeans(z, 3, generator=torch.Generator().manual_seed(1))
    # the same partition up to a relabelling: every true cluster maps to one found label
    assert all(len(set(labels[truth == c].tolist())) == 1 for c in range(3))
    assert len(set(labels.tolist())) == 3
    again, _ = kmeans(z, 3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(labels, again)
    with pytest.raises(ValueError, match="n_clusters"):
        kmeans(z, 61)


def test_ridge_alignment_value_and_danskin_gradient():
    gen = torch.Generator().manual_seed(2)
    z_early = torch.randn(20, 6, generator=gen, dtype=torch.float64)
    weights = torch.randn(6, 4, generator=gen, dtype=torch.float64, requires_grad=True)

    def late(w):
        return torch.tanh(z_early @ w) + 0.1 * torch.randn(20, 4, generator=torch.Generator().manual_seed(3),
                                                          dtype=torch.float64)

    z_late = late(weights)
    # the value equals the ridge minimum computed independently (normal equations in numpy)
    import numpy as np
    e, l_ = z_early.numpy(), z_late.detach().numpy()
    p_star = np.linalg.solve(e.T @ e + 0.1 * np.eye(6), e.T @ l_)
    expected = (np.sum((l_ - e @ p_star) ** 2) + 0.1 * np.sum(p_star ** 2)) / np.sum(l_ ** 2)
    assert float(ridge_alignment(z_early, z_late.detach(), 0.1)) == pytest.approx(expected, rel=1e-10)
    # Danskin: detaching P* gives the gradient of autograd through the solve
    (danskin,) = torch.autograd.grad(ridge_alignment(z_early, late(weights), 0.1, danskin=True), weights)
    (through,) = torch.autograd.grad(ridge_alignment(z_early, late(weights), 0.1, danskin=False), weights)
    assert torch.allclose(danskin, through, atol=1e-10, rtol=1e-6)
    assert float(danskin.abs().max()) > 1e-4
    with pytest.raises(ValueError, match="γ"):
        ridge_alignment(z_early, z_late, 0.0)


def test_alignment_objective_ascent_step_does_not_decrease_j():
    gen = torch.Generator().manual_seed(4)
    z_early = torch.randn(40, 8, generator=gen, dtype=torch.float64)
    weights = (0.5 * torch.randn(8, 6, generator=gen, dtype=torch.float64)).requires_grad_(True)

    def objective(w):
        return alignment_objective(z_early, torch.tanh(z_early @ w), n_clusters=4,
                                   generator=torch.Generator().manual_seed(5))["objective"]

    before = objective(weights)
    (grad,) = torch.autograd.grad(before, weights)
    after = objective(weights.detach() + 1e-4 * grad)
    assert float(after.detach()) >= float(before.detach())
    parts = alignment_objective(z_early, torch.tanh(z_early @ weights), n_clusters=4)
    assert 0 <= float(parts["alignment"].detach()) <= 1 and float(parts["dR_per_dim"].detach()) >= 0
