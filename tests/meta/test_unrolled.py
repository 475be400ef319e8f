import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from tc2ssl.errors import ConfigError
from tc2ssl.meta.functional import cloned_buffers, module_params
from tc2ssl.meta.unrolled import HYPERGRADIENT_MODES, conjugate_gradient, proximal_adapt, unrolled_hypergradient


def softplus_mlp(seed: int = 0, batchnorm: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Linear(4, 6)] + ([nn.BatchNorm1d(6)] if batchnorm else []) + [nn.Softplus(), nn.Linear(6, 3)]
    return nn.Sequential(*layers).double().train()


def losses_for(model: nn.Module, buffers=None):
    """An inner cross-entropy on one batch and an outer cross-entropy on another (float64)."""
    g = torch.Generator().manual_seed(1)
    x_in = torch.randn(8, 4, generator=g, dtype=torch.float64)
    x_out = torch.randn(7, 4, generator=g, dtype=torch.float64)
    y_in, y_out = torch.randint(0, 3, (8,), generator=g), torch.randint(0, 3, (7,), generator=g)
    buffers = cloned_buffers(model) if buffers is None else buffers

    def inner(p, probe_buffers=None):
        return F.cross_entropy(functional_call(model, (p, probe_buffers or buffers), (x_in,)), y_in)

    def outer(p):
        return F.cross_entropy(functional_call(model, (p, buffers), (x_out,)), y_out)

    return inner, outer


def flat(grads) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads.values()])


def relative_error(a, b) -> float:
    return float((flat(a) - flat(b)).norm() / flat(b).norm())


@pytest.mark.parametrize("steps", [1, 3])
def test_aid_fd_matches_exact_in_float64(steps):
    model = softplus_mlp()
    inner, outer = losses_for(model)
    theta = module_params(model)
    exact = unrolled_hypergradient(outer, inner, theta, lr=0.3, mode="exact", steps=steps)
    fd = unrolled_hypergradient(outer, inner, theta, lr=0.3, mode="aid_fd", steps=steps, fd_radius=1e-4)
    first = unrolled_hypergradient(outer, inner, theta, lr=0.3, mode="first_order", steps=steps)
    assert relative_error(fd.grads, exact.grads) < 1e-6
    assert relative_error(first.grads, exact.grads) > 1e-3        # the second-order term is not negligible here


def test_exact_matches_a_numerical_derivative_of_the_unrolled_map():
    """Independent reference: central differences of θ ↦ L_out(θ − α∇L_in(θ)) along a random direction."""
    model = softplus_mlp(seed=3)
    inner, outer = losses_for(model)
    theta = {n: p.detach() for n, p in module_params(model).items()}
    lr = 0.3

    def unrolled(params):
        leaves = {n: p.clone().requires_grad_(True) for n, p in params.items()}
        grads = torch.autograd.grad(inner(leaves), list(leaves.values()))
        return outer({n: p.detach() - lr * g for (n, p), g in zip(leaves.items(), grads)}).item()

    g = torch.Generator().manual_seed(5)
    direction = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in theta.items()}
    h = 1e-5
    numeric = (unrolled({n: p + h * direction[n] for n, p in theta.items()})
               - unrolled({n: p - h * direction[n] for n, p in theta.items()})) / (2 * h)
    exact = unrolled_hypergradient(outer, inner, theta, lr=lr, mode="exact")
    assert abs(float((flat(exact.grads) * flat(direction)).sum()) - numeric) < 1e-7 * max(1.0, abs(numeric))


def test_implicit_cg_matches_the_closed_form_on_a_quadratic():
    """L_in(φ) = ½φᵀAφ − bᵀφ with the proximal term: φ* = (A + λI)⁻¹(b + λθ), dφ*/dθ = λ(A + λI)⁻¹; with
    L_out(φ) = ½‖φ − c‖², the hypergradient is λ(A + λI)⁻¹(φ* − c)."""
    g = torch.Generator().manual_seed(0)
    dim = 6
    root = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    a = root @ root.T / dim + 0.5 * torch.eye(dim, dtype=torch.float64)
    b, c = torch.randn(dim, generator=g, dtype=torch.float64), torch.randn(dim, generator=g, dtype=torch.float64)
    theta = {"w": torch.randn(dim, generator=g, dtype=torch.float64)}
    lam = 2.0

    def inner(p):
        return 0.5 * p["w"] @ a @ p["w"] - b @ p["w"]

    def outer(p):
        return 0.5 * (p["w"] - c).square().sum()

    shifted = a + lam * torch.eye(dim, dtype=torch.float64)
    phi_star = torch.linalg.solve(shifted, b + lam * theta["w"])
    expected = lam * torch.linalg.solve(shifted, phi_star - c)
    step = 1.0 / float(torch.linalg.eigvalsh(shifted).max())
    result = unrolled_hypergradient(outer, inner, theta, lr=step, mode="implicit_cg", steps=400, cg_steps=dim,
                                    prox_lambda=lam, fd_radius=1e-3)
    assert torch.allclose(result.adapted["w"], phi_star, atol=1e-8)
    assert torch.allclose(result.grads["w"], expected, atol=1e-8)


def test_implicit_cg_with_a_huge_proximal_weight_is_first_order_at_theta():
    model = softplus_mlp(seed=2)
    inner, outer = losses_for(model)
    theta = module_params(model)
    implicit = unrolled_hypergradient(outer, inner, theta, lr=1e-8, mode="implicit_cg", prox_lambda=1e7)
    at_theta = unrolled_hypergradient(outer, inner, theta, lr=0.0, mode="first_order")
    assert relative_error(implicit.grads, at_theta.grads) < 1e-5


@pytest.mark.parametrize("mode", ["aid_fd", "exact", "first_order"])   # implicit_cg assumes a converged φ*
def test_zero_inner_step_gives_the_outer_gradient_at_theta(mode):
    model = softplus_mlp(seed=4)
    inner, outer = losses_for(model)
    theta = module_params(model)
    leaves = {n: p.detach().requires_grad_(True) for n, p in theta.items()}
    expected = dict(zip(leaves, torch.autograd.grad(outer(leaves), list(leaves.values()))))
    result = unrolled_hypergradient(outer, inner, theta, lr=0.0, mode=mode)
    assert relative_error(result.grads, expected) < 1e-10


@pytest.mark.parametrize("mode", HYPERGRADIENT_MODES)
def test_no_mode_writes_parameters_grads_or_batchnorm_statistics(mode):
    model = softplus_mlp(seed=5, batchnorm=True)
    params_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers_before = {n: b.clone() for n, b in model.named_buffers()}

    def probe(p):                                      # the FD probes on scratch buffers of their own
        return inner(p, cloned_buffers(model))

    inner, outer = losses_for(model)
    unrolled_hypergradient(outer, inner, module_params(model), lr=0.1, mode=mode, steps=2, probe_loss_fn=probe)
    assert all(torch.equal(p, params_before[n]) for n, p in model.named_parameters())
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(b, buffers_before[n]) for n, b in model.named_buffers())


def test_conjugate_gradient_solves_spd_and_stops_on_negative_curvature():
    g = torch.Generator().manual_seed(1)
    root = torch.randn(5, 5, generator=g, dtype=torch.float64)
    spd = root @ root.T + torch.eye(5, dtype=torch.float64)
    rhs = {"x": torch.randn(5, generator=g, dtype=torch.float64)}
    solution, iterations = conjugate_gradient(lambda p: {"x": spd @ p["x"]}, rhs, steps=5)
    assert torch.allclose(solution["x"], torch.linalg.solve(spd, rhs["x"]), atol=1e-9) and iterations <= 5
    _, none_run = conjugate_gradient(lambda p: {"x": -p["x"]}, rhs, steps=5)
    assert none_run == 0


def test_proximal_adapt_pulls_towards_theta():
    theta = {"w": torch.ones(3, dtype=torch.float64)}
    far, _, _ = proximal_adapt(lambda p: p["w"].square().sum(), theta, lr=0.1, steps=200, prox_lambda=0.0)
    near, _, first = proximal_adapt(lambda p: p["w"].square().sum(), theta, lr=0.1, steps=200, prox_lambda=2.0)
    assert far["w"].abs().max() < 1e-6                                  # plain descent: the minimum 0
    assert torch.allclose(near["w"].detach(), torch.full((3,), 0.5, dtype=torch.float64))   # λθ/(2 + λ)
    assert torch.allclose(first["w"], 2 * theta["w"])


def test_bad_mode_and_settings_raise_config_errors():
    theta = {"w": torch.ones(2)}

    def loss(p):
        return p["w"].square().sum()

    with pytest.raises(ConfigError, match="aid_fd"):
        unrolled_hypergradient(loss, loss, theta, lr=0.1, mode="second_order")
    with pytest.raises(ConfigError, match="prox_lambda"):
        unrolled_hypergradient(loss, loss, theta, lr=0.1, mode="implicit_cg", prox_lambda=0.0)
    with pytest.raises(ConfigError, match="conjugate-gradient"):
        conjugate_gradient(lambda p: p, theta, steps=0)
