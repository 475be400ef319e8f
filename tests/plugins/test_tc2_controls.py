"""The controls of TC²'s calibration (src/tc2ssl/plugins/tc2_controls.py): what replaces ẑ = f_w(z)Vᵀ."""
from __future__ import annotations

import pytest
import torch

from tc2ssl.config import load_config
from tc2ssl.data import load_data
from tc2ssl.errors import ConfigError
from tc2ssl.plugins.base import StepInfo
from tc2ssl.train.loop import build_run

TINY = ["model.backbone=small_cnn_tiny", "train.batch_size=32", "plugin.n_tasks=2", "eval.enabled=false",
        "train.progress=false", "method.proj_output_dim=16", "method.proj_hidden_dim=16", "data.max_train=64",
        "plugin.conflict_every=0"]


@pytest.fixture(scope="module")
def digits():
    return load_data(load_config((), TINY).data)


def make(digits, tmp_path, plugin: str, *overrides: str):
    cfg = load_config((), [f"plugin.name={plugin}", *TINY, f"out={tmp_path / plugin}", *overrides])
    return build_run(cfg, digits)


def captured_transforms(run, steps: int = 2) -> list:
    """The representation transform of each training step (what the bi-level step calibrates with)."""
    seen = []
    original = run.plugin.prepare_step

    def spy(*args, **kwargs):
        preparation = original(*args, **kwargs)
        seen.append(preparation.transform)
        return preparation

    run.plugin.prepare_step = spy
    for step in range(steps):
        run.plugin.training_step(run.data.train.images[:32], StepInfo(epoch=0, step=step, seed=step + 1))
    return seen


def test_frozen_calibrator_never_changes(digits, tmp_path):
    """(With the default factor_init=pca, V0 is still set from the first batch: that is its initialisation.)"""
    run = make(digits, tmp_path, "tc2_frozen", "plugin.factor_init=random")
    before = {k: v.detach().clone() for k, v in run.plugin.calibrator.parameter_dict().items()}
    captured_transforms(run)
    for name, value in run.plugin.calibrator.parameter_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    live = make(digits, tmp_path, "tc2", "plugin.factor_init=random")
    captured_transforms(live)
    assert any(not torch.equal(v, before[k]) for k, v in live.plugin.calibrator.parameter_dict().items())


def test_random_projection_is_a_fixed_orthogonal_projection(digits, tmp_path):
    run = make(digits, tmp_path, "random_proj")
    first, second = captured_transforms(run)
    torch.testing.assert_close(first.basis, second.basis, rtol=0, atol=0)              # the same every step
    n_f = run.plugin.calibrator.n_factors
    torch.testing.assert_close(first.basis.T @ first.basis, torch.eye(n_f), atol=1e-5, rtol=0)
    z = torch.nn.functional.normalize(torch.randn(10, 16), dim=-1)
    projected = first(z)
    expected = torch.nn.functional.normalize(projected, dim=-1)    # ℓ2 input norm (SimCLR), then P Pᵀ: unchanged
    torch.testing.assert_close(first(projected), expected, atol=1e-5, rtol=0)       # idempotent up to the norm
    other = make(digits, tmp_path, "random_proj", "seed=1")
    assert not torch.allclose(captured_transforms(other, 1)[0].basis, first.basis)  # drawn from the run's seed


def test_tasks_nf_projects_on_the_batchs_top_principal_subspace(digits, tmp_path):
    run = make(digits, tmp_path, "tasks_nf")
    rows = []
    original = run.plugin.batch_representations

    def spy(*args, **kwargs):
        z, shared = original(*args, **kwargs)
        rows.append(z.reshape(-1, z.shape[-1]).detach())
        return z, shared

    run.plugin.batch_representations = spy
    transform = captured_transforms(run, 1)[0]
    n_f = run.plugin.calibrator.n_factors
    eigenvectors = torch.linalg.eigh(rows[0].double().T @ rows[0].double()).eigenvectors[:, -n_f:]   # independent
    torch.testing.assert_close(transform.basis.double() @ transform.basis.double().T,
                               eigenvectors @ eigenvectors.T, atol=1e-4, rtol=0)


def test_controls_need_the_calibrator(digits, tmp_path):
    with pytest.raises(ConfigError, match="plugin.calibration=true"):
        make(digits, tmp_path, "random_proj", "plugin.calibration=false")
