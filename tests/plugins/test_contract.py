"""The plug-in contract (src/tc2ssl/plugins/base.py), exercised by a plug-in written only against it.

``HeadProbe`` trains a head of its own with the loop's outer optimiser (``outer_parameters``), freezes the early
part of the backbone through the hooks (``Backbone.split`` + ``Plugin.freeze`` in ``on_fit_start``; the base
``on_epoch_start`` keeps that part's BatchNorm in eval mode after the loop's ``method.train()``), owns a config
block of its own (``config_block``) and runs post hoc on a finished run folder (``tc2ssl posthoc``).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tc2ssl.config import load_config
from tc2ssl.data import load_data
from tc2ssl.errors import ConfigError
from tc2ssl.plugins.base import PLUGINS, Plugin, StepInfo
from tc2ssl.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from tc2ssl.train.loop import build_run, pretrain
from tc2ssl.workflows import run_posthoc

TINY = ["model.backbone=small_cnn_tiny", "train.batch_size=16", "data.max_train=64", "eval.enabled=false",
        "train.progress=false", "method.proj_output_dim=16", "method.proj_hidden_dim=16", "train.epochs=1"]
FROZEN_AT = "block2"                      # small_cnn: blocks 1-2 are the early part
FROZEN_PREFIXES = ("backbone.blocks.0.", "backbone.blocks.1.")


class HeadProbe(Plugin):
    """SimCLR's two-view loss on the encoder plus a head of the plug-in's own that predicts view 2's embedding
    from view 1's (both losses back-propagated once; the head is stepped by the outer optimiser)."""

    supports_loss_scaling = True
    freeze_at = FROZEN_AT

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.train.batch_size < 4:
            raise ConfigError(f"train.batch_size={cfg.train.batch_size}: plugin.name=head_probe needs >= 4")

    def __init__(self, cfg, method, view_maker):
        super().__init__(cfg, method, view_maker)
        self.head = nn.Linear(method.embed_dim, method.embed_dim)
        self.epochs_started: list[int] = []

    def outer_parameters(self) -> dict[str, nn.Parameter]:
        return {f"head.{name}": p for name, p in self.head.named_parameters()}

    def on_fit_start(self, run) -> None:
        early, _rest = run.method.backbone.split(at=self.freeze_at)
        self.freeze(early)

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self.epochs_started.append(epoch)

    def training_step(self, images: torch.Tensor, info: StepInfo) -> dict[str, torch.Tensor]:
        views = self.augmented_views(images, 2, info.seed)
        loss, z = self.method.training_loss(views)
        head_loss = F.mse_loss(self.head(z[:, 0]), z[:, 1].detach())
        self.backward(loss + head_loss)
        return {"loss": loss.detach(), "head_loss": head_loss.detach()}


@pytest.fixture(autouse=True, scope="module")
def head_probe_registered():
    """``head_probe`` is a plug-in for this module only: registered here, removed afterwards."""
    PLUGINS.register("head_probe")(HeadProbe)
    yield
    PLUGINS._items.pop("head_probe")


@pytest.fixture(scope="module")
def digits():
    return load_data(load_config((), TINY).data)


def config(tmp_path, name: str, *overrides: str):
    return load_config((), [*TINY, f"out={tmp_path / name}", *overrides])


def frozen_state(state: dict) -> dict[str, torch.Tensor]:
    """The early part's weights AND BatchNorm buffers (running mean/var, batches tracked) of a method state."""
    return {k: v.clone() for k, v in state.items() if k.startswith(FROZEN_PREFIXES)}


def test_plugin_flags_replace_name_lists_in_validation():
    with pytest.raises(ConfigError, match="head_probe needs >= 4"):
        load_config((), ["plugin.name=head_probe", "train.batch_size=2"])
    with pytest.raises(ConfigError, match="not supported with plugin.name=head_probe"):
        load_config((), ["plugin.name=head_probe", "train.devices=2", "train.batch_size=16"])
    with pytest.raises(ConfigError, match="16-mixed"):   # none of these plug-ins' flags allow it
        load_config((), ["plugin.name=tasks", "train.precision=16-mixed"])


def test_outer_parameters_are_trained_checkpointed_and_frozen_prefix_is_bit_identical(digits, tmp_path):
    cfg = config(tmp_path, "run", "plugin.name=head_probe", "train.epochs=2")
    initial = build_run(cfg, digits)            # the same seeded initial weights the run starts from
    initial_method = {k: v.clone() for k, v in initial.method.state_dict().items()}
    initial_head = {k: v.clone() for k, v in initial.plugin.state_dict().items()}
    out = pretrain(cfg, digits)
    state = load_checkpoint(out / CHECKPOINT_NAME)
    frozen_before, frozen_after = frozen_state(initial_method), frozen_state(state["method"])
    assert any(k.endswith("running_mean") for k in frozen_after) and frozen_after.keys() == frozen_before.keys()
    for key, value in frozen_before.items():                       # weights and BN statistics untouched
        assert torch.equal(frozen_after[key], value), key
    later = "backbone.blocks.2.0.weight"
    assert not torch.equal(state["method"][later], initial_method[later])   # the rest of the encoder trains
    for key, value in initial_head.items():                                   # the head is stepped ...
        assert not torch.equal(state["plugin"][key], value), key
    # ... by the outer optimiser: the head is last in both of its groups (decay: weight, no decay: bias)
    decay, no_decay = (group["params"] for group in state["optimizer"]["param_groups"])
    moments = state["optimizer"]["state"]
    assert moments[decay[-1]]["exp_avg"].shape == (16, 16) and moments[no_decay[-1]]["exp_avg"].shape == (16,)
    assert moments[decay[-1]]["exp_avg"].abs().sum() > 0


def test_resume_with_outer_parameters_is_bit_identical(digits, tmp_path):
    straight = pretrain(config(tmp_path, "straight", "plugin.name=head_probe", "train.epochs=2"), digits)
    pretrain(config(tmp_path, "resumed", "plugin.name=head_probe", "train.epochs=2", "train.max_steps=4"), digits)
    resumed = pretrain(config(tmp_path, "resumed", "plugin.name=head_probe", "train.epochs=2",
                              "train.resume=true"), digits)
    a, b = load_checkpoint(straight / CHECKPOINT_NAME), load_checkpoint(resumed / CHECKPOINT_NAME)
    for part in ("method", "plugin"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), (part, key)


def test_hooks_run_in_order_and_frozen_batchnorm_stays_in_eval_mode(digits, tmp_path):
    run = build_run(config(tmp_path, "hooks", "plugin.name=head_probe"), digits)
    run.plugin.on_fit_start(run)
    run.method.train()                                     # what the loop does every epoch ...
    run.plugin.train()
    run.plugin.on_epoch_start(0)                           # ... then the hook
    blocks = run.method.backbone.blocks
    assert not blocks[0].training and not blocks[1].training and blocks[2].training
    assert not any(p.requires_grad for p in blocks[:2].parameters())
    assert set(run.plugin.outer_parameters()) == {"head.weight", "head.bias"}
    assert run.plugin.epochs_started == [0]


def test_posthoc_fine_tunes_a_finished_run_from_its_weights(digits, tmp_path):
    finished = pretrain(config(tmp_path, "finished", "plugin.name=none", "data.max_train=64"), digits)
    finished_state = load_checkpoint(finished / CHECKPOINT_NAME)["method"]
    run_posthoc(finished, ["plugin.name=head_probe", "train.epochs=1"])
    posthoc = finished / "posthoc_head_probe"
    state = load_checkpoint(posthoc / CHECKPOINT_NAME)
    assert state["config"]["train"]["init_from"] == str(finished)
    for key, value in frozen_state(finished_state).items():   # started from the finished weights, kept frozen
        assert torch.equal(state["method"][key], value), key
    fresh = build_run(config(tmp_path, "fresh", "plugin.name=none"), digits).method.state_dict()
    assert not torch.equal(fresh["backbone.blocks.0.0.weight"], state["method"]["backbone.blocks.0.0.weight"])
