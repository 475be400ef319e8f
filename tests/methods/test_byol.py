import math

import pytest
import torch
import torch.nn.functional as F
from lightly.loss import NegativeCosineSimilarity

from tc2ssl.methods.base import LossContext


def lightly_byol(p0, p1, t0, t1):
    """BYOL's symmetric 2 − 2cos, from lightly's NegativeCosineSimilarity (D-SSL-02)."""
    ncs = NegativeCosineSimilarity()
    return 2 + 2 * 0.5 * (ncs(p0, t1) + ncs(p1, t0))


def test_two_view_loss_matches_lightly_with_calibrated_target(make_method, views, embed):
    method = make_method("byol")
    two = views[:, :2]
    mix = torch.randn(16, 16, generator=torch.Generator().manual_seed(2))
    calibrate = lambda z: z @ mix  # noqa: E731 - any map at the calibration point
    z = calibrate(embed(method, two).flatten(0, 1)).view(8, 2, -1)
    loss = method.support_loss(z, LossContext(views=two, calibrate=calibrate))
    p = method.predictor(z.flatten(0, 1)).view(8, 2, -1)
    with torch.no_grad():
        t = calibrate(method.target(two.flatten(0, 1))).view(8, 2, -1)
    torch.testing.assert_close(loss, lightly_byol(p[:, 0], p[:, 1], t[:, 0], t[:, 1]))


def test_without_views_the_target_is_the_stop_gradient_of_z(make_method, views, embed):
    method = make_method("byol")
    z = embed(method, views[:, :2]).detach().requires_grad_(True)
    loss = method.support_loss(z, LossContext())
    (grad,) = torch.autograd.grad(loss, z)
    z_ref = z.detach().clone().requires_grad_(True)
    p = method.predictor(z_ref.flatten(0, 1)).view(8, 2, -1)
    ref = lightly_byol(p[:, 0], p[:, 1], z_ref[:, 0].detach(), z_ref[:, 1].detach())
    (grad_ref,) = torch.autograd.grad(ref, z_ref)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(grad, grad_ref)


def test_three_views_is_the_mean_of_the_pairwise_losses(make_method, views, embed):
    method = make_method("byol")
    method.predictor.eval()  # row-independent predictor and target, so sub-batches see the same networks
    method.target.eval()
    z = embed(method, views)
    loss = method.support_loss(z, LossContext(views=views))
    pairs = [method.support_loss(z[:, [u, w]], LossContext(views=views[:, [u, w]]))
             for u, w in ((0, 1), (0, 2), (1, 2))]
    torch.testing.assert_close(loss, torch.stack(pairs).mean())


def test_views_that_do_not_match_the_embeddings_are_rejected(make_method, views, embed):
    method = make_method("byol")
    z = embed(method, views[:, :2])
    with pytest.raises(ValueError, match="views the embeddings came from"):
        method.support_loss(z, LossContext(views=views))


def test_adam_lowers_the_baseline_loss(make_method, views, adam_lowers_baseline):
    before, after = adam_lowers_baseline(make_method("byol"), views)
    assert after < before - 0.05


def test_functional_path_matches_and_reaches_the_predictor(make_method, views, functional_support_check):
    grads = functional_support_check(make_method("byol"), views[:, :2])
    predictor = [g for k, g in grads.items() if k.startswith("predictor.")]
    assert predictor and all(g.abs().sum() > 0 for g in predictor)
    assert not any(k.startswith("target.") for k in grads)


def test_momentum_update_and_no_gradient_to_the_target(make_method, views, embed):
    method = make_method("byol", momentum=0.99)
    online = dict(method.named_parameters())
    target_names = [k for k in online if k.startswith("target.")]
    assert target_names and not any(k in method.online_parameters() for k in target_names)
    loss = method.support_loss(embed(method, views[:, :2]), LossContext(views=views[:, :2]))
    loss.backward()
    assert all(online[k].grad is None and not online[k].requires_grad for k in target_names)
    with torch.no_grad():  # move the online network away from the target
        for k, p in method.online_parameters().items():
            p.add_(0.1)
    before = {k: online[k].detach().clone() for k in target_names}
    method.after_step(0.5)
    m = 1 - (1 - 0.99) * (math.cos(math.pi * 0.5) + 1) / 2  # cosine schedule 0.99 -> 1, halfway
    for k in target_names:
        source = online[k.removeprefix("target.")]
        torch.testing.assert_close(online[k], m * before[k] + (1 - m) * source)
    method.after_step(1.0)  # momentum 1 at the end: the target stays put
    frozen = {k: online[k].detach().clone() for k in target_names}
    with torch.no_grad():
        for p in method.online_parameters().values():
            p.add_(0.1)
    method.after_step(1.0)
    assert all(torch.equal(online[k], frozen[k]) for k in target_names)


def test_target_bn_statistics_change_only_with_update_state(make_method, views, embed):
    method = make_method("byol")
    stats = lambda: [b.clone() for k, b in method.target.named_buffers() if "running_mean" in k]  # noqa: E731
    before = stats()
    z = embed(method, views[:, :2])
    method.support_loss(z, LossContext(views=views[:, :2]))
    method.anchors(z, LossContext(views=views[:, :2]))
    assert all(torch.equal(a, b) for a, b in zip(before, stats()))
    method.training_loss(views[:, :2])
    assert not all(torch.equal(a, b) for a, b in zip(before, stats()))


def test_anchors_are_normalised_calibrated_target_means(make_method, views, embed):
    method = make_method("byol")
    support = views[:, :2]
    calibrate = lambda z: 3 * z + 1  # noqa: E731
    anchors = method.anchors(embed(method, support), LossContext(views=support, calibrate=calibrate))
    with torch.no_grad():
        t = calibrate(method.target(support.flatten(0, 1))).view(8, 2, -1)
    torch.testing.assert_close(anchors, F.normalize(t.mean(1), dim=-1))
    assert not anchors.requires_grad


def test_query_loss_prefers_predictions_that_match_their_own_anchor(make_method, views, embed):
    method = make_method("byol")
    method.predictor.eval()
    z_query = embed(method, views[:, :1]).detach()
    with torch.no_grad():
        matched = F.normalize(method.predictor(z_query[:, 0]), dim=-1)
    good = method.query_loss(z_query, matched, LossContext())
    swapped = method.query_loss(z_query, matched.roll(1, 0), LossContext())
    collapsed = method.query_loss(z_query[:1].expand_as(z_query), matched, LossContext())
    assert good.item() == pytest.approx(0.0, abs=1e-5)
    assert swapped > good + 0.1 and collapsed > good + 0.1
