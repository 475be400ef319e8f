import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tc2ssl.diagnostics.coding_rate import (class_coding_rate, coding_rate, coding_rate_reduction,
                                            instance_labels, logdet_identity_plus_gram)


def numpy_rates(Z: np.ndarray, labels: np.ndarray, eps2: float) -> tuple[float, float]:
    """An independent reference: the MCR² formulas with d×d matrices and numpy's slogdet."""
    n, d = Z.shape
    rate = 0.5 * np.linalg.slogdet(np.eye(d) + d / (n * eps2) * Z.T @ Z)[1]
    class_rate = 0.0
    for label in np.unique(labels):
        rows = Z[labels == label]
        m = rows.shape[0]
        class_rate += m / (2 * n) * np.linalg.slogdet(np.eye(d) + d / (m * eps2) * rows.T @ rows)[1]
    return rate, class_rate


def unit_rows(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=1)


@pytest.mark.parametrize("n,d,k", [(60, 8, 3), (12, 40, 4), (30, 30, 5), (50, 16, 7)])
def test_matches_numpy_reference(n, d, k):
    Z = unit_rows(n, d, seed=n + d)
    labels = torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(k))
    rates = coding_rate_reduction(Z, labels, eps2=0.5)
    ref_r, ref_rc = numpy_rates(Z.numpy(), labels.numpy(), 0.5)
    assert float(rates.R) == pytest.approx(ref_r, abs=1e-8)
    assert float(rates.Rc) == pytest.approx(ref_rc, abs=1e-8)
    assert float(rates.dR) == pytest.approx(ref_r - ref_rc, abs=1e-8)


def test_delta_r_non_negative_on_random_partitions():
    gen = torch.Generator().manual_seed(1)
    for trial in range(200):
        n, d, k = int(torch.randint(4, 40, (1,), generator=gen)), int(torch.randint(2, 20, (1,), generator=gen)), \
            int(torch.randint(1, 6, (1,), generator=gen))
        Z = unit_rows(n, d, seed=trial)
        if trial % 2:
            membership = torch.softmax(torch.randn(n, k, generator=gen, dtype=torch.float64) * 3, dim=1)
        else:
            membership = torch.randint(0, k, (n,), generator=gen)
        assert float(coding_rate_reduction(Z, membership, eps2=0.5).dR) >= -1e-10


def test_isotropic_closed_form():
    # r copies of the standard basis: ZᵀZ = (n/d)·I, so R = d/2 · log(1 + 1/ε²)
    d, copies, eps2 = 16, 5, 0.5
    Z = torch.eye(d, dtype=torch.float64).repeat(copies, 1)
    assert float(coding_rate(Z, eps2)) == pytest.approx(0.5 * d * math.log(1 + 1 / eps2), rel=1e-12)


def test_collapsed_rate_is_one_direction_and_delta_r_is_zero():
    n, d, eps2 = 40, 32, 0.5
    Z = unit_rows(1, d).repeat(n, 1)
    labels = torch.arange(n) % 4
    rates = coding_rate_reduction(Z, labels, eps2)
    assert float(rates.R) == pytest.approx(0.5 * math.log(1 + d / eps2), rel=1e-10)
    assert float(rates.dR) == pytest.approx(0.0, abs=1e-10)
    assert float(coding_rate(unit_rows(n, d), eps2)) > 5 * float(rates.R)   # far below a spread-out set


def test_two_orthogonal_clusters_closed_form():
    n, d, eps2 = 20, 8, 0.5
    basis = torch.eye(d, dtype=torch.float64)
    labels = torch.arange(n) % 2
    Z = basis[labels]                                             # class 0 on e1, class 1 on e2
    expected = math.log(1 + d / (2 * eps2)) - 0.5 * math.log(1 + d / eps2)
    assert float(coding_rate_reduction(Z, labels, eps2).dR) == pytest.approx(expected, rel=1e-10)
    same_axis = basis[torch.zeros(n, dtype=torch.long)]
    assert float(coding_rate_reduction(same_axis, labels, eps2).dR) == pytest.approx(0.0, abs=1e-10)


def test_orthogonal_invariance():
    Z = unit_rows(30, 10)
    Q, _ = torch.linalg.qr(torch.randn(10, 10, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    assert float(coding_rate(Z @ Q)) == pytest.approx(float(coding_rate(Z)), abs=1e-10)


@pytest.mark.parametrize("n,d", [(5, 64), (64, 5), (16, 16)])
def test_sylvester_form_equals_direct_logdet(n, d):
    Z = torch.randn(n, d, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    direct = torch.logdet(torch.eye(d, dtype=torch.float64) + 0.3 * Z.T @ Z)
    assert float(logdet_identity_plus_gram(Z, 0.3)) == pytest.approx(float(direct), abs=1e-9)
    batched = logdet_identity_plus_gram(torch.stack([Z, 2 * Z]), torch.tensor([0.3, 0.3], dtype=torch.float64))
    assert float(batched[0]) == pytest.approx(float(direct), abs=1e-9)
    assert float(batched[1]) == pytest.approx(float(torch.logdet(torch.eye(d, dtype=torch.float64)
                                                                  + 1.2 * Z.T @ Z)), abs=1e-9)


def test_soft_one_hot_equals_hard_and_unequal_groups():
    Z = unit_rows(23, 12)
    labels = torch.tensor([0] * 3 + [1] * 12 + [3] * 8)           # unequal sizes and an unused label 2
    one_hot = F.one_hot(labels, 5).double()                       # two empty columns
    assert float(class_coding_rate(Z, one_hot)) == pytest.approx(float(class_coding_rate(Z, labels)), abs=1e-10)


def test_instance_partition_batched_path_matches_reference():
    Z = unit_rows(2 * 30, 16)
    labels = instance_labels(30, 2)
    assert labels[:4].tolist() == [0, 0, 1, 1]
    ref_r, ref_rc = numpy_rates(Z.numpy(), labels.numpy(), 0.1)
    rates = coding_rate_reduction(Z, labels, eps2=0.1)
    assert float(rates.Rc) == pytest.approx(ref_rc, abs=1e-8)
    assert float(rates.dR) == pytest.approx(ref_r - ref_rc, abs=1e-8)


def test_gradient_is_finite_and_matches_finite_differences():
    Z = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    assert torch.autograd.gradcheck(lambda z: coding_rate_reduction(z, labels, 0.5).dR, (Z,))
    z32 = unit_rows(64, 32).float().requires_grad_(True)
    coding_rate_reduction(z32, instance_labels(32, 2), 0.01).dR.backward()
    assert torch.isfinite(z32.grad).all() and float(z32.grad.abs().sum()) > 0


def test_bad_inputs_raise():
    Z = unit_rows(4, 3)
    with pytest.raises(ValueError, match="eps2"):
        coding_rate(Z, 0.0)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        class_coding_rate(Z, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="rows summing to 1"):
        class_coding_rate(Z, torch.ones(4, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\[n_samples, dim\]"):
        coding_rate(torch.zeros(3))
