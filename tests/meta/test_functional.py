import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from tc2ssl.errors import ConfigError
from tc2ssl.meta.functional import (
    HYPERGRADIENT_MODES,
    accumulate,
    assign_grads,
    cloned_buffers,
    detached_leaves,
    functional_forward,
    grad_dict,
    has_tied_tensors,
    hessian_vector_product_fd,
    hypergradient,
    held,
    module_params,
    sgd_step,
)


def make_problem(seed: int = 0, batchnorm: bool = False):
    """A 2-layer tanh MLP in float64 with a support (inner) and a query (outer) regression loss."""
    torch.manual_seed(seed)
    layers = [nn.Linear(3, 4)] + ([nn.BatchNorm1d(4)] if batchnorm else []) + [nn.Tanh(), nn.Linear(4, 2)]
    model = nn.Sequential(*layers).double().train()
    x_s, y_s, x_q, y_q = (torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64),
                          torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64))
    buffers = cloned_buffers(model)

    def inner(p):
        return F.mse_loss(functional_call(model, (p, buffers), (x_s,)), y_s)

    def outer(p):
        return F.mse_loss(functional_call(model, (p, buffers), (x_q,)), y_q)

    return model, inner, outer


def flat(grads):
    return torch.cat([g.reshape(-1) for g in grads.values()])


def rel_err(a, b):
    return ((flat(a) - flat(b)).norm() / flat(b).norm()).item()


def test_module_params_are_live_and_filtered():
    model, _, _ = make_problem()
    model[0].bias.requires_grad_(False)
    params = module_params(model)
    assert "0.bias" not in params and params["0.weight"] is model[0].weight
    assert set(module_params(model, requires_grad_only=False)) == set(dict(model.named_parameters()))


def test_grad_dict_zeros_for_unused_and_no_grad_attribute_written():
    model, inner, _ = make_problem()
    params = module_params(model)
    loss = functional_call(model[0], {"weight": params["0.weight"], "bias": params["0.bias"]},
                           (torch.ones(1, 3, dtype=torch.float64),)).sum()
    grads = grad_dict(loss, params)
    assert torch.equal(grads["2.weight"], torch.zeros(2, 4, dtype=torch.float64))
    assert torch.allclose(grads["0.bias"], torch.ones(4, dtype=torch.float64))
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError):
        grad_dict(model[0].weight.sum(), params, allow_unused=False)
    with pytest.raises(ValueError, match="scalar"):
        grad_dict(model[0].weight, params)


def test_sgd_step_returns_new_tensors():
    model, inner, _ = make_problem()
    params = module_params(model)
    before = {n: p.detach().clone() for n, p in params.items()}
    grads = {n: torch.ones_like(p) for n, p in params.items()}
    stepped = sgd_step(params, grads, 0.5)
    for n in params:
        assert torch.equal(params[n], before[n])
        assert torch.equal(stepped[n], before[n] - 0.5)
    with pytest.raises(ValueError, match="missing"):
        sgd_step(params, {"0.weight": grads["0.weight"]}, 0.5)


def test_the_inner_unroll_takes_plain_steps_and_reports_the_losses_before_each():
    model, inner, outer = make_problem()
    params = module_params(model)
    lr = 0.1
    result = hypergradient(outer, inner, params, lr, mode="first_order", steps=2)
    # manual two-step unroll
    g0 = grad_dict(inner(params), params)
    phi1 = {n: p - lr * g0[n] for n, p in params.items()}
    g1 = grad_dict(inner(phi1), phi1)
    phi2 = {n: p - lr * g1[n] for n, p in phi1.items()}
    for n in params:
        torch.testing.assert_close(result.adapted[n], phi2[n].detach(), rtol=0, atol=1e-14)
    losses = result.inner_losses
    assert len(losses) == 2 and torch.equal(losses[0], inner(params).detach())
    assert losses[1] < losses[0]
    with pytest.raises(ConfigError):
        hypergradient(outer, inner, params, lr, steps=0)


def test_per_parameter_step_sizes_grad_transform_and_aux():
    model, inner, outer = make_problem()
    params = module_params(model)
    lrs = {n: 0.05 * (i + 1) for i, n in enumerate(params)}
    halve = {n: 0.5 for n in params}

    def outer_with_aux(p):
        return outer(p), {"seen": sorted(p)}

    result = hypergradient(outer_with_aux, inner, params, lrs, mode="exact", has_aux=True,
                           inner_grad_transform=lambda g: {n: v * halve[n] for n, v in g.items()})
    g0 = grad_dict(inner(params), params)
    expected = {n: (p - lrs[n] * 0.5 * g0[n]).detach() for n, p in params.items()}
    for n in params:
        torch.testing.assert_close(result.adapted[n], expected[n], rtol=0, atol=1e-14)
    assert result.outer_aux == {"seen": sorted(params)}
    with pytest.raises(ValueError, match="finite_difference"):
        hypergradient(outer, inner, params, 0.1, mode="finite_difference", inner_grad_transform=dict)
    with pytest.raises(ValueError, match="missing"):
        hypergradient(outer, inner, params, {next(iter(params)): 0.1})


def test_held_tensors_do_not_require_grad_inside_and_are_restored_on_error():
    a = torch.zeros(2, requires_grad=True)
    b = torch.zeros(2)
    with pytest.raises(RuntimeError):
        with held([a, b]):
            assert not a.requires_grad and not b.requires_grad
            raise RuntimeError("inside")
    assert a.requires_grad and not b.requires_grad


def test_cloned_buffers_of_some_children_only():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.BatchNorm1d(2))
    copies = cloned_buffers(model, children=["1"])
    assert set(copies) == {"1.running_mean", "1.running_var", "1.num_batches_tracked"}
    assert copies["1.running_mean"].data_ptr() != model[1].running_mean.data_ptr()


def test_hvp_fd_is_exact_on_a_quadratic_and_zero_for_zero_vector():
    a = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    params = {"w": torch.tensor([0.3, -0.7], dtype=torch.float64, requires_grad=True)}

    def quadratic(p):
        return 0.5 * p["w"] @ a @ p["w"] + p["w"].sum() ** 3 / 6  # cubic term: H depends on w

    v = {"w": torch.tensor([1.0, -2.0], dtype=torch.float64)}
    exact = torch.autograd.functional.hvp(lambda w: quadratic({"w": w}), params["w"], v["w"])[1]
    hvp = hessian_vector_product_fd(quadratic, params, v, radius=1e-4)
    torch.testing.assert_close(hvp["w"], exact, rtol=1e-7, atol=0)
    zero = hessian_vector_product_fd(quadratic, params, {"w": torch.zeros(2, dtype=torch.float64)}, 1e-2)
    assert torch.equal(zero["w"], torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ConfigError):
        hessian_vector_product_fd(quadratic, params, v, radius=0.0)


def test_t10_exact_matches_central_difference_of_the_bilevel_objective():
    model, inner, outer = make_problem(seed=1)
    params = module_params(model)
    lr = 0.1
    names = list(params)
    shapes = [params[n].shape for n in names]
    theta = flat(params).detach()

    def unflatten(vec):
        return dict(zip(names, (c.view(s) for c, s in zip(vec.split([s.numel() for s in shapes]), shapes))))

    def bilevel(vec):
        p = {n: t.requires_grad_(True) for n, t in unflatten(vec.clone()).items()}
        g = grad_dict(inner(p), p)
        return outer({n: p[n] - lr * g[n] for n in p}).item()

    h = 1e-6
    numeric = torch.zeros_like(theta)
    for i in range(theta.numel()):
        e = torch.zeros_like(theta)
        e[i] = h
        numeric[i] = (bilevel(theta + e) - bilevel(theta - e)) / (2 * h)
    exact = flat(hypergradient(outer, inner, params, lr, mode="exact").grads)
    first = flat(hypergradient(outer, inner, params, lr, mode="first_order").grads)
    assert ((exact - numeric).norm() / numeric.norm()).item() < 1e-5
    assert ((first - numeric).norm() / numeric.norm()).item() > 1e-3  # the second-order term matters here


def test_t10_first_order_differs_from_exact_by_order_lr():
    model, inner, outer = make_problem(seed=2)
    params = module_params(model)

    def gap(lr):
        exact = hypergradient(outer, inner, params, lr, mode="exact").grads
        first = hypergradient(outer, inner, params, lr, mode="first_order").grads
        return (flat(exact) - flat(first)).norm().item()

    for lr in (1e-3, 5e-4):
        assert 1.8 < gap(2 * lr) / gap(lr) < 2.2


@pytest.mark.parametrize("steps", [1, 2])
def test_t14_finite_difference_matches_exact(steps):
    model, inner, outer = make_problem(seed=3)
    params = module_params(model)
    exact = hypergradient(outer, inner, params, 0.2, mode="exact", steps=steps)
    fd = hypergradient(outer, inner, params, 0.2, mode="finite_difference", fd_radius=1e-4, steps=steps)
    first = hypergradient(outer, inner, params, 0.2, mode="first_order", steps=steps)
    assert rel_err(fd.grads, exact.grads) < 1e-4
    assert rel_err(first.grads, exact.grads) > 1e-3
    torch.testing.assert_close(fd.outer_loss, exact.outer_loss, rtol=1e-12, atol=0)
    assert len(exact.inner_losses) == steps


def test_t14_zero_lr_gives_the_plain_outer_gradient_exactly():
    model, inner, outer = make_problem(seed=4)
    params = module_params(model)
    plain = grad_dict(outer(params), params)
    for mode in HYPERGRADIENT_MODES:
        result = hypergradient(outer, inner, params, 0.0, mode=mode, steps=2)
        assert all(torch.equal(result.grads[n], plain[n]) for n in params), mode


@pytest.mark.parametrize("mode", HYPERGRADIENT_MODES)
def test_probes_leave_parameters_buffers_and_grads_untouched(mode):
    model, inner, outer = make_problem(seed=5, batchnorm=True)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    result = hypergradient(outer, inner, module_params(model), 0.1, mode=mode, fd_radius=1e-3, steps=2)
    assert all(torch.isfinite(g).all() for g in result.grads.values())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert all(p.grad is None for p in model.parameters())
    # the check is sensitive: a forward without the scratch buffers does move the running statistics
    functional_call(model, module_params(model), (torch.randn(4, 3, dtype=torch.float64),))
    assert not torch.equal(model[1].running_mean, state["1.running_mean"])


def test_hypergradient_rejects_bad_configuration():
    model, inner, outer = make_problem()
    params = module_params(model)
    with pytest.raises(ConfigError, match="mode"):
        hypergradient(outer, inner, params, 0.1, mode="implicit")
    with pytest.raises(ConfigError, match="radius"):
        hypergradient(outer, inner, params, 0.1, mode="finite_difference", fd_radius=-1.0)
    with pytest.raises(ConfigError, match="finite"):
        hypergradient(outer, inner, params, float("nan"))


def test_accumulate_and_assign_grads():
    model, _, _ = make_problem()
    params = module_params(model)
    g1 = {n: torch.ones_like(p) for n, p in params.items()}
    g2 = {n: torch.full_like(p, 2.0) for n, p in params.items()}
    total = accumulate(accumulate(None, g1, scale=0.5), g2)
    assert all(torch.equal(total[n], torch.full_like(p, 2.5)) for n, p in params.items())
    assert all(torch.equal(g1[n], torch.ones_like(p)) for n, p in params.items())  # inputs untouched
    with pytest.raises(ValueError):
        accumulate(total, {"0.weight": g1["0.weight"]})

    assign_grads(model, total)
    total["0.weight"].zero_()  # .grad must not alias the dict
    assert torch.equal(model[0].weight.grad, torch.full_like(model[0].weight, 2.5))
    assign_grads(params, g1)
    assert torch.equal(model[2].bias.grad, torch.full_like(model[2].bias, 3.5))
    with pytest.raises(ValueError, match="unknown"):
        assign_grads(model, {"nope": torch.zeros(1)})
    with pytest.raises(ValueError, match="shape"):
        assign_grads(model, {"0.bias": torch.zeros(3)})


# ---------------------------------------------------------------------------------------------- shared first forward
@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("mode", HYPERGRADIENT_MODES)
def test_first_inner_loss_gives_the_same_result_as_the_closure(mode, steps):
    """A caller-evaluated L_in(θ) on detached leaves (TC²'s shared support forward) changes nothing but who runs
    the first forward: same meta-gradient, losses, adapted parameters and inner gradient; the live parameters and
    buffers stay untouched."""
    model, inner, outer = make_problem(seed=6, batchnorm=True)
    params = module_params(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    reference = hypergradient(outer, inner, params, 0.2, mode=mode, fd_radius=1e-4, steps=steps)
    calls = []

    def counted_inner(p):
        calls.append(1)
        return inner(p)

    theta = detached_leaves(params)
    shared = hypergradient(outer, counted_inner, theta, 0.2, mode=mode, fd_radius=1e-4, steps=steps,
                           first_inner_loss=inner(theta))
    for name in params:
        torch.testing.assert_close(shared.grads[name], reference.grads[name], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(shared.adapted[name], reference.adapted[name], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(shared.inner_grads[name], reference.inner_grads[name], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(torch.stack(shared.inner_losses), torch.stack(reference.inner_losses))
    torch.testing.assert_close(shared.outer_loss, reference.outer_loss)
    # the engine did not evaluate L_in at θ itself: only the later inner steps and the two FD probes per step
    assert len(calls) == (steps - 1) + (2 * steps if mode == "finite_difference" else 0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert all(p.grad is None for p in model.parameters())
    assert all(t.grad is None for t in theta.values())


def test_first_inner_loss_must_be_built_on_the_given_leaves():
    model, inner, outer = make_problem(seed=7)
    params = module_params(model)
    live_loss = inner(params)
    with pytest.raises(ValueError, match="leaves"):          # derived tensors, not leaves: the graph cannot be used
        hypergradient(outer, inner, {n: p * 1.0 for n, p in params.items()}, 0.1, first_inner_loss=live_loss)
    theta = detached_leaves(params)
    with torch.no_grad():
        no_graph = inner(theta)
    with pytest.raises(ValueError, match="no graph"):
        hypergradient(outer, inner, theta, 0.1, first_inner_loss=no_graph)
    with pytest.raises(ValueError, match="scalar"):
        hypergradient(outer, inner, theta, 0.1, first_inner_loss=torch.ones(2, requires_grad=True))
    # detached leaves alias the data (no copy) but never carry a graph back to the live parameters
    name = next(iter(params))
    assert theta[name].data_ptr() == params[name].data_ptr() and theta[name] is not params[name]
    assert theta[name].is_leaf and theta[name].requires_grad


# ---------------------------------------------------------------------------------------------- functional_forward
class TiedHead(nn.Module):
    """An encoder and a decoder sharing one weight (as in weight-tied autoencoders / language models)."""

    def __init__(self):
        super().__init__()
        self.encode = nn.Linear(4, 3, bias=False)
        self.decode = nn.Linear(3, 4, bias=False)
        self.decode.weight = self.encode.weight          # tied: decode uses Wᵀ below
        self.register_buffer("scale", torch.tensor(2.0))

    def forward(self, x):
        return F.linear(self.encode(x), self.decode.weight.T) * self.scale


def test_functional_forward_is_functional_call_and_keeps_tied_weights_tied():
    torch.manual_seed(0)
    x = torch.randn(5, 4)
    plain = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2)).train()
    params = {n: p.detach() + 0.1 for n, p in plain.named_parameters()}
    buffers = cloned_buffers(plain)
    assert not has_tied_tensors(plain)
    torch.testing.assert_close(functional_forward(plain, (params, buffers), (x,)),
                               functional_call(plain, (params, cloned_buffers(plain)), (x,)), rtol=0, atol=0)
    assert not torch.equal(buffers["1.running_mean"], plain[1].running_mean)   # the copies took the BN update

    tied = TiedHead()
    assert has_tied_tensors(tied)
    new_weight = torch.randn(3, 4)
    # only one of the two names is given: the tied one must follow it, as functional_call's default does
    out = functional_forward(tied, {"encode.weight": new_weight}, (x,))
    torch.testing.assert_close(out, (x @ new_weight.T) @ new_weight * 2.0)
    torch.testing.assert_close(out, functional_call(tied, {"encode.weight": new_weight}, (x,)))
