"""Tests of MAE (src/tc2ssl/methods/mae.py; D-SSL-02 MAE row, §3.7 MAE query loss) on the vit_tiny backbone."""
import json
import math

import pytest
import torch
from lightly.models.utils import patchify

from tc2ssl.config import MethodConfig, ModelConfig, load_config
from tc2ssl.errors import ConfigError
from tc2ssl.methods import build_method
from tc2ssl.methods.base import LossContext
from tc2ssl.methods.mae import MAE, MaskedViews, masked_patch_errors
from tc2ssl.models import build_backbone
from tc2ssl.train.loop import pretrain


def make_mae(norm_pix_loss: bool = False, **options) -> MAE:
    torch.manual_seed(0)
    return MAE(build_backbone(ModelConfig(backbone="vit_tiny"), 1), MethodConfig(name="mae", **options),
               norm_pix_loss=norm_pix_loss)


@pytest.fixture
def views() -> MaskedViews:
    """6 images x 2 masked views (ρ = 0.75 of 16 patches) of random 1x16x16 inputs."""
    g = torch.Generator().manual_seed(3)
    return make_mae().task_views(torch.randn(6, 1, 16, 16, generator=g), 2, g)


def direct_loss(method, z: torch.Tensor, views: MaskedViews, normalize: bool = False) -> torch.Tensor:
    """mean over masked patches p of ‖x̂_p − x_p‖², written out."""
    masks = views.masks.flatten(0, 1)
    prediction = method.decoder(z.flatten(0, 1), masks)
    target = patchify(views.images.flatten(0, 1), 4)
    if normalize:
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    return ((prediction - target) ** 2).sum(-1)[masks].mean()


def embed(method, views: MaskedViews, params=None) -> torch.Tensor:
    return method.embed(views.flatten(0, 1), params).unflatten(0, tuple(views.shape))


@pytest.mark.parametrize("normalize", [False, True])
def test_support_loss_matches_the_direct_formula(views, normalize):
    method = make_mae(norm_pix_loss=normalize)
    z = embed(method, views)
    assert z.shape == (6, 2, 4, 64)                                         # 4 visible tokens of 16
    loss = method.support_loss(z, LossContext(views=views))
    torch.testing.assert_close(loss, direct_loss(method, z, views, normalize))


def test_support_loss_is_the_mae_papers_masked_pixel_mse_times_the_patch_size(views):
    """Parity with the reference formula (He et al. 2022; lightly's MAE example uses the same MSELoss): the
    mean over masked patches of the per-pixel mean squared error. Ours sums a patch's C·p² pixel errors instead of
    averaging them (a constant factor, so that the loss's scale does not shrink with the patch size); every view
    hides the same number of patches, so the per-view mean of ours equals the pooled paper loss times C·p²."""
    method = make_mae()
    z = embed(method, views)
    masks = views.masks.flatten(0, 1)
    prediction = method.decoder(z.flatten(0, 1), masks)
    target = patchify(views.images.flatten(0, 1), 4)
    paper = torch.nn.MSELoss()(prediction[masks], target[masks])              # mean over masked pixels
    pixels_per_patch = target.shape[-1]
    assert pixels_per_patch == 1 * 4 * 4
    torch.testing.assert_close(method.support_loss(z, LossContext(views=views)), paper * pixels_per_patch)


def test_masked_patch_errors_count_only_masked_patches():
    target = torch.zeros(2, 4, 3)
    prediction = target.clone()
    mask = torch.tensor([[True, True, False, False], [True, False, False, False]])
    prediction[:, 2] = 10.0                                                 # a visible patch: ignored
    prediction[0, 0] = torch.tensor([1.0, 2.0, 2.0])                        # ‖·‖² = 9 on 1 of 2 masked patches
    prediction[1, 0] = 1.0                                                  # ‖·‖² = 3 on its 1 masked patch
    torch.testing.assert_close(masked_patch_errors(prediction, target, mask), torch.tensor([4.5, 3.0]))


def test_query_loss_reconstructs_the_unmasked_support_image(views):
    method = make_mae()
    support, query = views[:, :1], views[:, 1:]
    anchors = method.anchors(embed(method, support), LossContext(views=support))
    torch.testing.assert_close(anchors, patchify(views.images[:, 0], 4))
    z_query = embed(method, query)
    loss = method.query_loss(z_query, anchors, LossContext(views=query))
    torch.testing.assert_close(loss, direct_loss(method, z_query, query))
    other = anchors.roll(1, dims=0)                                         # someone else's image: a worse fit
    assert method.query_loss(z_query, other, LossContext(views=query)) != loss


def test_task_views_hide_exactly_round_ratio_patches_of_one_image():
    method = make_mae(mask_ratio=0.6)
    images = torch.randn(4, 1, 16, 16)
    views = method.task_views(images, 3, torch.Generator().manual_seed(0))
    assert tuple(views.shape) == (4, 3) and views.masks.shape == (4, 3, 16)
    assert (views.masks.sum(-1) == round(0.6 * 16)).all()
    assert all(torch.equal(views.images[:, u], images) for u in range(3))
    assert not torch.equal(views.masks[:, 0], views.masks[:, 1])


def test_adam_steps_lower_the_loss(views):
    method = make_mae()
    optimizer = torch.optim.Adam(method.online_parameters().values(), lr=3e-3)

    def loss():
        return method.support_loss(embed(method, views), LossContext(views=views))

    before = loss().item()
    for _ in range(10):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    assert loss().item() < 0.7 * before


def test_functional_path_equals_module_path(views):
    method = make_mae()
    theta = method.online_parameters()
    params = {k: p.detach().clone().requires_grad_(True) for k, p in theta.items()}
    functional = method.support_loss(embed(method, views, params), LossContext(params=params, views=views))
    plain = method.support_loss(embed(method, views), LossContext(views=views))
    torch.testing.assert_close(functional, plain)
    names = list(params)
    grads_f = torch.autograd.grad(functional, [params[k] for k in names])
    grads_p = torch.autograd.grad(plain, [theta[k] for k in names])
    for name, gf, gp in zip(names, grads_f, grads_p):
        torch.testing.assert_close(gf, gp, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
    assert any(k.startswith("decoder.") for k in names) and any(k.startswith("backbone.") for k in names)


def test_baseline_masks_each_of_the_two_views_and_reduces_per_view_errors():
    method = make_mae()
    two = torch.randn(6, 2, 1, 16, 16)
    torch.manual_seed(1)
    loss, errors = method.training_loss(two)
    assert errors.shape == (6, 2) and (errors > 0).all()
    torch.testing.assert_close(loss, errors.mean())
    torch.testing.assert_close(method.baseline_loss(errors[:3], LossContext()), errors[:3].mean())
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.online_parameters().values())
    torch.manual_seed(1)                                                    # the masks come from the global RNG
    torch.testing.assert_close(method.training_loss(two)[0], loss)


def test_registered_and_bad_backbone_or_patch_size_is_a_config_error():
    assert isinstance(build_method(MethodConfig(name="mae"), build_backbone(ModelConfig(backbone="vit_tiny"), 3)), MAE)
    with pytest.raises(ConfigError, match="model.backbone=vit_tiny"):
        build_method(MethodConfig(name="mae"), build_backbone(ModelConfig(backbone="small_cnn_tiny"), 1))
    with pytest.raises(ConfigError, match="method.patch_size=8"):
        make_mae(patch_size=8)


def test_embed_needs_masked_views():
    with pytest.raises(ValueError, match="MaskedViews"):
        make_mae().embed(torch.randn(2, 1, 16, 16))


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("plugin", ["none", "tc2"])
def test_one_epoch_on_digits_has_finite_losses(plugin, tmp_path):
    cfg = load_config(["mae"], [f"plugin.name={plugin}", "data.max_train=128", "train.batch_size=32",
                                "plugin.n_tasks=2", "train.epochs=1", "eval.enabled=false", "train.progress=false",
                                f"out={tmp_path}"])
    pretrain(cfg)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert steps and len(epochs) == 1
    assert all(math.isfinite(r["loss"]) for r in steps + epochs)
    assert math.isfinite(epochs[0]["conflict/cos_mean"])
    if plugin == "tc2":
        assert epochs[0]["tc2/inner_gain_rate"] >= 0.5                      # beta1 of the preset suits MAE's scale
    assert (tmp_path / "encoder.safetensors").is_file()
