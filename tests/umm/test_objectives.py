"""UMM's inner and outer objectives: a true, differentiable JS term and a maximised ΔR."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tc2ssl.diagnostics.coding_rate import coding_rate_reduction, instance_labels
from tc2ssl.umm.objectives import (JS_MAX, gradient_norm_distribution, inner_objective, instance_rate_reduction,
                                   js_divergence, js_to_uniform, outer_objective)


def numpy_js(p: np.ndarray, q: np.ndarray) -> float:
    m = (p + q) / 2
    return 0.5 * float(np.sum(p * np.log(p / m))) + 0.5 * float(np.sum(q * np.log(q / m)))


@pytest.mark.filterwarnings("ignore:reduction")
def test_js_matches_reference_and_bounds():
    gen = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(12, generator=gen, dtype=torch.float64), 0)
    q = torch.softmax(torch.randn(12, generator=gen, dtype=torch.float64), 0)
    assert float(js_divergence(p, q)) == pytest.approx(numpy_js(p.numpy(), q.numpy()), abs=1e-12)
    assert float(js_divergence(p, q)) == pytest.approx(float(js_divergence(q, p)), abs=1e-12)
    assert float(js_to_uniform(torch.full((7,), 1 / 7, dtype=torch.float64))) == pytest.approx(0.0, abs=1e-15)
    k = 1000
    point_mass = torch.zeros(k, dtype=torch.float64)
    point_mass[3] = 1.0        # closed form: ½log(2k/(k+1)) + ½[log(2/(k+1))/k + (k−1)/k·log 2]
    closed = 0.5 * math.log(2 * k / (k + 1)) + 0.5 * (math.log(2 / (k + 1)) / k + (k - 1) / k * math.log(2))
    assert float(js_to_uniform(point_mass)) == pytest.approx(closed, abs=1e-12)
    assert closed < JS_MAX
    # the authors' formulation (F.kl_div fed probabilities) is a different number, not a divergence
    uniform = torch.full_like(p, 1 / 12)
    middle = (p + uniform) / 2
    theirs = 0.5 * (F.kl_div(p, middle) + F.kl_div(uniform, middle))
    assert abs(float(theirs) - float(js_to_uniform(p))) > 1e-3


def test_js_gradient_matches_finite_differences():
    logits = torch.randn(9, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: js_to_uniform(torch.softmax(x, 0)), (logits,))


class TwoLayer(nn.Module):
    """A frozen early feature H (input) -> late layers -> embeddings, float64."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.late = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4)).double()


def contrastive(z: torch.Tensor) -> torch.Tensor:
    from tc2ssl.tc2.losses import nt_xent_multiview

    return nt_xent_multiview(z, 0.5)


def test_js_term_has_a_nonzero_gradient_that_matches_finite_differences():
    model = TwoLayer()
    early = torch.randn(8, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    weight = model.late[0].weight

    def js_of(w: torch.Tensor) -> torch.Tensor:
        leaf = early.clone().requires_grad_(True)
        hidden = torch.tanh(F.linear(leaf, w, model.late[0].bias))
        z = model.late[2](hidden)
        return js_to_uniform(gradient_norm_distribution(contrastive(z.view(4, 2, -1)), leaf))

    w = weight.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(js_of(w), w)
    assert float(grad.abs().max()) > 1e-6                                            # the JS term trains θ
    assert torch.autograd.gradcheck(js_of, (w,))


def test_inner_objective_with_beta_zero_is_the_ssl_loss():
    leaf = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    loss = (leaf ** 2).sum()
    total, divergence = inner_objective(loss, leaf, 0.0)
    assert total is loss and float(divergence) == 0.0
    total, divergence = inner_objective(loss, leaf, 0.5)
    assert float(total.detach()) == pytest.approx(float(loss.detach()) + 0.5 * float(divergence.detach()))
    p = gradient_norm_distribution((leaf ** 2).sum(), leaf)
    expected = 1 / (2 * leaf.detach()).norm(dim=1)                                  # ∂/∂h_i = 2 h_i
    assert torch.allclose(p, expected / expected.sum())


def test_outer_objective_subtracts_instance_delta_r():
    z = torch.randn(10, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    reference = coding_rate_reduction(F.normalize(z, dim=1), instance_labels(5, 2), 0.1).dR
    assert float(instance_rate_reduction(z, 2, 0.1)) == pytest.approx(float(reference), abs=1e-12)
    ssl = torch.tensor(2.0, dtype=torch.float64)
    loss, reduction = outer_objective(ssl, z, 2, lam=0.3, eps2=0.1)
    assert float(loss) == pytest.approx(2.0 - 0.3 * float(reference))
    # maximised: a gradient step on L_out increases ΔR
    z_var = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(outer_objective(ssl, z_var, 2, lam=1.0)[0], z_var)
    assert float(instance_rate_reduction(z - 1e-3 * grad, 2)) > float(instance_rate_reduction(z, 2))
    with pytest.raises(ValueError, match="n_views=3"):
        instance_rate_reduction(z, 3)
    assert not math.isnan(float(reduction))
