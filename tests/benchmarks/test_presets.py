"""Benchmark presets: every preset × suite resolves to a valid config, and the cpu preset's budget arithmetic in
its docstring matches its settings."""
import pytest

from tc2ssl import config as config_mod
from tc2ssl.benchmarks import PRESETS, SUITES, get_preset
from tc2ssl.benchmarks import presets as presets_module
from tc2ssl.errors import ConfigError


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("suite", SUITES.names())
def test_every_preset_and_suite_is_a_valid_config(preset, suite):
    cfg = config_mod.load_config((), [*get_preset(preset).overrides_for(suite), *SUITES.get(suite).overrides])
    assert cfg.data.name == {"digits_transfer": "mnist"}.get(suite, suite)
    if preset == "smoke":
        assert cfg.model.backbone == "small_cnn_tiny" and cfg.train.epochs == 1 and cfg.data.max_train <= 500
    if preset == "paper":
        assert cfg.model.backbone in ("resnet18", "resnet50") and cfg.train.accelerator == "gpu"
        assert cfg.data.max_train == 0 and cfg.eval.max_train == 0
    # the CPU presets' conflict-against-accuracy analysis (and their stored runs) log the conflict every step;
    # the paper preset keeps training's default
    assert cfg.plugin.conflict_every == (10 if preset == "paper" else 1)


# training images before data.max_train (../shared/data/README.md; PACS: photo + sketch + cartoon train lists)
TRAIN_IMAGES = {"colored_mnist": 14262, "digits_transfer": 14262, "cifar10_subset": 4660, "pacs": 1499 + 3531 + 2107}
# steps per pretraining stated in the cpu preset's docstring
DOCUMENTED_STEPS = {"colored_mnist": 112, "digits_transfer": 48, "cifar10_subset": 72, "pacs": 72}


@pytest.mark.parametrize("suite", sorted(DOCUMENTED_STEPS))
def test_cpu_budget_arithmetic_matches_the_preset(suite):
    cfg = config_mod.load_config((), [*get_preset("cpu").overrides_for(suite), *SUITES.get(suite).overrides])
    images = min(TRAIN_IMAGES[suite], cfg.data.max_train or TRAIN_IMAGES[suite])
    steps = images // cfg.train.batch_size * cfg.train.epochs
    assert steps == DOCUMENTED_STEPS[suite]
    assert f"= {steps} steps" in presets_module.__doc__
    assert get_preset("cpu").seeds == (0, 1, 2)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="valid presets: smoke, cpu, standard, paper"):
        get_preset("gpu")
