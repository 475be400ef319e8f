"""Shared fixtures for the SSL-method tests: a tiny method on random 1×16×16 views, and the contract checks that
every method must pass (Adam lowers the baseline loss; the functional path equals the module path)."""
import pytest
import torch

from tc2ssl.config import MethodConfig, ModelConfig
from tc2ssl.methods import build_method
from tc2ssl.methods.base import LossContext
from tc2ssl.models import build_backbone


@pytest.fixture
def make_method():
    """make_method(name, **method_cfg) -> a seeded method on the small_cnn_tiny backbone (1 input channel)."""

    def make(name: str, **overrides):
        torch.manual_seed(0)
        cfg = MethodConfig(name=name, **{"proj_hidden_dim": 32, "proj_output_dim": 16, "pred_hidden_dim": 32,
                                         **overrides})
        return build_method(cfg, build_backbone(ModelConfig(backbone="small_cnn_tiny"), 1))

    return make


@pytest.fixture
def views() -> torch.Tensor:
    """8 images × 3 views of random 1×16×16 inputs."""
    return torch.randn(8, 3, 1, 16, 16, generator=torch.Generator().manual_seed(1))


def embed_views(method, views: torch.Tensor, params=None) -> torch.Tensor:
    n, v = views.shape[:2]
    return method.embed(views.flatten(0, 1), params).view(n, v, -1)


@pytest.fixture
def embed():
    """embed(method, views [n, v, C, H, W], params=None) -> z [n, v, d]."""
    return embed_views


@pytest.fixture
def adam_lowers_baseline():
    """Ten Adam steps on one fixed batch of 2 views; returns (loss before, loss after), both at update_state=False."""

    def run(method, views: torch.Tensor, steps: int = 10, lr: float = 3e-3):
        two = views[:, :2]
        opt = torch.optim.Adam(method.online_parameters().values(), lr=lr)

        def loss():
            return method.baseline_loss(embed_views(method, two), LossContext(views=two))

        before = loss().item()
        for _ in range(steps):
            opt.zero_grad()
            loss().backward()
            opt.step()
        return before, loss().item()

    return run


@pytest.fixture
def functional_support_check():
    """support_loss at ctx.params = clones of θ equals the module path, with equal gradients; returns those
    gradients by parameter name."""

    def run(method, views: torch.Tensor, **ctx_kwargs):
        params = {k: p.detach().clone().requires_grad_(True) for k, p in method.online_parameters().items()}
        functional = method.support_loss(embed_views(method, views, params),
                                         LossContext(params=params, views=views, **ctx_kwargs))
        plain = method.support_loss(embed_views(method, views), LossContext(views=views, **ctx_kwargs))
        torch.testing.assert_close(functional, plain)
        names = list(params)
        grads_f = torch.autograd.grad(functional, [params[k] for k in names], allow_unused=True)
        theta = method.online_parameters()
        grads_p = torch.autograd.grad(plain, [theta[k] for k in names], allow_unused=True)
        grads = {}
        for k, gf, gp in zip(names, grads_f, grads_p):
            assert (gf is None) == (gp is None), k
            if gf is not None:
                torch.testing.assert_close(gf, gp, rtol=1e-4, atol=1e-6)
                grads[k] = gf
        return grads

    return run
