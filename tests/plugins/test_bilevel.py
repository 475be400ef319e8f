"""The generic bi-level task step (src/tc2ssl/plugins/bilevel.py) against an independent reference.

The reference is per-task first-order MAML written the plainest way: a deep copy of the method per task, an
in-place SGD step on the support loss with ``torch.autograd.grad``, the query loss at the adapted copy with
anchors from the adapted support embeddings, its gradient summed over tasks and divided by K. No engine, no
functional calls, no code of the plug-in: only the method's own loss hooks. Float64 throughout.
"""
from __future__ import annotations

import copy

import pytest
import torch

from tc2ssl.config import load_config
from tc2ssl.data import load_data
from tc2ssl.data.tasks import build_tasks
from tc2ssl.methods.base import LossContext
from tc2ssl.plugins.base import StepInfo
from tc2ssl.train.loop import build_run

TINY = ["model.backbone=small_cnn_tiny", "train.batch_size=16", "plugin.n_tasks=2", "eval.enabled=false",
        "method.proj_output_dim=8", "method.proj_hidden_dim=8", "data.max_train=32", "plugin.conflict_every=0"]
INFO = StepInfo(epoch=0, step=0, seed=5)


@pytest.fixture(scope="module")
def digits():
    return load_data(load_config((), TINY).data)


def float64_run(digits, *overrides: str):
    run = build_run(load_config((), ["plugin.name=tasks", *TINY, *overrides]), digits)
    run.method.double()
    return run


def step_inputs(run):
    p = run.plugin.cfg
    images = run.data.train.images[:16]
    views = run.view_maker(images, p.n_views, INFO.seed).double()
    split = build_tasks(16, p.n_tasks, p.n_views, p.n_support_views, torch.Generator().manual_seed(3),
                        min_support=run.method.min_support_views)
    return views, split


def reference_fomaml(method, views, split, beta1: float) -> dict[str, torch.Tensor]:
    """(1/K) Σ_k ∇_{θ'} L^q(θ'_k), θ'_k = θ − β₁ ∇L^s(θ), by copies and in-place steps."""
    total: dict[str, torch.Tensor] = {}
    for k in range(split.n_tasks):
        xs, xq = split.support_views(views, k), split.query_views(views, k)
        model = copy.deepcopy(method)

        def embed(x):
            return model.embed(x.flatten(0, 1)).view(x.shape[0], x.shape[1], -1)

        params = dict(model.online_parameters())
        support = model.support_loss(embed(xs), LossContext(views=xs))
        grads = torch.autograd.grad(support, list(params.values()), allow_unused=True)
        with torch.no_grad():
            for p, g in zip(params.values(), grads):
                if g is not None:
                    p -= beta1 * g
            anchors = model.anchors(embed(xs), LossContext(views=xs))
        query = model.query_loss(embed(xq), anchors, LossContext(views=xq))
        outer = torch.autograd.grad(query, list(params.values()), allow_unused=True)
        for (name, p), g in zip(params.items(), outer):
            g = torch.zeros_like(p) if g is None else g
            total[name] = total.get(name, 0) + g / split.n_tasks
    return total


@pytest.mark.parametrize("beta1", [0.0, 0.1])
def test_plus_t_step_is_per_task_first_order_maml(digits, beta1):
    run = float64_run(digits, f"plugin.beta1={beta1}", "plugin.stage2_mode=first_order")
    reference_method = copy.deepcopy(run.method)
    views, split = step_inputs(run)
    expected = reference_fomaml(reference_method, views, split, beta1)
    metrics = run.plugin.bilevel_step(views, split, INFO)
    assert torch.isfinite(metrics["tc2/stage2_sse_query"])
    for name, p in run.method.online_parameters().items():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-9, atol=1e-12, msg=lambda m: f"{name}: {m}")


def test_the_inner_step_matters(digits):
    """A non-zero β₁ changes the gradient (the reference above is not trivially the β₁ = 0 one)."""
    run = float64_run(digits)
    views, split = step_inputs(run)
    at_zero = reference_fomaml(copy.deepcopy(run.method), views, split, 0.0)
    stepped = reference_fomaml(copy.deepcopy(run.method), views, split, 0.5)
    assert max((at_zero[n] - stepped[n]).abs().max() for n in at_zero) > 1e-6

