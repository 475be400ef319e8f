import torch
import torch.nn.functional as F
from lightly.loss import SwaVLoss
from lightly.loss.swav_loss import sinkhorn

from tc2ssl.methods.base import LossContext


def scores(method, z):
    return method.prototypes(F.normalize(z.reshape(-1, z.shape[-1]), dim=-1)).view(*z.shape[:-1], -1)


def test_two_view_loss_matches_lightly(make_method, views, embed):
    method = make_method("swav", temperature=0.1, n_prototypes=12)
    z = embed(method, views[:, :2])
    s = scores(method, z)
    expected = SwaVLoss(temperature=0.1)([s[:, 0], s[:, 1]], []).squeeze(0)
    loss = method.support_loss(z, LossContext())
    assert loss.shape == ()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(method.baseline_loss(z, LossContext()), expected)


def test_three_views_is_the_mean_of_the_pairwise_losses(make_method, views, embed):
    method = make_method("swav", n_prototypes=12)
    z = embed(method, views)
    pairs = [method.support_loss(z[:, [u, w]], LossContext()) for u, w in ((0, 1), (0, 2), (1, 2))]
    torch.testing.assert_close(method.support_loss(z, LossContext()), torch.stack(pairs).mean())


def test_adam_lowers_the_baseline_loss(make_method, views, adam_lowers_baseline):
    before, after = adam_lowers_baseline(make_method("swav", temperature=0.1, n_prototypes=12), views)
    assert after < before - 0.05


def test_functional_path_matches_and_reaches_the_prototypes(make_method, views, functional_support_check):
    grads = functional_support_check(make_method("swav", n_prototypes=12), views[:, :2])
    prototypes = [g for k, g in grads.items() if k.startswith("prototypes.")]
    assert prototypes and all(g.abs().sum() > 0 for g in prototypes)


def test_prototypes_are_normalised_at_start_and_after_each_step(make_method):
    method = make_method("swav", n_prototypes=12)
    weight = method.prototypes.heads[0].weight
    torch.testing.assert_close(weight.norm(dim=1), torch.ones(12))
    with torch.no_grad():
        weight.mul_(3)
    method.after_step(0.3)
    torch.testing.assert_close(weight.norm(dim=1), torch.ones(12))


def test_query_loss_is_the_expected_brier_score_against_sinkhorn_codes(make_method):
    method = make_method("swav", n_prototypes=12)
    g = torch.Generator().manual_seed(9)
    z_query, anchors = torch.randn(6, 2, 16, generator=g), F.normalize(torch.randn(6, 16, generator=g), dim=-1)
    with torch.no_grad():
        codes = sinkhorn(scores(method, anchors))
        probs = (scores(method, z_query) / 0.5).softmax(-1)
    one_hot = torch.eye(12)
    # Σ_k q_ik ‖p_iv − e_k‖², by brute force over the labels k
    brute = torch.einsum("ik,ivk->iv", codes, (probs[:, :, None] - one_hot).square().sum(-1)).mean()
    torch.testing.assert_close(method.query_loss(z_query, anchors, LossContext()), brute)


def test_query_loss_does_not_reward_collapse(make_method):
    method = make_method("swav", n_prototypes=12)
    good_z = torch.randn(16, 1, 16, generator=torch.Generator().manual_seed(10))
    good = method.query_loss(good_z, F.normalize(good_z[:, 0], dim=-1), LossContext())
    same = torch.randn(16, generator=torch.Generator().manual_seed(11))
    collapsed = method.query_loss(same.expand(16, 1, 16), F.normalize(same, dim=0).expand(16, 16), LossContext())
    assert collapsed >= 1 - 1 / 12 - 1e-5  # uniform codes: at best p uniform
    assert good < collapsed


def test_multi_crop_baseline_assigns_codes_from_the_two_global_views_only(make_method, views, embed):
    """Multi-crop (data.local_views): views 0, 1 are global; every other view predicts their Sinkhorn codes and
    gets none itself. Reference written from SwAV §3.2: (1/2) Σ_{i∈{0,1}} 1/(V−1) Σ_{v≠i} CE(softmax(s_v/τ), q_i)."""
    method = make_method("swav", temperature=0.1, n_prototypes=12)
    z = embed(method, views)                                           # [N, 3, d]: 2 global + 1 local
    assert z.shape[1] == 3
    s = scores(method, z).float()
    n_views = s.shape[1]
    total = 0.0
    for i in range(2):
        codes = sinkhorn(s[:, i].detach(), iterations=3, epsilon=0.05)
        cross_entropies = [-(codes * F.log_softmax(s[:, v] / 0.1, dim=-1)).sum(-1).mean()
                           for v in range(n_views) if v != i]
        total = total + sum(cross_entropies) / (n_views - 1)
    expected = total / 2
    loss = method.baseline_loss(z, LossContext())
    torch.testing.assert_close(loss, expected)
    # not the all-pairs loss of the support set, where the third view assigns codes too
    assert (loss - method.support_loss(z, LossContext())).abs() > 1e-4
