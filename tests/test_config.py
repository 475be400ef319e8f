import pytest

from tc2ssl import config as config_mod
from tc2ssl.config import load_config, to_yaml, from_dict, to_dict
from tc2ssl.errors import ConfigError


def test_defaults_and_overrides():
    cfg = load_config((), ["train.epochs=3", "plugin.name=tc2", "plugin.n_tasks=2", "seed=7"])
    assert cfg.train.epochs == 3 and cfg.plugin.name == "tc2" and cfg.plugin.n_tasks == 2 and cfg.seed == 7
    assert cfg.data.name == "digits" and cfg.method.name == "simclr"


def test_preset_then_override_wins():
    cfg = load_config(["default"], ["train.epochs=2"])
    assert cfg.train.epochs == 2
    assert cfg.train.batch_size == 128  # from the preset


def test_round_trip_through_dict():
    cfg = load_config((), ["plugin.name=tasks"])
    assert from_dict(to_dict(cfg)) == cfg
    assert "plugin:" in to_yaml(cfg)


@pytest.mark.parametrize("override, needle", [
    ("data.name=nope", "valid names"),
    ("method.name=nope", "simclr"),
    ("plugin.name=nope", "tc2"),
    ("model.backbone=nope", "small_cnn"),
    ("train.batch_size=1", "train.batch_size"),
    ("train.epochs=abc", "train.epochs"),
    ("plugin.stage2_mode=second", "first_order"),
    ("no.such.key=1", "unknown key"),
    ("train.epochs", "key=value"),
    ("method.temperature=0", "method.temperature"),
])
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config((), [override])
    assert needle in str(err.value)


def test_support_views_must_leave_a_query():
    with pytest.raises(ConfigError, match="n_support_views"):
        load_config((), ["plugin.name=tc2", "plugin.n_views=2", "plugin.n_support_views=2"])


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match="valid presets: .*default"):
        load_config(["nope"], [])


def test_small_cnn_tiny_records_the_widths_it_builds():
    from tc2ssl.models import build_backbone

    cfg = load_config((), ["model.backbone=small_cnn_tiny"])
    assert cfg.model.widths == [16, 32, 64, 64]
    assert "- 16\n" in to_yaml(cfg) and "- 128\n" not in to_yaml(cfg)               # config.yaml tells the truth
    built = [block[0].out_channels for block in build_backbone(cfg.model, 1).blocks]
    assert built == cfg.model.widths
    # a run folder written before widths were resolved recorded the unused default: it reloads as what was built
    legacy = to_dict(cfg)
    legacy["model"]["widths"] = [32, 64, 128, 128]
    assert from_dict(legacy).model.widths == [16, 32, 64, 64]
    assert load_config((), ["model.widths=[8,16,16,32]"]).model.widths == [8, 16, 16, 32]   # small_cnn honours it


def test_cross_key_rules_accept_what_is_valid():
    """The counterparts of the rejected combinations (tests/test_cli.py BAD_INPUTS) still load."""
    assert load_config((), ["plugin.name=tc2", "plugin.remainder=error", "plugin.n_tasks=4",
                            "train.batch_size=32"]).plugin.remainder == "error"
    assert load_config((), ["plugin.name=tc2", "plugin.n_tasks=3", "train.batch_size=32"]).plugin.n_tasks == 3  # drop
    assert load_config(["mae"], ["plugin.name=tc2"]).plugin.n_support_views == 1      # MAE's minimum is 1
    assert load_config((), ["train.precision=16-mixed"]).train.precision == "16-mixed"  # the baseline is scaled
    with pytest.raises(ConfigError, match=r"method.patch_size=8 .* valid value: 4"):
        load_config(["mae"], ["method.patch_size=8"])
    with pytest.raises(ConfigError, match=r"plugin.n_support_views=1 is too small for method.name=byol"):
        load_config((), ["plugin.name=tc2", "method.name=byol", "plugin.n_support_views=1"])


@pytest.mark.parametrize("key", ["plugin.split=sample", "data.num_workers=2"])
def test_removed_keys_are_config_errors_that_say_so(key):
    with pytest.raises(ConfigError, match=f"{key.split('=')[0]} was removed"):
        load_config((), [key])


def test_a_run_config_written_with_removed_keys_still_loads():
    old = to_dict(load_config())
    old["plugin"]["split"], old["data"]["num_workers"] = "view", 0
    assert to_dict(from_dict(old)) == to_dict(load_config())


def test_load_config_can_start_from_a_finished_runs_config():
    base = load_config((), ["train.epochs=3", "plugin.name=tc2"])
    cfg = load_config((), ["plugin.name=tasks"], base=base)
    assert (cfg.train.epochs, cfg.plugin.name) == (3, "tasks") and base.plugin.name == "tc2"


def test_a_plugin_config_block_is_parsed_validated_and_round_trips(monkeypatch):
    """The mechanism a new plug-in uses for ``plugin.<name>.*`` (a dataclass field of PluginConfig)."""
    import dataclasses

    from tc2ssl import config
    from tc2ssl.config_fields import bounded, choice

    @dataclasses.dataclass
    class ExampleBlock:
        width: int = bounded(8, 1)
        mode: str = choice("fast", ("fast", "exact"))

    @dataclasses.dataclass
    class PluginWithBlock(config.PluginConfig):
        example: ExampleBlock = dataclasses.field(default_factory=ExampleBlock)

    @dataclasses.dataclass
    class RunWithBlock(config.RunConfig):
        plugin: PluginWithBlock = dataclasses.field(default_factory=PluginWithBlock)

    monkeypatch.setattr(config, "RunConfig", RunWithBlock)
    cfg = load_config((), ["plugin.example.width=3"])
    assert cfg.plugin.example.width == 3 and cfg.plugin.example.mode == "fast"
    assert from_dict(to_dict(cfg)).plugin.example.width == 3
    with pytest.raises(ConfigError, match="plugin.example.mode='slow' is not allowed; valid values: fast, exact"):
        load_config((), ["plugin.example.mode=slow"])
    with pytest.raises(ConfigError, match="plugin.example.width=0 is out of range"):
        load_config((), ["plugin.example.width=0"])


@pytest.mark.parametrize("overrides, named", [
    (["data.local_views=4", "method.name=swav", "plugin.name=none"], "data.augment=auto"),
    (["data.local_views=4", "data.augment=swav", "plugin.name=none"], "method.name=simclr"),
    (["data.local_views=4", "data.augment=swav", "method.name=swav", "plugin.name=tc2"], "plugin.name=tc2"),
])
def test_multi_crop_outside_the_swav_baseline_is_a_config_error(overrides, named):
    with pytest.raises(ConfigError, match="data.local_views=4 .multi-crop. needs") as err:
        load_config((), overrides)
    assert named in str(err.value)


def test_swav_multi_crop_baseline_trains_on_global_and_local_views(tmp_path):
    """The baseline makes 2 + data.local_views views and SwAV's loss sees all of them; one step lowers nothing to
    NaN and the views are those of the swav recipe."""
    import torch

    from tc2ssl.plugins.base import StepInfo
    from tc2ssl.train.loop import build_run

    run = build_run(load_config((), ["model.backbone=small_cnn_tiny", "data.max_train=32", "train.batch_size=16",
                                     "method.name=swav", "data.augment=swav", "data.local_views=3",
                                     f"out={tmp_path}"]))
    seen = []
    training_loss = run.method.training_loss
    run.method.training_loss = lambda views: seen.append(views.shape) or training_loss(views)
    images = run.data.train.images[:16]
    metrics = run.plugin.training_step(images, StepInfo(epoch=0, step=0, seed=1))
    assert seen == [torch.Size((16, 5, *seen[0][2:]))]
    assert torch.isfinite(metrics["loss"])
    assert all(p.grad is not None for p in run.method.backbone.parameters())


@pytest.mark.parametrize("name", sorted(p.stem for p in config_mod.PRESET_DIR.glob("*.yaml")))
def test_a_preset_as_overrides_gives_the_presets_config(name):
    """`tc2ssl benchmark -p NAME` passes presets as key=value overrides: the same config, for every preset."""
    as_overrides = config_mod.load_config((), config_mod.preset_overrides(name))
    assert config_mod.to_dict(as_overrides) == config_mod.to_dict(config_mod.load_config((name,)))
