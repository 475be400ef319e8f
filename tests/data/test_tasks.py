import pytest
import torch

from tc2ssl.data.tasks import build_tasks, make_masks
from tc2ssl.errors import ConfigError


def test_groups_partition_and_view_split():  # T1
    split = build_tasks(32, 4, 4, 2, torch.Generator().manual_seed(0))
    assert split.groups.shape == (4, 8)
    assert torch.equal(split.groups.flatten().sort().values, torch.arange(32))
    both = torch.cat([split.support_idx, split.query_idx], 1).sort(1).values
    assert torch.equal(both, torch.arange(4).expand(32, 4))
    assert split.support_idx.shape == (32, 2) and split.query_idx.shape == (32, 2)


def test_deterministic_for_a_fixed_generator():
    a = build_tasks(16, 2, 3, 2, torch.Generator().manual_seed(5))
    b = build_tasks(16, 2, 3, 2, torch.Generator().manual_seed(5))
    c = build_tasks(16, 2, 3, 2, torch.Generator().manual_seed(6))
    assert torch.equal(a.groups, b.groups) and torch.equal(a.support_idx, b.support_idx)
    assert torch.equal(a.query_idx, b.query_idx) and a.n_kept == b.n_kept == 16
    assert not torch.equal(a.groups, c.groups)
    # the view split is random per image too (not a fixed arange(m') for everyone)
    assert not torch.equal(a.support_idx, c.support_idx)
    assert len({tuple(row) for row in a.support_idx.sort(1).values.tolist()}) > 1


def test_support_and_query_views_select_the_right_views():
    split = build_tasks(8, 2, 4, 2, torch.Generator().manual_seed(1))
    # views[i, v] = 10 * i + v lets us read back which image / view was taken
    views = (10 * torch.arange(8)[:, None] + torch.arange(4)[None]).float()
    for k in range(2):
        s, q = split.support_views(views, k), split.query_views(views, k)
        assert s.shape == (4, 2) and q.shape == (4, 2)
        members = split.groups[k]
        assert torch.equal((s // 10).long(), members[:, None].expand(4, 2))
        assert torch.equal((s % 10).long(), split.support_idx[members])
        assert torch.equal((q % 10).long(), split.query_idx[members])


def test_per_task_support_and_query_embeddings_have_spec_shapes():  # T2: [n, m', d] and [n, m - m', d]
    n_images, n_tasks, m, m_prime, dim = 24, 3, 5, 2, 7
    split = build_tasks(n_images, n_tasks, m, m_prime, torch.Generator().manual_seed(4))
    z = torch.randn(n_images, m, dim, generator=torch.Generator().manual_seed(9))
    n = n_images // n_tasks
    seen = torch.zeros(n_images, m, dtype=torch.long)
    for k in range(n_tasks):
        support, query = split.support_views(z, k), split.query_views(z, k)
        assert support.shape == (n, m_prime, dim) and query.shape == (n, m - m_prime, dim)
        members = split.groups[k]
        for row, image in enumerate(members.tolist()):
            for col, view in enumerate(split.support_idx[image].tolist()):
                assert torch.equal(support[row, col], z[image, view])
            for col, view in enumerate(split.query_idx[image].tolist()):
                assert torch.equal(query[row, col], z[image, view])
            seen[image, split.support_idx[image]] += 1
            seen[image, split.query_idx[image]] += 1
    assert torch.equal(seen, torch.ones(n_images, m, dtype=torch.long))   # every (image, view) used exactly once


def test_remainder_dropped_with_warning_or_error():
    with pytest.warns(UserWarning, match="dropping 2 image"):
        split = build_tasks(18, 4, 4, 2, torch.Generator().manual_seed(0))
    assert split.n_kept == 16 and split.groups.unique().numel() == 16
    with pytest.raises(ConfigError, match="not divisible by plugin.n_tasks=4"):
        build_tasks(18, 4, 4, 2, torch.Generator(), remainder="error")


def test_invalid_view_counts():
    with pytest.raises(ConfigError):
        build_tasks(16, 2, 2, 2, torch.Generator())
    with pytest.raises(ConfigError):
        build_tasks(16, 2, 3, 1, torch.Generator())


def test_masks_have_exact_count():  # T2 (G-SSL masks)
    masks = make_masks(5, 3, 16, 0.75, torch.Generator().manual_seed(0))
    assert masks.shape == (5, 3, 16) and masks.dtype == torch.bool
    assert (masks.sum(-1) == 12).all()
    assert not torch.equal(masks[:, 0], masks[:, 1])


@pytest.mark.parametrize("n_patches, ratio, expected", [(7, 0.75, 5), (9, 0.75, 7), (16, 0.6, 10), (49, 0.75, 37)])
def test_masks_have_round_ratio_times_patches_when_not_an_integer(n_patches, ratio, expected):  # T2
    assert round(ratio * n_patches) == expected
    masks = make_masks(4, 2, n_patches, ratio, torch.Generator().manual_seed(1))
    assert masks.shape == (4, 2, n_patches)
    assert (masks.sum(-1) == expected).all()
    again = make_masks(4, 2, n_patches, ratio, torch.Generator().manual_seed(1))
    assert torch.equal(masks, again)


def test_task_shards_partition_the_tasks_and_their_images():
    from tc2ssl.distributed import DistributedContext

    split = build_tasks(26, 4, 4, 2, torch.Generator().manual_seed(3))       # 2 images dropped
    shards = [DistributedContext(rank, 2).task_shard(split) for rank in range(2)]
    images = torch.cat([s.images for s in shards])
    assert torch.equal(images.sort().values, split.groups.reshape(-1).sort().values)
    for rank, shard in enumerate(shards):
        local = shard.split
        assert (local.n_tasks, local.n_tasks_total, local.n_kept) == (2, 4, 12)
        for k in range(2):           # local task k is global task 2·rank + k, views and all
            members = shard.images[local.groups[k]]
            assert torch.equal(members, split.groups[2 * rank + k])
            assert torch.equal(local.support_idx[local.groups[k]], split.support_idx[members])
            assert torch.equal(local.query_idx[local.groups[k]], split.query_idx[members])
    assert DistributedContext().task_shard(split).split is split


# ---------------------------------------------------------------- tasks that differ (plugin.task_split)
def coloured_batch(n_per_colour: int = 16, generator_seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [4·n, 3, 8, 8]: a random grey texture tinted by one of 4 colours; and each image's colour."""
    g = torch.Generator().manual_seed(generator_seed)
    palette = torch.tensor([[1.0, 0.1, 0.1], [0.1, 1.0, 0.1], [0.1, 0.1, 1.0], [1.0, 1.0, 0.1]])
    colour = torch.arange(4).repeat_interleave(n_per_colour)[torch.randperm(4 * n_per_colour, generator=g)]
    texture = torch.rand(4 * n_per_colour, 1, 8, 8, generator=g)
    images = (255 * texture * palette[colour][:, :, None, None]).to(torch.uint8)
    return images, colour


def test_balanced_kmeans_recovers_equal_clusters_exactly():
    from tc2ssl.data.tasks import balanced_kmeans

    g = torch.Generator().manual_seed(3)
    centres = 10 * torch.randn(4, 5, generator=g, dtype=torch.float64)
    label = torch.arange(4).repeat_interleave(12)[torch.randperm(48, generator=g)]
    features = centres[label] + torch.randn(48, 5, generator=g, dtype=torch.float64)
    groups = balanced_kmeans(features, 4, torch.Generator().manual_seed(0))
    assert groups.shape == (4, 12)
    assert torch.equal(groups.flatten().sort().values, torch.arange(48))
    assert all(len(set(label[group].tolist())) == 1 for group in groups)       # every cluster is one true cluster


def test_pixel_cluster_tasks_are_pure_in_colour_and_keep_the_random_view_split():
    """On a batch whose images differ only by their colour, pixel_clusters tasks each hold one colour; random tasks
    mix them. The support / query views are the same draw as the random split's, and between_share separates the
    two (≈ 1 against ≈ (K − 1)/(N − 1))."""
    from tc2ssl.data.tasks import between_task_share, pixel_descriptor

    images, colour = coloured_batch()
    features = pixel_descriptor(images)
    clustered = build_tasks(64, 4, 4, 2, torch.Generator().manual_seed(9), task_features=features)
    random = build_tasks(64, 4, 4, 2, torch.Generator().manual_seed(9))
    assert torch.equal(clustered.groups.flatten().sort().values, torch.arange(64))
    assert all(len(set(colour[group].tolist())) == 1 for group in clustered.groups)
    assert all(len(set(colour[group].tolist())) > 1 for group in random.groups)
    assert torch.equal(clustered.support_idx, random.support_idx) and torch.equal(clustered.query_idx,
                                                                                  random.query_idx)
    assert random.between_share is None and clustered.between_share > 0.5
    assert between_task_share(features.double(), random.groups) < 0.15
    with pytest.raises(ValueError, match="task_features has 10 rows"):
        build_tasks(64, 4, 4, 2, torch.Generator().manual_seed(9), task_features=features[:10])


def test_pixel_cluster_split_drops_the_remainder_and_stays_balanced():
    from tc2ssl.data.tasks import pixel_descriptor

    images, _ = coloured_batch()
    with pytest.warns(UserWarning, match="dropping 2"):
        split = build_tasks(62, 4, 4, 2, torch.Generator().manual_seed(1),
                            task_features=pixel_descriptor(images[:62]))
    assert split.groups.shape == (4, 15) and len(set(split.groups.flatten().tolist())) == 60
