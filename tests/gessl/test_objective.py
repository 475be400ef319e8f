"""GeSSL's per-task bi-level objective on a real (tiny) encoder, float64."""
import pytest
import torch

from tc2ssl.config import MethodConfig, ModelConfig
from tc2ssl.gessl.head import PiHead
from tc2ssl.gessl.objective import GeSSLObjective, GeSSLSettings
from tc2ssl.methods import build_method
from tc2ssl.models import build_backbone


def tiny_method(name: str = "simclr"):
    torch.manual_seed(0)
    cfg = MethodConfig(name=name, proj_hidden_dim=16, proj_output_dim=8, pred_hidden_dim=16)
    return build_method(cfg, build_backbone(ModelConfig(backbone="small_cnn_tiny"), 1)).double().train()


def task_views(n: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 2, 1, 16, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def flat(grads) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads.values()])


def theta_of(method):
    return method.online_parameters()


@pytest.mark.parametrize("target", ["lookahead", "onehot"])
def test_aid_fd_matches_exact_on_the_gessl_objective(target):
    """On this ReLU + BatchNorm encoder the Hessian changes within parameter distances of 1e-4 (kinks, BN over 12
    views), so the probe radius is 1e-6; float64 keeps the difference quotient accurate there."""
    method = tiny_method()
    views = task_views()
    grads = {}
    for mode in ("exact", "aid_fd", "first_order"):
        settings = GeSSLSettings(hypergradient=mode, fd_radius=1e-6, inner_lr=0.5, target=target, tau_pi=0.5)
        grads[mode] = flat(GeSSLObjective(method, settings).task_hypergradient(theta_of(method), views).grads)
    error = float((grads["aid_fd"] - grads["exact"]).norm() / grads["exact"].norm())
    assert error < 1e-5
    assert float((grads["first_order"] - grads["exact"]).norm() / grads["exact"].norm()) > 10 * error


def test_zero_lookahead_gives_zero_outer_loss_and_gradient():
    method = tiny_method()
    outcome = GeSSLObjective(method, GeSSLSettings(lookahead_steps=0)).task_hypergradient(theta_of(method),
                                                                                          task_views())
    assert float(outcome.outer_loss) == 0.0
    assert float(flat(outcome.grads).abs().max()) < 1e-12


def test_the_outer_loss_is_quadratic_in_the_lookahead_step():
    """KL(π_ψ ‖ π_φ) with ψ = φ − α_Λ∇L is O(α_Λ²): doubling a small step quadruples it."""
    method = tiny_method()
    views = task_views()
    losses = [float(GeSSLObjective(method, GeSSLSettings(lookahead_lr=lr)).task_hypergradient(
        theta_of(method), views).outer_loss) for lr in (1e-4, 2e-4)]
    assert losses[0] > 0 and losses[1] / losses[0] == pytest.approx(4.0, rel=0.05)


def test_collaborative_update_is_the_mean_and_one_task_is_the_single_task_update():
    method = tiny_method()
    objective = GeSSLObjective(method, GeSSLSettings())
    first, second = task_views(seed=1), task_views(seed=2)
    single = objective.task_hypergradient(theta_of(method), first).grads
    one, _ = objective.collaborative_update(theta_of(method), [(first, None)])
    assert torch.equal(flat(one), flat(single))
    other = objective.task_hypergradient(theta_of(method), second).grads
    both, outcomes = objective.collaborative_update(theta_of(method), [(first, None), (second, None)])
    assert torch.allclose(flat(both), (flat(single) + flat(other)) / 2, atol=1e-14) and len(outcomes) == 2


@pytest.mark.parametrize("mode", ["aid_fd", "implicit_cg", "exact", "first_order"])
def test_only_the_first_training_forward_moves_batchnorm_statistics(mode):
    """Probes, look-ahead and outer forwards run on scratch buffers: the running statistics end where one plain
    training forward of the task's views at θ leaves them; no parameter or .grad is written."""
    method, reference = tiny_method(), tiny_method()
    views = task_views()
    params_before = {n: p.detach().clone() for n, p in method.named_parameters()}
    GeSSLObjective(method, GeSSLSettings(hypergradient=mode, inner_steps=2, lookahead_steps=2)).task_hypergradient(
        theta_of(method), views)
    reference.embed(views.flatten(0, 1))                                   # the one training forward
    for (name, buffer), (_, expected) in zip(method.named_buffers(), reference.named_buffers()):
        if "running" in name or "num_batches" in name:
            assert torch.equal(buffer, expected), name
    assert all(torch.equal(p, params_before[n]) for n, p in method.named_parameters())
    assert all(p.grad is None for p in method.parameters())


def test_separate_head_is_trained_by_its_own_infonce_on_detached_features():
    method = tiny_method("byol")
    head = PiHead(method.backbone.feat_dim, 16, 8).double()
    objective = GeSSLObjective(method, GeSSLSettings(), pi_head=head)
    outcome = objective.task_hypergradient(theta_of(method), task_views())
    assert outcome.features is not None and not outcome.features.requires_grad
    loss = objective.head_loss(outcome.features)
    grads = torch.autograd.grad(loss, list(head.parameters()))
    assert all(g.abs().sum() > 0 for g in grads)
    assert not any(name.startswith("pi_head") for name in outcome.grads)   # the head is not part of θ
    assert float(flat(outcome.grads).abs().sum()) > 0                      # the backbone gets a hypergradient


def test_fresh_views_change_the_outer_loss_but_not_the_inner_one():
    method = tiny_method()
    objective = GeSSLObjective(method, GeSSLSettings())
    views, fresh = task_views(seed=1), task_views(seed=3)
    same = objective.task_hypergradient(theta_of(method), views)
    other = objective.task_hypergradient(theta_of(method), views, fresh)
    assert torch.equal(same.inner_loss, other.inner_loss) and not torch.equal(same.outer_loss, other.outer_loss)


def test_the_outer_ssl_term_adds_the_methods_loss_at_the_adapted_model():
    """L_out + w·L_ssl(φ_K): with Λ = 0 the KL is 0, so the outer loss is w times the SSL loss at φ_K, and its
    first-order hypergradient is w times the gradient of that loss at φ_K."""
    method = tiny_method()
    views = task_views()
    settings = GeSSLSettings(lookahead_steps=0, outer_ssl_weight=0.5, hypergradient="first_order")
    objective = GeSSLObjective(method, settings)
    outcome = objective.task_hypergradient(theta_of(method), views)
    theta = {n: p.detach() for n, p in theta_of(method).items()}
    leaves = {n: p.clone().requires_grad_(True) for n, p in theta.items()}
    inner_grads = torch.autograd.grad(objective.ssl_loss(leaves, views, objective.scratch_buffers()),
                                      list(leaves.values()))
    adapted = {n: (p - settings.inner_lr * g).requires_grad_(True) for (n, p), g in zip(theta.items(), inner_grads)}
    expected_loss = objective.ssl_loss(adapted, views, objective.scratch_buffers())
    expected = torch.autograd.grad(0.5 * expected_loss, list(adapted.values()), allow_unused=True)
    expected = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                          for g, p in zip(expected, adapted.values())])
    assert torch.allclose(outcome.outer_loss, 0.5 * expected_loss.detach(), rtol=1e-10)
    assert torch.allclose(flat(outcome.grads), expected, rtol=1e-8, atol=1e-12)


def test_bad_settings_raise_config_errors():
    from tc2ssl.errors import ConfigError

    with pytest.raises(ConfigError, match="lookahead"):
        GeSSLSettings(target="ema")
    with pytest.raises(ConfigError, match="aid_fd"):
        GeSSLSettings(hypergradient="dart")
    with pytest.raises(ConfigError, match="lookahead_steps"):
        GeSSLSettings(lookahead_steps=-1)
