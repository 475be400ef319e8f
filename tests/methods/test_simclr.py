"""SimCLR (src/tc2ssl/methods/simclr.py): NT-Xent parity with lightly, the multi-view support loss, the Brier query
loss, and the method contract (Adam lowers the loss; the functional path equals the module path)."""
import torch
import torch.nn.functional as F
from lightly.loss import NTXentLoss

from tc2ssl.methods.base import LossContext


def test_two_view_support_and_baseline_losses_match_lightly_ntxent(make_method, views, embed):
    method = make_method("simclr", temperature=0.2)
    z = embed(method, views[:, :2])
    reference = NTXentLoss(temperature=0.2)(z[:, 0], z[:, 1])
    torch.testing.assert_close(method.baseline_loss(z, LossContext()), reference)
    torch.testing.assert_close(method.support_loss(z, LossContext()), reference)


def test_three_view_support_loss_is_the_mean_over_view_pairs(make_method, views, embed):
    method = make_method("simclr")
    z = embed(method, views)
    ntxent = NTXentLoss(temperature=0.5)
    # both orderings of each pair: NT-Xent is symmetric in its two arguments
    pairs = [ntxent(z[:, u], z[:, w]) for u, w in ((0, 1), (0, 2), (1, 2))]
    torch.testing.assert_close(method.support_loss(z, LossContext()), torch.stack(pairs).mean(), rtol=1e-5,
                               atol=1e-6)


def test_adam_lowers_the_baseline_loss(make_method, views, adam_lowers_baseline):
    before, after = adam_lowers_baseline(make_method("simclr"), views)
    assert after < before - 0.05


def test_functional_path_matches_the_module_path(make_method, views, functional_support_check):
    grads = functional_support_check(make_method("simclr"), views)
    assert any(k.startswith("backbone.") for k in grads) and any(k.startswith("projector.") for k in grads)


def test_query_loss_prefers_queries_near_their_own_anchor_and_does_not_reward_collapse(make_method, views, embed):
    method = make_method("simclr")
    z = F.normalize(embed(method, views[:, :1]).detach(), dim=-1)                 # [8, 1, d]
    anchors = z[:, 0]
    matched = method.query_loss(z, anchors, LossContext())
    swapped = method.query_loss(z, anchors.roll(1, 0), LossContext())
    collapsed = method.query_loss(z[:1].expand_as(z), anchors, LossContext())
    assert matched < swapped and matched < collapsed
