"""Typed configuration: one dataclass per component, YAML presets, ``key=value`` overrides.

A config is built as: defaults (these dataclasses) <- preset YAML files (in order) <- ``key=value`` overrides.
Unknown keys and ill-typed values are rejected by OmegaConf; values outside a field's allowed set are rejected
by :func:`validate`. Both raise :class:`ConfigError` naming the key and the allowed values, before any work
starts.

Every design choice the papers leave open is a field here with our default (docs/decisions.md lists them); the
``literal`` preset switches to the paper-literal readings. A plug-in validates its own cross-field constraints
(``Plugin.check_config``) and may own a config block ``plugin.<name>.*`` (see :class:`PluginConfig`).
"""
from __future__ import annotations

import copy

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tc2ssl.config_fields import bounded, choice
from tc2ssl.errors import ConfigError
from tc2ssl.gessl.config import GeSSLConfig
from tc2ssl.umm.config import UMMConfig
from tc2ssl.yaml_io import read_yaml_mapping

PRESET_DIR = Path(__file__).parent / "configs"


@dataclass
class DataConfig:
    name: str = field(default="digits", metadata={"registry": "data", "help": "data source"})
    root: Optional[str] = field(default=None, metadata={
        "help": "folder or file; shared sets default to $TC2SSL_DATA or ../shared/data"})
    resolution: int = bounded(0, 0, 1024, help="side length images are resized to; 0 = the source's default")
    channels: int = choice(0, (0, 1, 3), help="0 = the source's native channels")
    domains: list[str] = field(default_factory=list, metadata={"help": "PACS domains to train on (empty = all)"})
    test_domains: list[str] = field(default_factory=list, metadata={
        "help": "PACS domains for the test split (empty = all four)"})
    download: bool = True
    max_train: int = bounded(0, 0, help="keep at most this many training images (0 = all)")
    val_fraction: float = bounded(0.2, 0.0, 0.9)
    augment: str = choice("auto", ("auto", "digits", "cifar", "imagenet", "none", "byol", "swav"),
                          help="view augmentation preset; auto picks one from the data source; byol = BYOL's "
                               "asymmetric recipe (views 0, 2, ... always blurred; views 1, 3, ... solarised with "
                               "p = 0.2); swav = SwAV's multi-crop (views 0, 1 global crops, the rest local crops)")
    local_views: int = bounded(0, 0, 32, help="multi-crop: local crops per image beside the two global views "
                                              "(data.augment=swav, method.name=swav, plugin.name=none; SwAV uses 6)")
    crop_mode: str = choice("auto", ("auto", "slice", "resample"),
                            help="random-resized-crop implementation: slice = a Python loop over views (kornia's "
                                 "default), resample = one batched warp (the same views up to float rounding); "
                                 "auto = resample on CUDA, slice elsewhere")


@dataclass
class ModelConfig:
    backbone: str = field(default="small_cnn", metadata={"registry": "backbone", "help": "backbone name, or timm:NAME"})
    cifar_stem: bool = field(default=True, metadata={
        "help": "ResNet: 3x3 stride-1 stem without max-pool (small images)"})
    widths: list[int] = field(default_factory=lambda: [32, 64, 128, 128],
                              metadata={"help": "small_cnn widths (small_cnn_tiny's are fixed at 16-32-64-64)"})
    pretrained: bool = False


@dataclass
class MethodConfig:
    name: str = field(default="simclr", metadata={"registry": "method"})
    temperature: float = bounded(0.5, 0.0, help="NT-Xent / InfoNCE temperature", low_open=True)
    proj_hidden_dim: int = bounded(128, 1)
    proj_output_dim: int = bounded(64, 1, 8192)
    pred_hidden_dim: int = bounded(128, 1)
    momentum: float = bounded(0.99, 0.0, 1.0, help="EMA base for momentum methods")
    memory_bank_size: int = bounded(4096, 0)
    n_prototypes: int = bounded(64, 1)
    lambda_bt: float = bounded(0.0, 0.0, help="Barlow Twins off-diagonal weight; 0 = 1/d")
    sim_coeff: float = bounded(25.0, 0.0)
    std_coeff: float = bounded(25.0, 0.0)
    cov_coeff: float = bounded(1.0, 0.0)
    mask_ratio: float = bounded(0.75, 0.0, 0.99)
    patch_size: int = bounded(4, 1)


@dataclass
class PluginConfig:
    """``plugin.*``: which plug-in trains the encoder, and the keys of the built-in plug-ins.

    Who reads what: ``none`` reads the ``conflict_*`` keys; the bi-level task step (``tasks``, and ``tc2`` which
    extends it) reads the task keys (``n_tasks`` .. ``task_split``, ``beta1``, ``stage2_mode``, ``fd_radius``,
    ``task_reduction``, ``query_loss``, ``bilevel``, ``plus_t_mode``, ``conflict_*``, ``health_every``,
    ``share_support_forward``); ``tc2`` also reads the calibrator keys (``n_factors`` .. ``stage1_*``,
    ``calibration`` .. ``gate_bias_init``). These flat keys are kept where they have always been so that
    presets, run folders and scripts keep working.

    A new plug-in owns a block ``plugin.<its name>.*``: a dataclass with its keys (fields made with
    ``tc2ssl.config_fields.choice`` / ``bounded``), added below as one field, and ``config_block = "<its name>"``
    on the plug-in class (``docs/architecture.md``, "How to add a plug-in").
    """

    name: str = field(default="none", metadata={"registry": "plugin"})
    n_tasks: int = bounded(4, 1, help="K: tasks per batch")
    n_views: int = bounded(4, 2, help="m: views per image")
    n_support_views: int = bounded(2, 1, help="m': views per image in the support set")
    n_factors: int = bounded(0, 0, help="n_f; 0 = d/2")
    lam_s: float = bounded(1.0, 0.0, help="λ_s in Eq. 3")
    stage1_ssl_weight: float = bounded(1.0, 0.0, help="weight of the SSL term (1/K)Σ_k L in the stage-1 objectives "
                                       "of Eqs. 4-5 (1 = the paper; an ablation knob)")
    l1_coef: float = bounded(0.05, 0.0, help="coefficient of ||W||_1 in Eq. 2 (literal: 1)")
    alpha1: float = bounded(1e-2, 0.0,
                            help="α₁..α₄: plain-SGD steps of stage 1 (Eqs. 4-5) for f_v (α₁, α₃) and f_w (α₂, α₄)")
    alpha2: float = bounded(1e-2, 0.0)
    alpha3: float = bounded(1e-2, 0.0)
    alpha4: float = bounded(1e-2, 0.0)
    beta1: float = bounded(0.05, 0.0, help="inner (support) step size of Eq. 6")
    stage1_mode: str = choice("sequential", ("sequential", "fomaml", "maml"))
    stage1_optimizer: str = choice("sgd", ("sgd", "adam"))
    stage1_grad_clip: float = bounded(1.0, 0.0, help="max global norm of each stage-1 gradient (0 = off, literal)")
    stage1_adam_lr: float = bounded(1e-3, 0.0, low_open=True)
    stage2_mode: str = choice("first_order", ("first_order", "finite_difference", "exact"),
                              help="hypergradient of Eq. 7 (exact = second-order MAML)")
    fd_radius: float = bounded(1e-2, 0.0, low_open=True)
    task_reduction: str = choice("mean", ("mean", "sum"), help="Eq. 7: mean over tasks, or the literal sum")
    reduction: str = choice("mean", ("mean", "sum"), help="Eqs. 1-2: per-row mean, or the literal sum")
    weight_mode: str = choice("gated", ("shrink", "gated", "free"),
                              help="f_w: shrink = a learned soft threshold of zV (gates can close), gated = "
                                   "σ(MLP)⊙zV (the spec's reading), free = MLP(z) (literal)")
    l1_scale: str = choice("absolute", ("relative", "absolute"),
                           help="λ₁ of Eq. 2: relative = plugin.l1_relative_coef × the batch RMS of the coordinates "
                                "zV; absolute = plugin.l1_coef")
    l1_relative_coef: float = bounded(2.0, 0.0, help="λ₁ / RMS(zV) under plugin.l1_scale=relative")
    factor_mode: str = choice("mlp", ("subspace", "mlp"),
                              help="f_v: subspace = the learned base refined by subspace iteration on each batch's S; "
                                   "mlp = V0 + MLP(S) alone (the spec's reading)")
    factor_power_steps: int = bounded(4, 1, help="subspace iterations of factor_mode=subspace")
    view_agreement: bool = field(default=False, metadata={
        "help": "weighted LASSO in f_w (weight_mode=shrink): factor r's threshold and ℓ1 weight are scaled by its "
                "view noise-to-signal ratio in the task, (1 − a_r)/a_r, a_r the share of its energy that agrees "
                "across an image's views (docs/tc2.md)"})
    task_context: bool = field(default=False, metadata={"help": "f_w also sees the mean representation of each row's "
                                                                 "task"})
    input_norm: str = choice("auto", ("auto", "l2", "rms", "none"),
                             help="auto: l2 for cosine methods, rms (scale-equivariant) otherwise")
    detach_v_in_lw: bool = field(default=True, metadata={"help": "V detached inside L_w (true: V is 'pre-given', "
                                                                   "only L_v trains f_v)"})
    lw_rows: str = choice("split", ("split", "all"), help="L_w on support/query rows, or all rows (D-TC-15)")
    query_loss: str = choice("default", ("default", "native", "proto_mse"))
    calibration: bool = True
    use_loss_v: bool = True
    use_loss_w: bool = True
    bilevel: bool = True
    plus_t_mode: str = choice("bilevel", ("bilevel", "joint"))
    remainder: str = choice("drop", ("drop", "error"), help="batch size not divisible by n_tasks")
    task_split: str = choice("random", ("random", "pixel_clusters"),
                             help="how a batch becomes K tasks: random groups (the paper), or balanced k-means "
                                  "clusters of each image's 4x4 pooled pixels (tasks that differ)")
    factor_hidden: int = bounded(64, 1)
    factor_init: str = choice("random", ("pca", "random"),
                              help="f_v's base V0: random orthonormal, or pca = the top-n_f eigenvectors of the first "
                                   "batch's Z_fᵀZ_f (the Eq. 1 optimum at step 0; docs/tc2.md)")
    weight_hidden: int = bounded(64, 1)
    gate_bias_init: float = 2.0
    conflict_every: int = bounded(10, 0, help="log the inter-task gradient cosine every j steps (0 = off); each "
                                              "measurement costs a plain SSL run K extra backward passes")
    conflict_params: str = choice("all", ("all", "backbone"))
    conflict_tasks: int = bounded(2, 2, help="tasks the plain baseline's batch is split into for the conflict metric")
    health_every: int = bounded(1, 1)
    share_support_forward: str = choice(
        "auto", ("auto", "always", "never"),
        help="take the support rows of S from the stage-2 support forward instead of a separate one (saves N·m' "
             "view forwards); auto = only where it is exact, i.e. no BatchNorm uses batch statistics")
    gessl: GeSSLConfig = field(default_factory=GeSSLConfig, metadata={"help": "plugin.name=gessl (docs/gessl.md)"})
    umm: UMMConfig = field(default_factory=UMMConfig)


@dataclass
class TrainConfig:
    epochs: int = bounded(20, 1)
    batch_size: int = bounded(256, 2, help="images per batch (at least 2)")
    lr: float = bounded(1e-3, 0.0, low_open=True)
    optimizer: str = choice("adamw", ("adamw", "adam", "sgd"))
    weight_decay: float = bounded(1e-6, 0.0)
    sgd_momentum: float = bounded(0.9, 0.0, 1.0)
    warmup_epochs: float = bounded(1.0, 0.0)
    schedule: str = choice("cosine", ("cosine", "constant"))
    grad_clip: float = bounded(0.0, 0.0, help="max gradient norm (0 = off)")
    accelerator: str = choice("cpu", ("cpu", "gpu", "cuda", "auto"))
    devices: int = bounded(1, 1, 256, help="processes (one device each); train.batch_size is the global batch, "
                                           "split evenly over them (docs/distributed.md)")
    strategy: str = choice("auto", ("auto", "ddp", "ddp_spawn"),
                           help="how devices > 1 processes start: auto = ddp_spawn; ddp re-runs the command "
                                "(tc2ssl pretrain only)")
    precision: str = choice("32-true", ("32-true", "bf16-mixed", "16-mixed", "64-true"),
                            help="64-true: float64 everywhere (slow; for exactness checks, e.g. the DDP test)")
    channels_last: bool = False
    resume: bool = False
    overwrite: bool = field(default=False, metadata={
        "help": "start afresh in an out= folder that holds other files: move them into out/.replaced-<time>/"})
    init_from: Optional[str] = field(default=None, metadata={
        "help": "a finished run folder whose weights this run starts from (post hoc: `tc2ssl posthoc RUN_DIR`)"})
    max_steps: int = bounded(0, 0, help="stop after this many steps in total (0 = no limit; for tests)")
    log_every: int = bounded(10, 1)
    progress: bool = True
    threads: int = bounded(0, 0, help="torch CPU threads (0 = leave as is)")
    deterministic: bool = field(default=False, metadata={
        "help": "deterministic kernels (torch.use_deterministic_algorithms, cuDNN); slower on a GPU"})
    loggers: list[str] = field(default_factory=list, metadata={
        "help": "Fabric loggers beside metrics.jsonl: csv, tensorboard, wandb (tc2ssl.train.monitor)"})
    online_probe: bool = field(default=False, metadata={
        "help": "train a linear probe on detached features every step; its accuracy is logged per epoch"})
    knn_monitor_every: int = bounded(0, 0, help="kNN accuracy of the features every this many epochs (0 = off)")
    monitor_images: int = bounded(1000, 2, help="images in the online probe's / kNN monitor's fixed subsets")


@dataclass
class EvalConfig:
    enabled: bool = True
    data: Optional[str] = field(default=None, metadata={
        "help": "labelled dataset to evaluate on (default: the pretraining data)"})
    root: Optional[str] = None
    knn_k: int = bounded(20, 1)
    knn_temperature: float = bounded(0.07, 0.0, low_open=True)
    probe_cs: list[float] = field(default_factory=lambda: [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0])
    probe_max_iter: int = bounded(1000, 1)
    val_fraction: float = bounded(0.2, 0.05, 0.5)
    max_train: int = bounded(0, 0, help="subsample the probe's training set (0 = all)")
    batch_size: int = bounded(512, 1)
    random_init_baseline: bool = field(default=True, metadata={"help": "also probe the same backbone at random init"})
    sigma_tasks: int = bounded(20, 0, help="GeSSL's σ_ssl: held-out mini-batch tasks of the test images (0 = off)")
    sigma_task_size: int = bounded(128, 2, help="images per σ_ssl task")
    sigma_temperature: float = bounded(0.1, 0.0, low_open=True, help="temperature of π in σ_ssl (backbone features)")
    # the protocols of `tc2ssl evaluate --protocol` (tc2ssl.eval.protocols)
    fewshot_ways: int = bounded(5, 2, help="N of N-way K-shot episodes")
    fewshot_shots: list[int] = field(default_factory=lambda: [1, 5], metadata={"help": "K values of the episodes"})
    fewshot_queries: int = bounded(15, 1, help="query images per class and episode")
    fewshot_episodes: int = bounded(600, 1)
    semisup_fractions: list[float] = field(default_factory=lambda: [0.01, 0.1],
                                           metadata={"help": "labelled fractions of the training split"})
    finetune_epochs: int = bounded(30, 1)
    finetune_lr: float = bounded(1e-3, 0.0, low_open=True)
    finetune_batch_size: int = bounded(128, 2)
    finetune_weight_decay: float = bounded(1e-4, 0.0)
    finetune_patience: int = bounded(5, 1, help="epochs without a better validation accuracy before stopping")
    finetune_min_steps: int = bounded(300, 0, help="at least this many optimiser steps (more epochs on small sets)")
    finetune_augment: str = field(default="auto", metadata={
        "help": "augmentation while fine-tuning: auto (the data's pretraining preset), none, digits, cifar, imagenet"})
    layer_taps: list[str] = field(default_factory=list, metadata={"help": "taps for per-layer probes (empty = all)"})


@dataclass
class DiagConfig:
    """Per-layer diagnostics during pretraining (docs/umm.md): kNN accuracy (optionally a linear probe) and the
    coding rate reduction ΔR of every backbone tap, written to ``layers.csv``; off by default."""

    layers_every: int = bounded(0, 0, help="measure every backbone tap every this many epochs (0 = off)")
    at_init: bool = field(default=True, metadata={"help": "also measure before the first epoch (epoch 0)"})
    eval_size: int = bounded(600, 10, help="labelled test images the accuracy and label-partition ΔR use")
    bank_size: int = bounded(1200, 10, help="labelled training images of the kNN bank / probe training set")
    knn_k: int = bounded(20, 1)
    knn_temperature: float = bounded(0.07, 0.0, low_open=True)
    linear_probe: bool = field(default=False, metadata={"help": "also fit a logistic-regression probe per tap"})
    probe_max_iter: int = bounded(100, 1)
    eps2: float = bounded(0.5, 0.0, low_open=True, help="ε² of R, R_c and ΔR")
    instance_images: int = bounded(128, 2, help="training images (two views each) of the instance-partition ΔR")
    batch_size: int = bounded(512, 1)


@dataclass
class RunConfig:
    seed: int = 0
    out: str = "runs/default"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    plugin: PluginConfig = field(default_factory=PluginConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    diag: DiagConfig = field(default_factory=DiagConfig)


# --------------------------------------------------------------------------------------------------------------
def _error_message(exc: OmegaConfBaseException) -> str:
    key = getattr(exc, "full_key", None)
    msg = str(exc).split("\n")[0]
    return f"{key}: {msg}" if key else msg


def preset_path(name: str) -> Path:
    """Resolve a preset name (``tc2``) or a path to a YAML file."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        return p
    candidate = PRESET_DIR / f"{name}.yaml"
    if not candidate.is_file():
        names = sorted(q.stem for q in PRESET_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(names)} (or a path to a .yaml file)")
    return candidate


#: keys that older versions had, with what replaced them: an override or preset naming one is an error that says
#: so; a run folder written by an older version (``from_dict``) still loads, the key dropped
REMOVED_KEYS = {
    "data.num_workers": "the data are in-memory tensors and no DataLoader workers exist; remove the key",
    "plugin.split": "the task split is always by view (each image's views go to support and query); remove the key",
    **{f"plugin.umm.{key}": "UMM's alignment reading (k-means prior + ridge alignment) was removed: it did not earn "
                            "its place in the measurements (docs/umm.md); UMM is the bi-level objective, remove the key"
       for key in ("objective", "n_clusters", "ridge", "mu", "align_eps2", "retain_ssl")},
}


def _check_removed(key: str) -> None:
    if key in REMOVED_KEYS:
        raise ConfigError(f"{key} was removed: {REMOVED_KEYS[key]}")


def _drop_removed(data: dict) -> dict:
    """``data`` without the keys of :data:`REMOVED_KEYS` (an older run folder's config)."""
    data = copy.deepcopy(data)
    for key in REMOVED_KEYS:
        *path, name = key.split(".")
        node = data
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(name, None)
    return data


def _removed_in(node: Any, prefix: str = "") -> None:
    """ConfigError for a removed key anywhere in a preset (a loaded YAML mapping)."""
    if isinstance(node, dict):
        for key, value in node.items():
            _check_removed(f"{prefix}{key}")
            _removed_in(value, f"{prefix}{key}.")


def preset_overrides(name: str) -> list[str]:
    """A preset as ``key=value`` overrides (``plugin.weight_mode=shrink``, ...), for commands whose configs are built
    from overrides (``tc2ssl benchmark -p NAME``): loading them gives the config the preset gives."""
    preset = read_yaml_mapping(preset_path(name), "preset")
    _removed_in(preset)
    items: list[str] = []

    def flatten(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                flatten(value, f"{prefix}{key}.")
        else:
            items.append(f"{prefix[:-1]}={_override_value(node)}")

    flatten(preset, "")
    return items


def _override_value(value: Any) -> str:
    """A YAML value written the way OmegaConf's dotlist reads it back."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    return str(value)


def load_config(presets: list[str] | tuple[str, ...] = (), overrides: list[str] | tuple[str, ...] = (),
                base: RunConfig | None = None) -> RunConfig:
    """Defaults (or ``base``, e.g. a finished run's config) <- presets <- ``key=value`` overrides, validated.
    Returns a plain :class:`RunConfig`."""
    cfg = OmegaConf.structured(RunConfig if base is None else base)
    try:
        for name in presets:
            preset = read_yaml_mapping(preset_path(name), "preset")   # safe loader, duplicate keys refused
            _removed_in(preset)
            cfg = OmegaConf.merge(cfg, OmegaConf.create(preset))
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"bad override {item!r}: expected key=value, e.g. train.epochs=5")
            key = item.split("=", 1)[0].strip()
            _check_removed(key)
            if not key or OmegaConf.select(cfg, key, default="__missing__") == "__missing__":
                raise ConfigError(f"bad override {item!r}: unknown key {key!r}; "
                                  f"valid keys: {', '.join(all_keys())}")
        if overrides:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid config: {_error_message(exc)}") from None
    except (ValueError, TypeError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"invalid config: {exc}") from None
    run_cfg: RunConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    validate(run_cfg)
    return run_cfg


def from_dict(data: dict) -> RunConfig:
    """Rebuild a config from a dict (e.g. a run's config.yaml), validated."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of keys, got a {type(data).__name__}")
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.create(_drop_removed(data)))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid config: {_error_message(exc)}") from None
    run_cfg: RunConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    validate(run_cfg)
    return run_cfg


def to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def all_keys(section: Any = RunConfig, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(section):
        typ = f.type if not isinstance(f.type, str) else eval(f.type, globals())  # noqa: S307 - our own annotations
        if dataclasses.is_dataclass(typ):
            keys.extend(all_keys(typ, f"{prefix}{f.name}."))
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _registries() -> dict:
    # imported lazily: the registries fill up when their packages are imported
    from tc2ssl.data import SOURCES
    from tc2ssl.methods import METHODS
    from tc2ssl.models import BACKBONES
    from tc2ssl.plugins import PLUGINS

    return {"data": SOURCES, "method": METHODS, "backbone": BACKBONES, "plugin": PLUGINS}


def _check_model(cfg: RunConfig) -> None:
    """The backbone-dependent keys: small_cnn_tiny's fixed widths (resolved into ``model.widths`` so that the
    config records the widths actually built) and MAE's ViT."""
    from tc2ssl.models.backbones import SMALL_CNN_TINY_WIDTHS, VIT_TINY_PATCH_SIZE

    model = cfg.model
    if model.backbone == "small_cnn_tiny":
        default = ModelConfig().widths
        if list(model.widths) not in (default, list(SMALL_CNN_TINY_WIDTHS)):
            raise ConfigError(f"model.widths={list(model.widths)} is not used by model.backbone=small_cnn_tiny, whose "
                              f"widths are fixed at {list(SMALL_CNN_TINY_WIDTHS)}: leave model.widths unset, or use "
                              f"model.backbone=small_cnn model.widths={list(model.widths)}")
        # the default [32, 64, 128, 128] would misreport what small_cnn_tiny builds (also in older run folders)
        model.widths = list(SMALL_CNN_TINY_WIDTHS)
    if cfg.method.name == "mae":
        if model.backbone != "vit_tiny":
            raise ConfigError(f"method.name=mae needs a ViT encoder that skips masked patches: model.backbone must be "
                              f"vit_tiny (the preset `-p mae` sets it), got model.backbone={model.backbone}")
        if cfg.method.patch_size != VIT_TINY_PATCH_SIZE:
            raise ConfigError(f"method.patch_size={cfg.method.patch_size} differs from the patch size of "
                              f"model.backbone=vit_tiny; valid value: {VIT_TINY_PATCH_SIZE}")


def unscalable_plugin_message(plugin_name: str) -> str:
    """16-mixed with a plug-in whose gradients do not go through ``Plugin.backward`` (TC², +T: functional
    gradients through the inner step of Eq. 6, set with ``assign_grads``): fp16 gradients could underflow."""
    return (f"train.precision=16-mixed is not supported with plugin.name={plugin_name} (its functional gradients "
            "are not loss-scaled); valid values with it: 32-true, bf16-mixed, 64-true")


def _check_multi_crop(cfg: RunConfig) -> None:
    """``data.local_views`` > 0 (multi-crop) is SwAV's recipe for the plain baseline: its loss assigns codes from the
    two global views only, and a task plug-in draws each image's support views at random among its m views, so
    which views are global would be lost there."""
    if cfg.data.local_views == 0:
        return
    wrong = [f"{key}={value}" for key, value, wanted in (("data.augment", cfg.data.augment, "swav"),
                                                       ("method.name", cfg.method.name, "swav"),
                                                       ("plugin.name", cfg.plugin.name, "none")) if value != wanted]
    if wrong:
        raise ConfigError(f"data.local_views={cfg.data.local_views} (multi-crop) needs data.augment=swav, "
                          f"method.name=swav and plugin.name=none, got {', '.join(wrong)}; set data.local_views=0 "
                          "otherwise")


def validate(cfg: RunConfig) -> None:
    """Check every constrained field; raise ConfigError naming the key and the allowed values.

    Also resolves ``model.widths`` of ``small_cnn_tiny`` to the widths it builds (see ``_check_model``)."""
    registries = _registries()

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            key = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(value):
                walk(value, key + ".")
                continue
            meta = f.metadata
            if "choices" in meta and value not in meta["choices"]:
                raise ConfigError(f"{key}={value!r} is not allowed; valid values: "
                                  f"{', '.join(str(c) for c in meta['choices'])}")
            if meta.get("low") is not None:
                low = meta["low"]
                if value < low or (meta.get("low_open") and value == low):
                    op = ">" if meta.get("low_open") else ">="
                    raise ConfigError(f"{key}={value!r} is out of range; it must be {op} {low}")
            if meta.get("high") is not None and value > meta["high"]:
                raise ConfigError(f"{key}={value!r} is out of range; it must be <= {meta['high']}")
            if "registry" in meta:
                reg = registries[meta["registry"]]
                name = value
                if meta["registry"] == "backbone" and isinstance(value, str) and value.startswith("timm:"):
                    continue
                if name not in reg:
                    raise ConfigError(f"{key}={value!r} is unknown; valid names: {', '.join(reg.names())}")

    walk(cfg, "")
    _check_model(cfg)
    _check_multi_crop(cfg)
    plugin_class = registries["plugin"].get(cfg.plugin.name)
    plugin_class.check_config(cfg)
    if cfg.train.precision == "16-mixed" and not plugin_class.supports_loss_scaling:
        raise ConfigError(unscalable_plugin_message(cfg.plugin.name))
    from tc2ssl.eval.protocols import check_protocol_config
    from tc2ssl.train.monitor import check_monitor_config

    check_monitor_config(cfg.train)
    check_protocol_config(cfg.eval)
    if cfg.train.devices > 1:
        from tc2ssl.distributed import check_config

        check_config(cfg)
    if cfg.eval.data is not None and cfg.eval.data not in registries["data"]:
        raise ConfigError(f"eval.data={cfg.eval.data!r} is unknown; valid names: "
                          f"{', '.join(registries['data'].names())}")
    if not cfg.eval.probe_cs or any(c <= 0 for c in cfg.eval.probe_cs):
        raise ConfigError("eval.probe_cs must be a non-empty list of positive numbers")
    from tc2ssl.config_checks import check_limits

    check_limits(cfg)   # finite numbers in sane ranges, the shapes a step needs, ~ expanded
