import numpy as np
import pytest
import torch

from tc2ssl.tc2.stats import batch_statistics, normalize_rows


def test_statistics_shape():  # T2
    assert batch_statistics(torch.randn(24, 7)).shape == (8, 7)


def test_statistics_match_numpy_biased_covariance():  # T3
    zf = torch.randn(40, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3 + 1.5
    stats = batch_statistics(zf)
    assert stats.dtype == torch.float64
    np.testing.assert_allclose(stats[0].numpy(), zf.numpy().mean(0), rtol=0, atol=1e-10)
    np.testing.assert_allclose(stats[1:].numpy(), np.cov(zf.numpy().T, bias=True), rtol=0, atol=1e-10)


def test_half_precision_statistics_are_computed_in_float32():
    stats = batch_statistics(torch.randn(16, 4).to(torch.bfloat16))
    assert stats.dtype == torch.float32


def test_statistics_reject_wrong_shapes():
    with pytest.raises(ValueError, match=r"\[rows, dim\]"):
        batch_statistics(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match=r"\[rows, dim\]"):
        batch_statistics(torch.randn(0, 4))


def test_normalize_rows_gives_unit_rows_and_keeps_zero_rows():
    z = torch.cat([torch.randn(5, 3) * 10, torch.zeros(1, 3)])
    out = normalize_rows(z)
    torch.testing.assert_close(out[:5].norm(dim=-1), torch.ones(5))
    assert torch.equal(out[5], torch.zeros(3))
