"""The pretraining loop (Lightning Fabric for devices, processes and precision).

Why one file of ~490 lines: the order of everything a run does (build, plug-in hooks, resume, steps, collectives,
logging, checkpoints, export) is the point of this module and reads in one place; the parts with a life of their
own are elsewhere (``train/checkpoint.py``, ``train/schedule.py``, ``distributed.py``, the plug-ins).

Per step: views and the TC² task split come from seeds derived from (run seed, epoch, step), and the image order of
an epoch from (run seed, epoch), so a run resumed from its last epoch checkpoint replays exactly what an
uninterrupted run does. A checkpoint is written atomically at the end of every epoch; a non-finite loss, or an epoch
mean loss more than 10 x max(|best|, 1) above the best epoch mean so far (:func:`check_epoch_loss`), stops the run with
a clear message and leaves the last good checkpoint in place. The run folder is claimed first
(``tc2ssl.train.run_folder``: a lock, and no mixing with another run's files).

``train.precision=16-mixed`` (CUDA) scales the loss with a ``torch.amp.GradScaler`` (``Plugin.backward``) and
unscales the gradients before clipping and the optimiser step (:func:`apply_gradients`); on a CPU Fabric runs it as
bf16-mixed, which needs no scaling. ``metrics.jsonl`` logs the learning rate each step used.

With ``train.devices`` = W > 1, Fabric launches W processes; ``train.batch_size`` is the global batch, every
process reads the same batch and the plug-in works on its share of it (``tc2ssl.distributed``); the loop sums the
gradient shares, averages the metrics, and only rank 0 writes the run folder.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from tc2ssl import config as config_mod
from tc2ssl.data import load_data
from tc2ssl.data.augment import ViewMaker, auto_preset, seeded, step_seed
from tc2ssl.data.base import DataSplits
from tc2ssl import errors as errors_mod
from tc2ssl.diagnostics.layers import LayerDiagnostics
from tc2ssl.distributed import SINGLE_PROCESS, DistributedContext, launch_strategy
from tc2ssl.errors import CheckpointError, ConfigError, TC2SSLError, TrainingError
from tc2ssl.methods import build_method
from tc2ssl.models import build_backbone
from tc2ssl.models.export import encoder_metadata
from tc2ssl.plugins import build_plugin
from tc2ssl.plugins.base import StepInfo, trainable_parameters
from tc2ssl.train.checkpoint import (CHECKPOINT_NAME, atomic_write_text, export_encoder, load_checkpoint,
                                     require_run_state, save_checkpoint)
from tc2ssl.train.monitor import TrainingMonitor
from tc2ssl.train.run_folder import DISK_ERRNOS, claimed_run_folder, disk_error, remove_stale_evaluations
from tc2ssl.train.schedule import build_optimizer, build_scheduler
from tc2ssl.yaml_io import read_yaml_mapping

# keys that may differ between the run that wrote a checkpoint and the run that resumes it
RESUME_FREE_KEYS = {"train.resume", "train.overwrite", "train.progress", "train.max_steps", "train.log_every",
                    "train.threads", "eval", "diag", "out",
                    # the global batch makes a run independent of the number of processes (tc2ssl.distributed)
                    "train.devices", "train.strategy",
                    # what the run shows while it trains (tc2ssl.train.monitor), not what it trains
                    "train.loggers", "train.online_probe", "train.knn_monitor_every", "train.monitor_images"}


@dataclass
class Run:
    """Everything a pretraining run is made of (also what the Python API hands to a user's own loop)."""

    cfg: config_mod.RunConfig
    data: DataSplits
    method: torch.nn.Module
    plugin: torch.nn.Module
    view_maker: ViewMaker
    device: torch.device
    fabric: object


def build_fabric(train_cfg):
    """The Fabric of ``train.*``. One device: no processes are launched (``train.strategy`` is not used); several:
    ``launch_strategy`` (``auto`` = ``ddp_spawn``)."""
    from lightning.fabric import Fabric

    accelerator = "cuda" if train_cfg.accelerator == "gpu" else train_cfg.accelerator
    if accelerator == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.accelerator=gpu but no CUDA device is available; use train.accelerator=cpu")
    devices = train_cfg.devices
    if devices > 1 and accelerator in ("cuda", "auto") and torch.cuda.is_available() \
            and devices > torch.cuda.device_count():
        raise ConfigError(f"train.devices={devices} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    strategy = launch_strategy(train_cfg) if devices > 1 else "auto"
    return Fabric(accelerator=accelerator, devices=devices, strategy=strategy, precision=train_cfg.precision)


def build_run(cfg: config_mod.RunConfig, data: DataSplits | None = None, fabric=None) -> Run:
    """Load the data and build method, plug-in and augmentation for ``cfg`` (weights seeded by ``cfg.seed``)."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.set_flush_denormal(True)  # denormal floats in tiny gradients slow CPU kernels by orders of magnitude
    fabric = fabric or build_fabric(cfg.train)
    data = data or load_data(cfg.data)
    train = data.train
    if len(train) < cfg.train.batch_size:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} is larger than the {len(train)} training images "
                          f"of {cfg.data.name!r}; lower train.batch_size")
    torch.manual_seed(cfg.seed)  # the initial weights depend on the seed only
    backbone = build_backbone(cfg.model, train.channels)
    method = build_method(cfg.method, backbone)
    preset = cfg.data.augment if cfg.data.augment != "auto" else auto_preset(cfg.data.name, train.channels,
                                                                             train.resolution)
    view_maker = ViewMaker(preset, train.resolution, train.channels, crop_mode=cfg.data.crop_mode)
    plugin = build_plugin(cfg, method, view_maker)
    device = fabric.device
    if cfg.train.precision == "64-true":   # Fabric's autocast then makes float64 the default dtype of the step
        method.double()
        plugin.double()
        view_maker.set_dtype(torch.float64)
    method.to(device)
    plugin.to(device)
    if cfg.train.channels_last and device.type == "cuda":
        method.to(memory_format=torch.channels_last)
    return Run(cfg, data, method, plugin, view_maker, device, fabric)


def build_grad_scaler(train_cfg, device: torch.device, plugin) -> torch.amp.GradScaler | None:
    """The loss scaler of ``train.precision=16-mixed`` (fp16 gradients underflow without one); None otherwise, and
    on a CPU, where Fabric runs 16-mixed as bf16-mixed. A plug-in must back-propagate through ``Plugin.backward``
    (``supports_loss_scaling``) for its gradients to be scaled."""
    if train_cfg.precision != "16-mixed" or device.type == "cpu":
        return None
    if not getattr(plugin, "supports_loss_scaling", False):
        raise ConfigError(config_mod.unscalable_plugin_message(plugin.cfg.name))
    return torch.amp.GradScaler(device.type)


def apply_gradients(optimizer: torch.optim.Optimizer, params, grad_clip: float = 0.0,
                    scaler: torch.amp.GradScaler | None = None) -> None:
    """One optimiser step on the gradients in ``.grad``: with a loss scaler they are unscaled first, clipped to
    global norm ``grad_clip`` (0 = off), and the step is skipped (the scale lowered) when they hold inf/NaN."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(list(params), grad_clip)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()


class MetricsLog:
    """``metrics.jsonl``: one JSON object per logged step and per epoch, appended and flushed as it goes."""

    def __init__(self, path: Path):
        self.path = path

    def truncate_after(self, step: int, epoch: int) -> None:
        """Drop records written after a checkpoint (a resumed run rewrites them). The last line may be cut short
        by a kill (it is dropped); any other line that is not a metrics record is an error naming it."""
        if not self.path.exists():
            return
        lines = self.path.read_bytes().split(b"\n")
        last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
        kept = []
        for i, raw in enumerate(lines):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw.decode("utf-8"))
                position = {"epoch": rec["epoch"], "step": rec["step"]}[rec["kind"]]
                if not isinstance(position, int):
                    raise TypeError(position)
            except (ValueError, KeyError, TypeError):
                if i == last:
                    continue  # a line cut short by a kill
                raise CheckpointError(f"{self.path}, line {i + 1}: not a metrics record ({raw[:60]!r}); the file "
                                      "was edited or damaged: repair or delete that line to resume") from None
            if rec["kind"] == "epoch" and position < epoch or rec["kind"] == "step" and position < step:
                kept.append(raw.decode("utf-8"))
        atomic_write_text(self.path, "".join(k + "\n" for k in kept))

    def write(self, record: dict) -> None:
        try:
            with self.path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
                fh.flush()
        except OSError as exc:
            if exc.errno not in DISK_ERRNOS:
                raise
            raise disk_error(exc, self.path) from None


#: an epoch whose mean loss exceeds the best epoch mean so far by more than this many times max(|best|, 1) is
#: "exploding": the run stops and keeps the checkpoint of the epoch before (see docs/reliability.md)
EXPLOSION_FACTOR = 10.0


def check_epoch_loss(loss: float, best: float | None, epoch: int, ckpt_path: Path) -> float:
    """Stop the run (TrainingError) when the epoch's mean ``loss`` is exploding against ``best``, the lowest
    epoch mean so far; returns the new best."""
    if best is not None and loss - best > EXPLOSION_FACTOR * max(abs(best), 1.0):
        kept = (f"the last good checkpoint (epoch {epoch - 1}) is kept at {ckpt_path}" if ckpt_path.exists()
                else "no checkpoint had been written yet")
        raise TrainingError(f"the loss exploded at epoch {epoch} (epoch mean {loss:.4g}, best so far {best:.4g}; "
                            f"more than {EXPLOSION_FACTOR:g} x max(|best|, 1) above it); {kept}. Try a lower "
                            "train.lr or train.grad_clip=1.0")
    return loss if best is None else min(best, loss)


class NonFiniteWatch:
    """Remembers, on the device, the first step whose loss was not finite; :meth:`check` reads it on the host.

    Checking ``torch.isfinite(loss)`` on the host every step would synchronise a CUDA device every step (the host
    then cannot queue the next step while the device works). The loop checks at logging steps and at the end of
    every epoch, before the epoch's checkpoint: a non-finite loss still stops the run with its first step named,
    and no checkpoint is written from the steps after it.
    """

    def __init__(self, device: torch.device):
        self.first_step = torch.full((), -1, dtype=torch.long, device=device)
        self.epoch = torch.full((), -1, dtype=torch.long, device=device)
        self.value = torch.zeros((), device=device)

    def update(self, loss: torch.Tensor, epoch: int, step: int) -> None:
        new = (~torch.isfinite(loss)) & (self.first_step < 0)
        self.first_step = torch.where(new, step, self.first_step)
        self.epoch = torch.where(new, epoch, self.epoch)
        self.value = torch.where(new, loss.to(self.value.dtype), self.value)

    def check(self, ckpt_path: Path) -> None:
        step = int(self.first_step)
        if step < 0:
            return
        epoch = int(self.epoch)
        kept = (f"the last good checkpoint (epoch {epoch - 1}) is kept at {ckpt_path}" if ckpt_path.exists()
                else "no checkpoint had been written yet")
        raise TrainingError(f"the loss became non-finite ({float(self.value)}) at epoch {epoch}, step {step}; "
                            f"{kept}. Try a lower train.lr or train.grad_clip=1.0")


def _floats(metrics: dict) -> dict:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor):
            v = v.detach().float().item() if v.numel() == 1 else None
        if isinstance(v, (int, float)) and v is not None:
            out[k] = float(v)
    return out


def _config_diff(a: dict, b: dict, prefix: str = "", labels: tuple[str, str] = ("checkpoint ", " vs now ")
                 ) -> list[str]:
    """The keys where configs ``a`` and ``b`` differ (resume-free keys skipped), each as ``key: <labels[0]>A
    <labels[1]>B``."""
    diffs = []
    for key in sorted(set(a) | set(b)):
        full = f"{prefix}{key}"
        if full in RESUME_FREE_KEYS:
            continue
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            diffs.extend(_config_diff(va, vb, full + ".", labels))
        elif va != vb:
            diffs.append(f"{full}: {labels[0]}{va!r}{labels[1]}{vb!r}")
    return diffs


def _resolved(config: dict) -> dict:
    """A checkpoint's config as this version resolves it (e.g. small_cnn_tiny's widths, which older versions
    recorded as the unused default); as it is when it no longer validates (the diff then shows why)."""
    try:
        return config_mod.to_dict(config_mod.from_dict(config))
    except ConfigError:
        return config


#: callables ``hook(epoch, backbone, epoch_record, run_dir)`` run at the end of each epoch in rank 0, just before
#: its checkpoint (the benchmark's time-to-accuracy kNN: tc2ssl.benchmarks.curves); a hook must leave the
#: backbone's mode and the RNGs as it found them. Register through :func:`epoch_end_hook`.
EPOCH_END_HOOKS: list[Callable] = []


@contextlib.contextmanager
def epoch_end_hook(hook: Callable):
    """Run ``hook(epoch, backbone, epoch_record, run_dir)`` after every epoch of the pretrainings inside the block."""
    EPOCH_END_HOOKS.append(hook)
    try:
        yield hook
    finally:
        EPOCH_END_HOOKS.remove(hook)


#: train.strategy=ddp re-runs the command line in every process, which fits one training run per command
_SCRIPT_LAUNCHED = False


def pretrain(cfg: config_mod.RunConfig, data: DataSplits | None = None) -> Path:
    """Pretrain ``cfg.method`` with ``cfg.plugin``; return the run folder. See the module docstring.

    With train.devices > 1 the run happens in ``train.devices`` processes launched by Fabric (``ddp_spawn``: new
    processes, this one waits; ``ddp``: this process is rank 0 and the command is re-run for the others). Errors
    of rank 0 caused by input (TC2SSLError) are raised here with their own type and message."""
    return pretrain_runs([cfg], data)[0]


#: the train.* keys that decide how processes are launched: one launch serves configs that agree on them
LAUNCH_KEYS = ("accelerator", "devices", "strategy", "precision")


def pretrain_runs(cfgs: list[config_mod.RunConfig], data: DataSplits | None = None) -> list[Path]:
    """Pretrain several configs one after the other, in ONE launch of the processes when train.devices > 1 (a
    launch costs seconds: every process imports torch and the rest). The configs must agree on ``LAUNCH_KEYS``;
    ``data`` (if given) serves them all. Every run folder is claimed (locked, checked for another run's files)
    before the processes start (``tc2ssl.train.run_folder``)."""
    if not cfgs:
        return []
    first = cfgs[0].train
    for cfg in cfgs[1:]:
        differing = [k for k in LAUNCH_KEYS if getattr(cfg.train, k) != getattr(first, k)]
        if differing:
            raise ConfigError(f"runs launched together must agree on train.{', train.'.join(differing)}")
    with contextlib.ExitStack() as folders:   # rank 0 / the launcher holds every run folder for the launch
        for cfg in cfgs:
            folders.enter_context(claimed_run_folder(cfg))
        return _launch_runs(cfgs, data)


def _launch_runs(cfgs: list[config_mod.RunConfig], data: DataSplits | None) -> list[Path]:
    global _SCRIPT_LAUNCHED
    first = cfgs[0].train
    fabric = build_fabric(first)
    if first.devices == 1:
        return [train_process(fabric, cfg, data) for cfg in cfgs]
    if launch_strategy(first) == "ddp":
        if _SCRIPT_LAUNCHED:
            raise ConfigError("train.strategy=ddp re-runs the command in every process and supports one launch "
                              "per command; use train.strategy=ddp_spawn (or auto) for compare, figure1 and "
                              "benchmark")
        _SCRIPT_LAUNCHED = True
    outcome = fabric.launch(_train_in_launched_process, cfgs, data)
    if outcome[0] == "error":
        error_type = getattr(errors_mod, outcome[1], TC2SSLError)
        raise error_type(outcome[2])
    return [Path(p) for p in outcome[1]]


def _train_in_launched_process(fabric, cfgs: list[config_mod.RunConfig], data: DataSplits | None):
    """The body of every launched process (module level: ddp_spawn pickles it). Input errors come back as values so
    that the launching process can raise them as they are (a spawned process's exception arrives as text)."""
    try:
        return ("ok", [str(train_process(fabric, cfg, data)) for cfg in cfgs])
    except TC2SSLError as exc:
        return ("error", type(exc).__name__, str(exc))


def train_process(fabric, cfg: config_mod.RunConfig, data: DataSplits | None = None) -> Path:
    """One process's share of a pretraining run (the whole run when train.devices = 1); returns the run folder."""
    with kernel_settings(cfg.train, fabric.device):
        return _train_process(fabric, cfg, data)


@contextlib.contextmanager
def kernel_settings(train_cfg, device: torch.device):
    """The global kernel choices of a run, restored afterwards.

    ``train.deterministic=true``: ``torch.use_deterministic_algorithms(True)`` (an op without a deterministic
    kernel raises, naming itself), cuDNN deterministic and not benchmarking, and on CUDA the cuBLAS workspace
    setting that deterministic matmuls need. Otherwise, on CUDA, ``cudnn.benchmark``: a step's shapes are fixed,
    so cuDNN times its convolution algorithms once and keeps the fastest.
    """
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    try:
        if train_cfg.deterministic:
            if torch.device(device).type == "cuda":
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        elif torch.device(device).type == "cuda":
            torch.backends.cudnn.benchmark = True
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2], saved[3]


def _train_process(fabric, cfg: config_mod.RunConfig, data: DataSplits | None = None) -> Path:
    """The body of :func:`train_process`, run under the run's kernel settings."""
    dist = DistributedContext.current() if cfg.train.devices > 1 else SINGLE_PROCESS
    if dist.world_size != cfg.train.devices:
        raise ConfigError(f"train.devices={cfg.train.devices} but this process belongs to a group of "
                          f"{dist.world_size}: start multi-process runs through pretrain() / pretrain_runs()")
    rank_zero = dist.is_rank_zero
    if data is None and dist.active:                 # rank 0 first: a download must not run W times at once
        if rank_zero:
            data = load_data(cfg.data)
        dist.barrier()
        if not rank_zero:
            data = load_data(cfg.data)
    if not rank_zero:
        warnings.filterwarnings("ignore")   # a launched process of rank > 0: rank 0 reports, once
    run = build_run(cfg, data, fabric)
    run.plugin.distributed = dist
    scaler = build_grad_scaler(cfg.train, run.device, run.plugin)   # before the run folder: it may refuse
    run.plugin.loss_scaler = scaler
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    method, plugin, device = run.method, run.plugin, run.device
    if cfg.train.init_from:                         # a post-hoc run starts from a finished run's weights
        load_finished_run_weights(method, Path(cfg.train.init_from), cfg)
    plugin.on_fit_start(run)                        # may freeze parts of the method: before the optimiser
    trainable = trainable_parameters(method, plugin)   # the online parameters + the plug-in's outer parameters
    train_images = run.data.train.images
    batch = cfg.train.batch_size
    steps_per_epoch = len(train_images) // batch
    optimizer = build_optimizer(trainable, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, steps_per_epoch)
    metrics_log = MetricsLog(out / "metrics.jsonl")
    ckpt_path = out / CHECKPOINT_NAME

    start_epoch, global_step = 0, 0
    if dist.active:  # the same weights everywhere (they are seeded alike; this makes it a fact)
        dist.broadcast_([*method.parameters(), *method.buffers(), *plugin.parameters(), *plugin.buffers()])
    # rank 0 decides (no process may see a file another one is about to delete)
    resuming = dist.broadcast_object(bool(cfg.train.resume and ckpt_path.exists()))
    best_loss = None
    if resuming:
        state = load_checkpoint(ckpt_path)
        require_run_state(state, ckpt_path)
        diffs = _config_diff(_resolved(state["config"]), config_mod.to_dict(cfg))
        if diffs:
            raise CheckpointError(f"cannot resume {ckpt_path}: the config differs from the checkpoint's: "
                                  + "; ".join(diffs))
        try:   # a foreign checkpoint that unpickled safely may still not fit (keys, shapes, types)
            method.load_state_dict(state["method"])
            plugin.load_state_dict(state["plugin"])
            plugin.load_extra_state(state.get("plugin_extra"))
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
        except (RuntimeError, KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise CheckpointError(f"cannot resume {ckpt_path}: it does not fit this run's model and optimiser "
                                  f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"
                                  ) from None
        start_epoch, global_step = state["epoch"] + 1, state["global_step"]
        best_loss = state.get("best_epoch_loss")
        best_loss = float(best_loss) if isinstance(best_loss, (int, float)) and not isinstance(best_loss, bool) \
            else None   # a checkpoint of an older version records none
        if rank_zero:
            metrics_log.truncate_after(global_step, start_epoch)
            print(f"resuming {out} from epoch {start_epoch} (step {global_step})", file=sys.stderr)
    elif rank_zero:
        if cfg.train.resume:
            print(f"train.resume=true but no checkpoint in {out}: starting from scratch", file=sys.stderr)
        for stale in (out / "metrics.jsonl", ckpt_path, out / "encoder.safetensors"):
            if stale.exists():  # a fresh run must never point at (or resume from) another run's files
                stale.unlink()
    if rank_zero:
        atomic_write_text(out / "config.yaml", config_mod.to_yaml(cfg))
    monitor = TrainingMonitor(cfg, method.backbone, run.data, out, device, active=rank_zero)
    dist.barrier()
    plugin_state = [*plugin.parameters(), *plugin.buffers()]  # TC²'s f_v, f_w: stage 1 runs in every process

    layer_diag = None   # diag.layers_every: per-layer kNN accuracy and ΔR (tc2ssl.diagnostics.layers)
    if rank_zero and cfg.diag.layers_every:
        layer_diag = LayerDiagnostics(cfg, run.data, run.view_maker, out, device)
        layer_diag.start(start_epoch)
        if start_epoch == 0 and layer_diag.due(0):
            layer_diag.measure(method.backbone, 0)

    total_steps = cfg.train.epochs * steps_per_epoch
    stop_at = cfg.train.max_steps or None
    watch = NonFiniteWatch(device)
    for epoch in range(start_epoch, cfg.train.epochs):
        method.train()
        plugin.train()
        plugin.on_epoch_start(epoch)                # e.g. frozen modules back in eval mode
        order_gen = torch.Generator().manual_seed(step_seed(cfg.seed, epoch, 0, stream=1))
        order = torch.randperm(len(train_images), generator=order_gen)
        progress = _progress(cfg, epoch, steps_per_epoch) if rank_zero else None
        epoch_losses: list[torch.Tensor] = []
        t_epoch = time.perf_counter()
        t_logged, images_since_log = t_epoch, 0
        for b in range(steps_per_epoch):
            if stop_at is not None and global_step >= stop_at:
                break
            # the global batch, in every process; the plug-in takes this process's share
            images = train_images[order[b * batch:(b + 1) * batch]].to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            info = StepInfo(epoch=epoch, step=global_step, seed=step_seed(cfg.seed, epoch, b))
            # anything that draws from the global RNG inside a step (dropout, MAE's baseline masks) is seeded by
            # the step too, so a resumed run replays it exactly
            with seeded(step_seed(cfg.seed, epoch, b, stream=3), device), run.fabric.autocast():
                metrics = plugin.training_step(images, info)
            if dist.active:
                dist.all_reduce_gradients_(trainable)         # Σ of the processes' shares
                metrics = dist.average_metrics(metrics)   # the same numbers (and decisions) in every process
            loss = metrics["loss"].detach()
            watch.update(loss, epoch, global_step)     # a device-side record: no host synchronisation per step
            lr = optimizer.param_groups[0]["lr"]   # the step's own lr (the scheduler moves it after the step)
            apply_gradients(optimizer, trainable, cfg.train.grad_clip, scaler)
            scheduler.step()
            if dist.active and plugin_state:
                dist.broadcast_(plugin_state)   # rank 0's stage-1 result: nondeterministic kernels cannot drift
            global_step += 1
            method.after_step(global_step / max(1, total_steps))
            monitor.on_step(order[b * batch:(b + 1) * batch])
            epoch_losses.append(loss)
            images_since_log += images.shape[0]
            if progress is not None:
                progress.update(1)
            # the host reads the device only here: at logging steps, at an epoch's first and last step
            if global_step % cfg.train.log_every == 0 or b == steps_per_epoch - 1 or b == 0:
                watch.check(ckpt_path)   # raises on a non-finite loss, naming its first step
                now = time.perf_counter()
                ips = images_since_log / max(now - t_logged, 1e-9)   # over the interval: exact without syncs
                t_logged, images_since_log = now, 0
                if progress is not None:
                    progress.set_postfix(loss=f"{float(loss):.4f}", img_s=f"{ips:.0f}")
                if rank_zero:
                    record = {"kind": "step", "epoch": epoch, "step": global_step - 1,
                              "lr": lr, "images_per_s": ips, **_floats(metrics)}
                    metrics_log.write(record)
                    monitor.log_step(record, global_step - 1)
        if progress is not None:
            progress.close()
        if stop_at is not None and global_step >= stop_at and len(epoch_losses) < steps_per_epoch:
            break  # a partial epoch (max_steps): no checkpoint, no epoch record
        watch.check(ckpt_path)
        epoch_record = {"kind": "epoch", "epoch": epoch, "step": global_step,
                        "loss": sum(torch.stack(epoch_losses).tolist()) / len(epoch_losses) if epoch_losses else 0.0,
                        "seconds": time.perf_counter() - t_epoch, **plugin.epoch_summary(epoch)}
        epoch_record.update(monitor.end_epoch(epoch))
        if rank_zero:
            metrics_log.write(epoch_record)
            monitor.log_epoch(epoch_record, global_step)
        best_loss = check_epoch_loss(epoch_record["loss"], best_loss, epoch, ckpt_path)
        if rank_zero:
            if layer_diag is not None and layer_diag.due(epoch + 1):
                layer_diag.measure(method.backbone, epoch + 1)
            for hook in EPOCH_END_HOOKS:   # before the checkpoint: a run killed in between replays the epoch
                hook(epoch, method.backbone, epoch_record, out)
            save_checkpoint(ckpt_path, {
                "config": config_mod.to_dict(cfg), "epoch": epoch, "global_step": global_step,
                "best_epoch_loss": best_loss,
                "method": method.state_dict(), "plugin": plugin.state_dict(), "plugin_extra": plugin.extra_state(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
            })
        if stop_at is not None and global_step >= stop_at:
            break

    monitor.close()
    plugin.on_fit_end(out)
    if rank_zero:
        export_encoder(out / "encoder.safetensors", method.backbone, encoder_metadata(
            method.backbone, cfg.model.backbone, run.data.train.channels, run.data.train.resolution,
            config_mod.to_dict(cfg)))
        remove_stale_evaluations(out)   # evaluations of an earlier encoder no longer describe this folder
    dist.barrier()  # every process returns once the run folder is complete
    return out


def _progress(cfg, epoch: int, steps: int):
    if not cfg.train.progress or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", leave=False, dynamic_ncols=True)


def load_finished_run_weights(method: torch.nn.Module, run_dir: Path, cfg: config_mod.RunConfig) -> None:
    """Start ``method`` from the weights a finished run folder's checkpoint holds (``train.init_from``, the
    post-hoc entry point ``tc2ssl posthoc``): the whole method when that run used the same ``method`` and ``model``
    config, otherwise its backbone only."""
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"train.init_from={run_dir} has no {CHECKPOINT_NAME}: give a finished run folder")
    state = load_checkpoint(path)
    require_run_state(state, path)   # a received folder: every entry present, finite weights
    same = all(state["config"].get(k) == config_mod.to_dict(cfg)[k] for k in ("method", "model"))
    weights = state["method"] if same else {k: v for k, v in state["method"].items() if k.startswith("backbone.")}
    try:
        missing, unexpected = method.load_state_dict(weights, strict=same)
    except RuntimeError as exc:   # shapes of another width, or keys of another method
        raise CheckpointError(f"the weights of {run_dir} do not fit this method "
                              f"({str(exc).splitlines()[-1].strip()[:200]})") from None
    if unexpected or (same and missing):
        raise CheckpointError(f"the weights of {run_dir} do not fit this method (unexpected {unexpected[:3]})")


def load_run_config(run_dir: Path) -> config_mod.RunConfig:
    """The config a run folder was trained with."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a tc2ssl run folder (no config.yaml)")
    return config_mod.from_dict(read_yaml_mapping(path, "run config"))

