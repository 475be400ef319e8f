import math

import pytest
import torch
import torch.nn.functional as F

from tc2ssl.gessl.head import PiHead, anchor_log_probs, pair_log_probs
from tc2ssl.gessl.target import onehot_cross_entropy
from tc2ssl.methods.moco import in_batch_info_nce


def test_kl_to_onehot_equals_the_infonce_cross_entropy():
    """KL(e_i ‖ π) = −log π_i: π's one-hot loss is InfoNCE with the other images' anchors as negatives."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(12, 2, 16, generator=g, dtype=torch.float64)
    tau = 0.3
    ours = onehot_cross_entropy(pair_log_probs(z, tau))
    first, second = F.normalize(z[:, 0], dim=-1), F.normalize(z[:, 1], dim=-1)
    labels = torch.arange(12)
    reference = 0.5 * (F.cross_entropy(second @ first.T / tau, labels)
                       + F.cross_entropy(first @ second.T / tau, labels))
    assert torch.allclose(ours, reference, atol=1e-12)
    moco_form = 0.5 * (in_batch_info_nce(z[:, 1], z[:, 0], tau) + in_batch_info_nce(z[:, 0], z[:, 1], tau))
    assert torch.allclose(ours, moco_form, atol=1e-12)


def test_rows_are_distributions_over_the_anchors():
    z = torch.randn(5, 2, 8, dtype=torch.float64)
    log_probs = pair_log_probs(z, 0.5)
    assert log_probs.shape == (2, 5, 5)
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(2, 5, dtype=torch.float64))


def test_separated_embeddings_at_low_temperature_give_zero_sigma():
    z = torch.eye(6, dtype=torch.float64)[:, None].expand(6, 2, 6)        # both views on the image's own axis
    assert float(onehot_cross_entropy(pair_log_probs(z, 0.01))) < 1e-12


def test_random_embeddings_at_high_temperature_give_log_n():
    z = torch.randn(128, 2, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sigma = float(onehot_cross_entropy(pair_log_probs(z, 100.0)))
    assert abs(sigma - math.log(128)) < 0.05 * math.log(128)


def test_pi_head_shapes_and_errors():
    head = PiHead(10, 16, 8)
    assert head(torch.randn(4, 10)).shape == (4, 8)
    with pytest.raises(ValueError, match="pooled features"):
        head(torch.randn(4, 2, 10))
    with pytest.raises(ValueError, match="two views"):
        pair_log_probs(torch.randn(4, 3, 8), 0.5)
    with pytest.raises(ValueError, match="same shape"):
        anchor_log_probs(torch.randn(4, 8), torch.randn(3, 8), 0.5)
    with pytest.raises(ValueError, match="temperature"):
        anchor_log_probs(torch.randn(4, 8), torch.randn(4, 8), 0.0)
