"""Multi-process training (train.devices > 1): two CPU processes on a global batch of 2B match one process on 2B.

One Fabric ``ddp_spawn`` launch of two gloo processes trains, one after the other: the baseline (SimCLR, NT-Xent on
the gathered embeddings, BatchNorm over the whole batch), TC² (tasks split over the processes, S from gathered
representations; 4 steps over 2 epochs), +T, and a TC² run checkpointed on ONE process and resumed on TWO. Each is
compared with the same config on one process. The runs are in float64 (``train.precision=64-true``): what differs
is only the order of floating-point sums, so the losses come out equal and the parameters within ~1e-12 of their
scale (measured: baseline 1.3e-12, TC² 4.9e-14, +T 3.3e-14). In float32 TC²'s trajectories amplify rounding noise
so fast that one process with 1 vs 2 threads differs more than 1 vs 2 processes do (docs/distributed.md).
"""
import json
from pathlib import Path

import pytest

from tc2ssl.config import load_config
from tc2ssl.data import load_data
from tc2ssl.errors import ConfigError
from tc2ssl.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from tc2ssl.train.loop import pretrain, pretrain_runs

# digits, 64 training images, global batch 32: 2 steps per epoch; 2 tasks per process for TC² and +T
TINY = ["model.backbone=small_cnn_tiny", "data.max_train=64", "train.batch_size=32", "plugin.n_tasks=4",
        "train.progress=false", "train.log_every=1", "train.threads=1", "eval.enabled=false",
        "train.precision=64-true"]
TWO_PROCESSES = ["train.devices=2", "train.strategy=ddp_spawn"]
#: |loss(2 processes) − loss(1 process)| / |loss(1 process)|, every logged step
LOSS_RTOL = 1e-12
#: max |θ(2) − θ(1)| / max |θ(1)| per parameter tensor after the run
PARAM_RTOL = 1e-10
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def config(out: Path, *extra: str):
    return load_config((), [*TINY, f"out={out}", *extra])


def step_losses(run_dir: Path) -> list[float]:
    records = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [r["loss"] for r in records if r["kind"] == "step"]


def parameter_differences(one: Path, two: Path) -> dict[str, float]:
    """Relative max difference per parameter tensor (method and plug-in networks; BatchNorm running statistics are
    rank 0's, not the single process's, and are excluded: they do not enter training)."""
    a, b = load_checkpoint(one / CHECKPOINT_NAME), load_checkpoint(two / CHECKPOINT_NAME)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])
    diffs = {}
    for part in ("method", "plugin"):
        assert a[part].keys() == b[part].keys()
        for name, x in a[part].items():
            if name.endswith(BUFFER_SUFFIXES) or not x.is_floating_point():
                continue
            x, y = x.double(), b[part][name].double()
            diffs[f"{part}.{name}"] = ((x - y).abs().max() / x.abs().max().clamp_min(1e-12)).item()
    return diffs


def test_two_processes_on_a_global_batch_match_one_process(tmp_path):
    data = load_data(config(tmp_path).data)
    runs = {"none": ["plugin.name=none", "train.epochs=1"],
            "tc2": ["plugin.name=tc2", "train.epochs=2"],
            "tasks": ["plugin.name=tasks", "train.epochs=1"]}
    one = {name: pretrain(config(tmp_path / "one" / name, *o), data) for name, o in runs.items()}
    # a one-process TC² run stopped after epoch 0, to be resumed on two processes
    pretrain(config(tmp_path / "resumed", *runs["tc2"], "train.max_steps=2"), data)
    two_cfgs = [config(tmp_path / "two" / name, *o, *TWO_PROCESSES) for name, o in runs.items()]
    two_cfgs.append(config(tmp_path / "resumed", *runs["tc2"], *TWO_PROCESSES, "train.resume=true"))
    two = pretrain_runs(two_cfgs, data)
    assert two == [Path(c.out) for c in two_cfgs]
    print(report(one, tmp_path))

    compared = {**{name: (one[name], tmp_path / "two" / name) for name in runs},
                "tc2 resumed on 2": (one["tc2"], tmp_path / "resumed")}
    for label, (single, double) in compared.items():
        a, b = step_losses(single), step_losses(double)
        assert len(a) == len(b) > 0, label
        for x, y in zip(a, b):
            assert abs(x - y) <= LOSS_RTOL * abs(x), (label, a, b)
        worst = max(parameter_differences(single, double).items(), key=lambda kv: kv[1])
        assert worst[1] <= PARAM_RTOL, (label, worst)
    # rank 0 alone wrote the run folder
    for name in runs:
        assert sorted(p.name for p in (tmp_path / "two" / name).iterdir()) == \
            ["checkpoint.pt", "config.yaml", "encoder.safetensors", "metrics.jsonl"]


@pytest.mark.parametrize("overrides, message", [
    (["train.batch_size=33"], "divisible by train.devices=2"),
    (["plugin.name=tc2", "plugin.n_tasks=3", "train.batch_size=36"], "plugin.n_tasks=3 must be divisible"),
    (["plugin.name=none", "method.name=byol"], "plugin.name=none supports method.name"),
    (["train.devices=300"], "train.devices=300 is out of range"),
])
def test_impossible_multi_process_configs_are_config_errors(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config((), [*TINY, f"out={tmp_path}", *TWO_PROCESSES, *overrides])


def test_auto_strategy_is_ddp_spawn_and_ddp_launches_once_per_command(tmp_path, monkeypatch):
    from tc2ssl.distributed import launch_strategy
    from tc2ssl.train import loop

    assert launch_strategy(load_config((), ["train.devices=2"]).train) == "ddp_spawn"
    assert launch_strategy(load_config((), ["train.devices=2", "train.strategy=ddp"]).train) == "ddp"
    monkeypatch.setattr(loop, "_SCRIPT_LAUNCHED", True)   # a second run in a command that ddp re-runs per process
    with pytest.raises(ConfigError, match="ddp_spawn"):
        pretrain(config(tmp_path, "train.devices=2", "train.strategy=ddp"))


def test_runs_launched_together_must_agree_on_devices(tmp_path):
    with pytest.raises(ConfigError, match="train.devices"):
        pretrain_runs([config(tmp_path / "a"), config(tmp_path / "b", *TWO_PROCESSES)])


def report(one, tmp_path):
    lines = []
    for name in one:
        a, b = step_losses(one[name]), step_losses(tmp_path / "two" / name)
        lines.append(f"{name}: loss {max(abs(x - y) / abs(x) for x, y in zip(a, b)):.3g} "
                     f"param {max(parameter_differences(one[name], tmp_path / 'two' / name).values()):.3g}")
    return "\n".join(lines)
