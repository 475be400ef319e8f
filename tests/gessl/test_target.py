import pytest
import torch
import torch.nn.functional as F

from tc2ssl.gessl.target import kl_to_target, onehot_cross_entropy


def test_kl_matches_torch_kl_div_and_is_nonnegative():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 6, 6, generator=g, dtype=torch.float64).log_softmax(-1)
    current = torch.randn(2, 6, 6, generator=g, dtype=torch.float64).log_softmax(-1)
    reference = F.kl_div(current.reshape(12, 6), target.reshape(12, 6), log_target=True, reduction="batchmean")
    assert torch.allclose(kl_to_target(target, current), reference, atol=1e-12)
    assert float(kl_to_target(target, current)) > 0
    assert float(kl_to_target(current, current)) == 0.0


def test_no_gradient_reaches_the_target_and_zero_gradient_at_equality():
    logits = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    target_logits = logits.detach().clone().requires_grad_(True)
    loss = kl_to_target(target_logits.log_softmax(-1), logits.log_softmax(-1))
    grad, = torch.autograd.grad(loss, logits)
    assert target_logits.grad is None and grad.abs().max() < 1e-15


def test_onehot_is_the_diagonal_cross_entropy():
    log_probs = torch.randn(5, 5, dtype=torch.float64).log_softmax(-1)
    assert torch.allclose(onehot_cross_entropy(log_probs), F.nll_loss(log_probs, torch.arange(5)))


def test_shape_errors_name_the_layout():
    with pytest.raises(ValueError, match=r"\[\.\.\., N, N\]"):
        onehot_cross_entropy(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="same shape"):
        kl_to_target(torch.zeros(3, 3), torch.zeros(2, 2))
