"""Tests of the ``vit_tiny`` backbone (src/tc2ssl/models/backbones.py: TinyViT, visible_index; D-SSL-01)."""
import pytest
import torch

from tc2ssl.config import ModelConfig
from tc2ssl.errors import ConfigError
from tc2ssl.models import build_backbone
from tc2ssl.models.backbones import TinyViT, visible_index


def vit(channels: int = 1) -> TinyViT:
    torch.manual_seed(0)
    return build_backbone(ModelConfig(backbone="vit_tiny"), channels)


def patch_mask(n: int, n_patches: int, masked: list[int]) -> torch.Tensor:
    mask = torch.zeros(n, n_patches, dtype=torch.bool)
    mask[:, masked] = True
    return mask


@pytest.mark.parametrize("channels, side", [(1, 16), (3, 32), (1, 28)])
def test_pooled_features_and_taps_at_any_size_and_channel_count(channels, side):
    net = vit(channels)
    x = torch.randn(2, channels, side, side)
    h = net(x)
    assert h.shape == (2, 64) and net.feat_dim == 64 and net.patch_size == 4
    taps = net.forward_features(x, taps=("block1", "early", "block3", "last"))
    assert set(taps) == {"block1", "block2", "block3", "block4"}
    assert all(t.shape == (2, 64) for t in taps.values())
    torch.testing.assert_close(taps["block4"], h)


def test_encode_visible_never_sees_masked_patches():
    net = vit()
    x = torch.randn(3, 1, 16, 16)
    masked = [0, 1, 2, 5, 6, 7, 8, 9, 10, 13, 14, 15]                     # 12 of 16 patches; 3, 4, 11, 12 visible
    mask = patch_mask(3, 16, masked)
    latents = net.encode_visible(x, mask)
    assert latents.shape == (3, 4, 64)
    torch.testing.assert_close(net(x, mask), latents)

    changed = x.clone()
    changed[:, :, 0:4, 0:4] += 5.0                                         # patch 0: masked
    torch.testing.assert_close(net.encode_visible(changed, mask), latents, rtol=0, atol=0)
    changed[:, :, 0:4, 12:16] += 5.0                                       # patch 3: visible
    assert not torch.allclose(net.encode_visible(changed, mask), latents)


def test_visible_tokens_match_their_patches_in_the_full_sequence_without_attention():
    """With the blocks removed, a visible token's latent is the full image's token at the same patch: the gather
    keeps the patch order and the positions."""
    net = vit()
    net.blocks = torch.nn.ModuleList()
    x = torch.randn(2, 1, 16, 16)
    mask = patch_mask(2, 16, [0, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13])
    full = net.norm(net.tokens(x))
    torch.testing.assert_close(net.encode_visible(x, mask), full[:, [1, 3, 14, 15]])


def test_visible_index_rejects_uneven_or_fully_masked_rows():
    assert visible_index(patch_mask(2, 4, [1, 2])).tolist() == [[0, 3], [0, 3]]
    uneven = patch_mask(2, 4, [1])
    uneven[1, 2] = True
    with pytest.raises(ValueError, match="same number"):
        visible_index(uneven)
    with pytest.raises(ValueError, match="same number"):
        visible_index(torch.ones(2, 4, dtype=torch.bool))


def test_side_not_divisible_by_the_patch_size_is_a_config_error():
    with pytest.raises(ConfigError, match="divisible by its patch size 4"):
        vit()(torch.randn(1, 1, 18, 18))


def test_second_order_gradients_exist():
    """stage2_mode=exact differentiates through a gradient: the explicit attention supports double backward."""
    net = vit()
    x = torch.randn(2, 1, 8, 8)
    params = [p for p in net.parameters() if p.requires_grad]
    grads = torch.autograd.grad(net(x).pow(2).sum(), params, create_graph=True)
    hvp = torch.autograd.grad(sum(g.pow(2).sum() for g in grads), params)
    assert all(torch.isfinite(h).all() for h in hvp)
    assert any(h.abs().sum() > 0 for h in hvp[:-2])                       # blocks, not just the final norm
