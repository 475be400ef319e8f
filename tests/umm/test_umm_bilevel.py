"""The UMM bi-level step: the DARTS finite-difference hypergradient against the exact one, parameters untouched."""
import pytest
import torch
import torch.nn as nn

from tc2ssl.meta.functional import functional_forward, module_params
from tc2ssl.methods.base import sub_params
from tc2ssl.tc2.losses import nt_xent_multiview
from tc2ssl.umm.bilevel import BilevelSettings, UMMObjectives, bilevel_step


class Late(nn.Module):
    """Late layers (with BatchNorm, or without: PyTorch's batch norm has no third derivative, which the exact
    hypergradient of the JS term needs) and a projection head, float64."""

    def __init__(self, batch_norm: bool = True):
        super().__init__()
        torch.manual_seed(0)
        norm = nn.BatchNorm1d(8) if batch_norm else nn.Identity()
        self.late = nn.Sequential(nn.Linear(5, 8), norm, nn.Tanh()).double()
        self.head = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 4)).double()


def objectives(model: Late, settings: BilevelSettings) -> UMMObjectives:
    def late_embed(params, buffers, early):
        tensors = params if buffers is None else {**params, **buffers}
        hidden = functional_forward(model.late, sub_params(tensors, "late"), (early,))
        return functional_forward(model.head, sub_params(tensors, "head"), (hidden,))

    early = torch.randn(12, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return UMMObjectives(late_embed, lambda z, params: nt_xent_multiview(z, 0.5), early, 2, settings)


def cosine(a: dict, b: dict) -> float:
    va, vb = torch.cat([t.flatten() for t in a.values()]), torch.cat([t.flatten() for t in b.values()])
    return float(va @ vb / (va.norm() * vb.norm()))


def relative_error(a: dict, b: dict) -> float:
    va, vb = torch.cat([t.flatten() for t in a.values()]), torch.cat([t.flatten() for t in b.values()])
    return float((va - vb).norm() / vb.norm())


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_finite_difference_hypergradient_matches_exact(beta):
    model = Late(batch_norm=beta == 0)
    params = module_params(model)
    grads = {}
    for mode, radius in (("exact", 1e-2), ("finite_difference", 1e-5), ("first_order", 1e-2)):
        settings = BilevelSettings(beta=beta, lam=0.5, inner_lr=0.5, mode=mode, fd_radius=radius)
        grads[mode] = bilevel_step(objectives(model, settings), params, model).grads
    assert relative_error(grads["finite_difference"], grads["exact"]) < 1e-6
    # the Hessian term matters at this inner step: first order is measurably different
    assert relative_error(grads["first_order"], grads["exact"]) > 1e-3
    # the production radius r = 0.01 stays close
    settings = BilevelSettings(beta=beta, lam=0.5, inner_lr=0.5, mode="finite_difference", fd_radius=1e-2)
    production = bilevel_step(objectives(model, settings), params, model).grads
    assert cosine(production, grads["exact"]) > 0.999


def test_step_writes_no_parameter_and_updates_bn_statistics_once():
    model = Late()
    params = module_params(model)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    settings = BilevelSettings(beta=1.0, lam=1.0, inner_lr=0.1, mode="finite_difference")
    result = bilevel_step(objectives(model, settings), params, model)
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) and p.grad is None, name
    assert int(model.late[1].num_batches_tracked) == int(before["late.1.num_batches_tracked"]) + 1
    assert set(result.grads) == set(params)
    assert all(torch.isfinite(g).all() for g in result.grads.values())


def test_exact_gradient_equals_autograd_of_the_unrolled_objective():
    """An independent reference: d/dθ L_out(θ − α∇L_in(θ)) by torch.func on a flat parameter vector."""
    model = Late(batch_norm=False)
    settings = BilevelSettings(beta=1.0, lam=0.5, inner_lr=0.3, mode="exact")
    obj = objectives(model, settings)
    params = module_params(model)
    names = list(params)

    def unrolled(flat):
        theta = dict(zip(names, torch.split(flat, [params[n].numel() for n in names])))
        theta = {n: t.view_as(params[n]) for n, t in theta.items()}
        inner_grads = torch.autograd.grad(obj.inner(theta), list(theta.values()), create_graph=True)
        adapted = {n: theta[n] - 0.3 * g for n, g in zip(names, inner_grads)}
        return obj.outer(adapted)

    flat = torch.cat([params[n].detach().flatten() for n in names]).requires_grad_(True)
    (reference,) = torch.autograd.grad(unrolled(flat), flat)
    engine = bilevel_step(obj, params, model).grads
    assert torch.allclose(torch.cat([engine[n].flatten() for n in names]), reference, atol=1e-10, rtol=1e-8)
