import pytest
import torch

from tc2ssl.config import DataConfig
from tc2ssl.data.augment import CROP_MODES, ViewMaker, auto_preset, crop_mode_for, step_seed
from tc2ssl.errors import ConfigError


def _images(c=1, n=6, s=16):
    return (torch.arange(n * c * s * s) % 251).to(torch.uint8).view(n, c, s, s)


def test_views_shape_range_and_determinism():
    vm = ViewMaker("digits", 16, 1)
    x = _images()
    a, b, c = vm(x, 4, seed=3), vm(x, 4, seed=3), vm(x, 4, seed=4)
    assert a.shape == (6, 4, 1, 16, 16) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[:, 0], a[:, 1])  # views of one image differ


def test_view_making_does_not_disturb_global_rng():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    ViewMaker("cifar", 16, 3)(_images(3), 2, seed=1)
    assert torch.equal(torch.rand(3), expected)


def test_none_preset_is_identity_in_unit_range():
    x = _images()
    v = ViewMaker("none", 16, 1)(x, 2, seed=0)
    assert torch.allclose(v[:, 0], x.float() / 127.5 - 1) and torch.equal(v[:, 0], v[:, 1])


def test_auto_preset_never_flips_digits():
    assert auto_preset("mnist", 1, 28) == "digits"
    assert auto_preset("mnistm", 3, 28) == "digits"
    assert auto_preset("cifar10", 3, 32) == "cifar"
    assert auto_preset("pacs", 3, 96) == "imagenet"


def test_step_seeds_are_distinct():
    seeds = {step_seed(0, e, s) for e in range(5) for s in range(100)}
    assert len(seeds) == 500
    assert step_seed(0, 1, 2) != step_seed(0, 1, 2, stream=1)


def test_views_of_selected_rows_are_those_rows_of_the_whole_batch():
    """Multi-process training: a process transforms only its images, with the parameters drawn for the whole batch."""
    for preset, channels in [("digits", 1), ("digits", 3), ("cifar", 3), ("imagenet", 3), ("none", 1)]:
        maker = ViewMaker(preset, 16, channels)
        images = torch.randint(0, 256, (12, channels, 16, 16), dtype=torch.uint8)
        whole = maker(images, 3, seed=7)
        rows = torch.tensor([9, 0, 4, 11])
        assert torch.equal(maker(images, 3, seed=7, rows=rows), whole[rows]), preset
        assert torch.equal(maker(images, 3, seed=7, rows=torch.arange(12)), whole), preset
    with pytest.raises(ValueError):
        maker(images.float(), 3, seed=7, rows=rows)


@pytest.mark.parametrize("preset", ["digits", "cifar", "imagenet"])
def test_resample_crops_are_the_slice_crops_up_to_rounding(preset):
    """data.crop_mode: the batched warp (resample) and kornia's per-view loop (slice) crop the same boxes from the
    same draws; they differ by float rounding only (and auto is slice on the CPU, bit for bit)."""
    images = torch.randint(0, 256, (16, 3, 24, 24), dtype=torch.uint8)
    sliced = ViewMaker(preset, 24, 3, crop_mode="slice")(images, 4, seed=5)
    resampled = ViewMaker(preset, 24, 3, crop_mode="resample")(images, 4, seed=5)
    assert not torch.equal(sliced, resampled)              # two implementations, really
    torch.testing.assert_close(resampled, sliced, rtol=0, atol=1e-4)
    assert torch.equal(ViewMaker(preset, 24, 3)(images, 4, seed=5), sliced)
    rows = torch.tensor([3, 0, 15])
    assert torch.equal(ViewMaker(preset, 24, 3, crop_mode="resample")(images, 4, seed=5, rows=rows), resampled[rows])


def test_crop_mode_auto_is_resample_on_cuda_only_and_bad_modes_are_named():
    assert crop_mode_for("auto", "cpu") == "slice"
    assert crop_mode_for("auto", "cuda:0") == "resample"
    assert crop_mode_for("slice", "cuda") == "slice"
    with pytest.raises(ConfigError, match="data.crop_mode='batched' is not allowed; valid values: auto, slice"):
        ViewMaker("cifar", 16, 3, crop_mode="batched")
    assert CROP_MODES == DataConfig.__dataclass_fields__["crop_mode"].metadata["choices"]   # one list of modes


def test_the_run_uses_the_configured_crop_mode(tmp_path):
    from tc2ssl.config import load_config
    from tc2ssl.train.loop import build_run

    run = build_run(load_config((), ["model.backbone=small_cnn_tiny", "data.max_train=32", "train.batch_size=16",
                                     "data.crop_mode=resample", f"out={tmp_path}"]))
    assert run.view_maker.crop_mode == "resample"
    crop = next(op for op in run.view_maker.pipeline_for("cpu") if op.__class__.__name__ == "RandomResizedCrop")
    assert crop.flags["cropping_mode"] == "resample"


def test_byol_preset_alternates_its_two_recipes_per_view():
    """View v uses recipe v mod 2: views 0, 2 are those of BYOL's first recipe (blur always, no solarisation) and
    views 1, 3 of its second (blur p = 0.1, solarisation p = 0.2); selected rows stay those of the whole batch."""
    images = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    maker = ViewMaker("byol", 16, 3)
    views = maker(images, 4, seed=3)
    assert views.shape == (10, 4, 3, 16, 16)
    assert torch.equal(views[:, [0, 2]], ViewMaker("byol_view1", 16, 3)(images, 2, seed=3))
    assert torch.equal(views[:, [1, 3]], ViewMaker("byol_view2", 16, 3)(images, 2, seed=step_seed(3, 0, 0, stream=101)))
    first, second = (maker.pipeline_for("cpu", recipe) for recipe in (0, 1))
    probability = {(recipe, type(op).__name__): op.p for recipe, ops in enumerate((first, second)) for op in ops}
    assert probability[(0, "RandomGaussianBlur")] == 1.0 and (0, "RandomSolarize") not in probability
    assert probability[(1, "RandomGaussianBlur")] == 0.1 and probability[(1, "RandomSolarize")] == 0.2
    rows = torch.tensor([7, 2, 5])
    assert torch.equal(maker(images, 4, seed=3, rows=rows), views[rows])


def test_swav_multi_crop_makes_two_global_views_then_local_views():
    """Views 0, 1 are SwAV's global crops (scale 0.14-1), views 2.. its local crops (scale 0.05-0.14), each group in
    one call; selected rows stay those of the whole batch."""
    from tc2ssl.data.augment import recipe_groups

    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    maker = ViewMaker("swav", 16, 3)
    views = maker(images, 5, seed=4)
    assert views.shape == (6, 5, 3, 16, 16)
    assert torch.equal(views[:, :2], ViewMaker("swav_global", 16, 3)(images, 2, seed=4))
    assert torch.equal(views[:, 2:], ViewMaker("swav_local", 16, 3)(images, 3, seed=step_seed(4, 0, 0, stream=101)))
    crops = [next(op for op in maker.pipeline_for("cpu", r) if type(op).__name__ == "RandomResizedCrop")
             for r in (0, 1)]
    assert [tuple(float(x) for x in c._param_generator.scale) for c in crops] == [(0.14, 1.0), (0.05, 0.14)]
    assert recipe_groups("swav", 2) == [[0, 1], []] and recipe_groups("byol", 3) == [[0, 2], [1]]
    rows = torch.tensor([4, 1])
    assert torch.equal(maker(images, 5, seed=4, rows=rows), views[rows])
