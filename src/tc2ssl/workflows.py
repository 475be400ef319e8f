"""End-to-end workflows behind the CLI: pretrain (+ evaluate + report) and evaluate a trained encoder."""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import sys
from pathlib import Path

import torch

from tc2ssl import config as config_mod
from tc2ssl.data import load_data
from tc2ssl.data.base import DataSplits
from tc2ssl.distributed import is_secondary_process
from tc2ssl.errors import CheckpointError, DataError
from tc2ssl.models import build_backbone
from tc2ssl.train.checkpoint import atomic_write_text, encoder_input_format, load_encoder_weights
from tc2ssl.train.run_folder import ENCODER_NAME, claimed_run_folder, file_sha256
from tc2ssl.train.loop import load_run_config, pretrain


def eval_data_config(run_cfg: config_mod.RunConfig, name: str | None, root: str | None):
    """The data config for evaluating on ``name`` with the encoder's input format (resolution, channels)."""
    data_cfg = copy.deepcopy(run_cfg.data)
    if name is not None and name != run_cfg.data.name:
        data_cfg = config_mod.DataConfig(name=name, root=root, resolution=0, channels=0)
    return data_cfg


def match_input_format(splits: DataSplits, channels: int, resolution: int) -> DataSplits:
    """Resize / convert an evaluation dataset to what the encoder was trained on."""
    from tc2ssl.data.sources import convert_channels, resize_images

    def fix(s):
        if s is None:
            return None
        s.images = convert_channels(resize_images(s.images, resolution), channels)
        return s

    splits.train = fix(splits.train)
    splits.test = fix(splits.test)
    return splits


def load_eval_splits(run_cfg, channels: int, resolution: int, name: str | None = None,
                     root: str | None = None) -> DataSplits:
    data_cfg = eval_data_config(run_cfg, name, root)
    if name is not None and name != run_cfg.data.name:
        data_cfg.resolution, data_cfg.channels = resolution, channels
    splits = match_input_format(load_data(data_cfg), channels, resolution)
    if splits.test is None or splits.test.labels is None or splits.train.labels is None:
        raise DataError(f"evaluation needs a labelled dataset with a test split; {data_cfg.name!r} has none "
                        "(choose one with eval.data=NAME)")
    return splits


def evaluate_encoder(backbone, run_cfg, splits: DataSplits, device) -> dict:
    from tc2ssl.eval.evaluate import evaluate_backbone

    return evaluate_backbone(backbone, splits.train, splits.test, run_cfg.eval, device=device, seed=run_cfg.seed)


def random_init_backbone(run_cfg, in_channels: int):
    """The same backbone at the same seeded initialisation the pretrained one started from."""
    from tc2ssl.methods import build_method

    torch.manual_seed(run_cfg.seed)
    backbone = build_backbone(run_cfg.model, in_channels)
    build_method(run_cfg.method, backbone)  # consume the RNG exactly as build_run does
    return backbone


def check_evaluation_data(splits: DataSplits, cfg: config_mod.RunConfig, name: str) -> None:
    """What the evaluation needs of its data, checked when the data is loaded (before any pretraining): labelled
    training and test splits, at least 2 classes among the probe's training images (after ``eval.max_train``)."""
    from tc2ssl.eval.evaluate import probe_training_subset

    if splits.test is None or splits.test.labels is None or splits.train.labels is None:
        raise DataError(f"evaluation needs a labelled dataset with a test split; {name!r} has none (choose one "
                        "with eval.data=NAME, or eval.enabled=false)")
    probe_train = probe_training_subset(splits.train, cfg.eval.max_train, cfg.seed)
    n_classes = int(torch.unique(probe_train.labels).numel())
    if n_classes < 2:
        held = (f"the eval.max_train={cfg.eval.max_train} images drawn for the probe hold" if
                len(probe_train) < len(splits.train) else "it holds")
        raise DataError(f"evaluation on {name!r} needs at least 2 classes in its training split; {held} "
                        f"{n_classes}: use labelled data with 2 or more classes or a larger eval.max_train")


def run_pretrain(cfg: config_mod.RunConfig) -> dict:
    """Pretrain, then (unless ``eval.enabled=false``) evaluate pretrained and random-init backbones and write
    ``eval.json``, ``eval.md`` and ``report.md``. Returns the evaluation results (empty when disabled).

    The run folder is claimed (locked; another run's files refused) and the evaluation data loaded and checked
    before pretraining starts, so that neither problem surfaces after the training time is spent."""
    with claimed_run_folder(cfg):
        return _run_pretrain(cfg)


def _run_pretrain(cfg: config_mod.RunConfig) -> dict:
    from tc2ssl.eval.evaluate import results_table, write_results
    from tc2ssl.report import read_metrics, write_report

    data = load_data(cfg.data)
    splits = None
    if cfg.eval.enabled and not is_secondary_process():
        channels, resolution = data.train.channels, data.train.resolution   # the encoder's input format
        if cfg.eval.data is None:
            splits = match_input_format(data, channels, resolution)
        else:
            splits = load_eval_splits(cfg, channels, resolution, cfg.eval.data, cfg.eval.root)
        check_evaluation_data(splits, cfg, cfg.eval.data or cfg.data.name)
    out = pretrain(cfg, data)
    if is_secondary_process():      # train.strategy=ddp: a re-run of the command as rank > 0; rank 0 reports
        return {}
    results: dict = {}
    if splits is not None:
        backbone, meta = load_backbone(out)
        channels = int(meta["in_channels"])
        device = torch.device("cpu")
        results["pretrained"] = evaluate_encoder(backbone, cfg, splits, device)
        results["pretrained"]["encoder_sha256"] = file_sha256(out / ENCODER_NAME)
        if cfg.eval.random_init_baseline:
            results["random_init"] = evaluate_encoder(random_init_backbone(cfg, channels), cfg, splits, device)
        write_results(results, out, stem="eval")
        atomic_write_text(out / "eval_table.md", results_table(results))
    from tc2ssl.diagnostics.layers import report_section

    write_report(out, config_mod.to_yaml(cfg), read_metrics(out / "metrics.jsonl"), results or None,
                 report_section(out) or None)
    print(f"run folder: {out}", file=sys.stderr)
    return results


def load_backbone(run_dir: Path):
    """The pretrained backbone of a run folder (from ``encoder.safetensors``) and the export metadata."""
    run_dir = Path(run_dir)
    run_cfg = load_run_config(run_dir)
    tensors, meta = load_encoder_weights(run_dir / ENCODER_NAME)
    channels, _ = encoder_input_format(meta, run_dir / ENCODER_NAME)
    # the weights come from the export: the backbone is built without fetching ImageNet weights
    model_cfg = dataclasses.replace(run_cfg.model, pretrained=False)
    backbone = build_backbone(model_cfg, channels)
    prefix = getattr(backbone, "export_prefix", "")
    state = {prefix + k: v for k, v in tensors.items()}
    try:
        missing, unexpected = backbone.load_state_dict(state, strict=False)
    except RuntimeError as exc:   # shapes that do not fit (another width, another channel count)
        raise CheckpointError(f"encoder weights in {run_dir} do not fit backbone {run_cfg.model.backbone!r} of "
                              f"its config.yaml ({str(exc).splitlines()[-1].strip()[:200]})") from None
    if missing or unexpected:
        raise CheckpointError(f"encoder weights in {run_dir} do not fit backbone {run_cfg.model.backbone!r} "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return backbone, meta


def evaluation_stem(data_cfg) -> str:
    """``eval_<data>``; for a user's own npz file or image folder also the root's name and a hash of its absolute
    path, so that two roots never share one result file."""
    if data_cfg.name in ("npz", "folder") and data_cfg.root:
        root = Path(data_cfg.root).expanduser().resolve()
        digest = hashlib.sha256(str(root).encode("utf-8")).hexdigest()[:8]
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in root.stem)[:40]
        return f"eval_{data_cfg.name}-{safe}-{digest}"
    return f"eval_{data_cfg.name}"


def run_evaluate(run_dir: Path, overrides: list[str]) -> dict:
    """Evaluate a run's encoder on ``eval.data`` (default: its pretraining data); write ``eval_<data>.json``."""
    from tc2ssl.eval.evaluate import write_results

    run_dir = Path(run_dir).expanduser()
    run_cfg = load_run_config(run_dir)
    cfg = config_mod.from_dict(config_mod.to_dict(run_cfg))
    eval_seed = run_cfg.seed
    if overrides:
        keys = [o.split("=", 1)[0].strip() for o in overrides]
        bad = [o for o, key in zip(overrides, keys) if not (key.startswith("eval.") or key == "seed")]
        if bad:
            raise config_mod.ConfigError(f"evaluate takes only eval.* overrides and seed= (e.g. eval.data=usps), "
                                         f"got: {', '.join(bad)}")
        merged = config_mod.load_config((), overrides)
        cfg.eval = merged.eval
        if "seed" in keys:
            eval_seed = merged.seed
    with claimed_run_folder(out=run_dir, prepare=False):   # no run may replace the encoder meanwhile
        backbone, meta = load_backbone(run_dir)
        channels, resolution = encoder_input_format(meta, run_dir / ENCODER_NAME)
        name = cfg.eval.data or cfg.data.name
        splits = load_eval_splits(cfg, channels, resolution, name, cfg.eval.root)
        probe_cfg = dataclasses.replace(cfg, seed=eval_seed)   # the seed of the probe's split and subsample
        check_evaluation_data(splits, probe_cfg, name)
        results = {"pretrained": evaluate_encoder(backbone, probe_cfg, splits, torch.device("cpu"))}
        results["pretrained"].update(encoder_sha256=file_sha256(run_dir / ENCODER_NAME), eval_seed=eval_seed)
        if cfg.eval.random_init_baseline:   # the initialisation the run started from: the run's own seed
            results["random_init"] = evaluate_encoder(random_init_backbone(cfg, channels), probe_cfg, splits,
                                                      torch.device("cpu"))
        write_results(results, run_dir, stem=evaluation_stem(eval_data_config(cfg, name, cfg.eval.root)))
    return results


def run_posthoc(run_dir: Path, overrides: list[str]) -> dict:
    """The post-hoc entry point: fine-tune a finished run folder with a plug-in (``tc2ssl posthoc RUN_DIR
    plugin.name=... [key=value ...]``).

    The new run starts from the finished run's config with ``overrides`` applied, and from its weights
    (``train.init_from=RUN_DIR``: the whole method when method and model are unchanged, else the backbone); it
    writes a run folder of its own (default ``RUN_DIR/posthoc_<plugin.name>``), evaluated and reported like
    ``tc2ssl pretrain``. Returns the evaluation results."""
    run_dir = Path(run_dir)
    base = load_run_config(run_dir)
    cfg = config_mod.load_config((), [f"train.init_from={run_dir}", "train.resume=false", *overrides], base=base)
    if not any(o.split("=", 1)[0].strip() == "out" for o in overrides):
        cfg.out = str(run_dir / f"posthoc_{cfg.plugin.name}")
    return run_pretrain(cfg)


def run_compare(cfg: config_mod.RunConfig, plugins: list[str]) -> dict:
    """Pretrain the same config once per plug-in (``out/<plugin>``), then write ``out/report.md`` comparing them.

    This is the main job: SimCLR with TC² beside its baseline (and "+T") on identical data, seed and schedule.
    """
    import time

    from tc2ssl.eval.evaluate import results_table
    from tc2ssl.report import plot_loss_curves, read_metrics

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, curves, seconds = {}, {}, {}
    for name in plugins:
        run_cfg = dataclasses.replace(cfg, out=str(out / name), plugin=dataclasses.replace(cfg.plugin, name=name))
        config_mod.validate(run_cfg)
        start = time.perf_counter()
        results = run_pretrain(run_cfg)
        seconds[name] = time.perf_counter() - start
        curves[name] = read_metrics(out / name / "metrics.jsonl")
        if "pretrained" in results:
            rows[f"{cfg.method.name} + {name}" if name != "none" else cfg.method.name] = results["pretrained"]
            if "random_init" in results and "random init" not in rows:
                rows["random init"] = results["random_init"]
    plot_loss_curves(curves, out / "loss_curves.png", title=f"{cfg.method.name}: training loss per plug-in")
    lines = [f"# tc2ssl compare: {cfg.method.name} on {cfg.data.name}", "",
             f"Same data, backbone ({cfg.model.backbone}), seed ({cfg.seed}), epochs ({cfg.train.epochs}), batch "
             f"({cfg.train.batch_size}) and optimiser for every row; plug-ins: {', '.join(plugins)}.", "",
             "Frozen-backbone evaluation on the test split (linear probe with C chosen on a validation split; "
             "weighted kNN, k = 20):", "", results_table(rows) if rows else "(evaluation disabled)", "",
             "| plug-in | wall time (s) | run folder |", "|---|---|---|"]
    lines += [f"| {name} | {seconds[name]:.0f} | [{name}/report.md]({name}/report.md) |" for name in plugins]
    lines += ["", "Note: the training losses of different plug-ins are different objectives (TC² and +T log the "
              "query loss of Eq. 7), so compare the curves' shapes, not their levels.", "",
              "![loss curves](loss_curves.png)", ""]
    atomic_write_text(out / "report.md", "\n".join(lines))
    return rows
