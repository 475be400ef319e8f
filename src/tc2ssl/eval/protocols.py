"""The evaluation protocols of ``tc2ssl evaluate RUN --protocol NAME[,NAME...]``, one module each:

- ``linear``, ``knn``: frozen-feature logistic regression and weighted kNN (one feature pass serves both;
  :mod:`tc2ssl.eval.evaluate`);
- ``fewshot``: N-way K-shot episodes on the test split, prototype and logistic heads, mean ± 95% CI; also per group
  (PACS domains: cross-domain few-shot) (:mod:`tc2ssl.eval.fewshot`);
- ``semisup``: 1% / 10% of the labels, end-to-end fine-tuning vs a linear probe on the same images
  (:mod:`tc2ssl.eval.semisup`);
- ``finetune``: full fine-tuning with a held-out validation split for early stopping (:mod:`tc2ssl.eval.finetune`);
- ``layers``: a linear probe on every named layer tap of the backbone (:mod:`tc2ssl.eval.layers`).

Each protocol's results, per model ("pretrained", "random_init"), are written as ``<stem>_<protocol>.json`` and a
markdown table ``<stem>_<protocol>.md`` in the run folder.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

from tc2ssl.data.base import DataSplits
from tc2ssl.errors import ConfigError

PROTOCOLS = ("linear", "knn", "fewshot", "semisup", "finetune", "layers")
AUGMENTS = ("auto", "none", "digits", "cifar", "imagenet")


def parse_protocols(text: str) -> list[str]:
    """Comma-separated protocol names, validated, in the given order without repeats."""
    names = list(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    unknown = [n for n in names if n not in PROTOCOLS]
    if unknown or not names:
        raise ConfigError(f"--protocol {text!r}: unknown protocol(s) {unknown}; valid protocols: "
                          f"{', '.join(PROTOCOLS)} (comma-separated)")
    return names


def check_protocol_config(eval_cfg) -> None:
    """The list-valued ``eval.*`` protocol keys (the numeric ones are bounded in the config dataclass)."""
    if not eval_cfg.fewshot_shots or any(k < 1 for k in eval_cfg.fewshot_shots):
        raise ConfigError(f"eval.fewshot_shots must be a non-empty list of integers >= 1, got "
                          f"{list(eval_cfg.fewshot_shots)}")
    if not eval_cfg.semisup_fractions or any(not 0.0 < f <= 1.0 for f in eval_cfg.semisup_fractions):
        raise ConfigError(f"eval.semisup_fractions must be a non-empty list of fractions in (0, 1], got "
                          f"{list(eval_cfg.semisup_fractions)}")
    if eval_cfg.finetune_augment not in AUGMENTS:
        raise ConfigError(f"eval.finetune_augment={eval_cfg.finetune_augment!r} is not allowed; valid values: "
                          f"{', '.join(AUGMENTS)}")


def finetune_augment(run_cfg, splits: DataSplits) -> str:
    """``eval.finetune_augment``, with ``auto`` = the pretraining run's own preset for this data."""
    from tc2ssl.data.augment import auto_preset

    if run_cfg.eval.finetune_augment != "auto":
        return run_cfg.eval.finetune_augment
    name = run_cfg.eval.data or run_cfg.data.name
    return auto_preset(name, splits.train.channels, splits.train.resolution)


def run_protocol(name: str, backbone: nn.Module, splits: DataSplits, run_cfg, device: str | torch.device = "cpu"
                 ) -> dict:
    """One protocol's result for one backbone (see the module table)."""
    eval_cfg, seed, train, test = run_cfg.eval, run_cfg.seed, splits.train, splits.test
    if name in ("linear", "knn"):
        from tc2ssl.eval.evaluate import evaluate_backbone

        return evaluate_backbone(backbone, train, test, eval_cfg, device=device, seed=seed)
    if name == "fewshot":
        from tc2ssl.eval.features import extract_features
        from tc2ssl.eval.fewshot import few_shot_eval

        features = extract_features(backbone, test.images, eval_cfg.batch_size, device)
        return few_shot_eval(features, test.labels, eval_cfg.fewshot_ways, tuple(eval_cfg.fewshot_shots),
                             eval_cfg.fewshot_queries, eval_cfg.fewshot_episodes, seed=seed, groups=test.groups,
                             group_names=test.group_names)
    if name == "semisup":
        from tc2ssl.eval.semisup import semisup_protocol

        return semisup_protocol(backbone, train, test, eval_cfg, finetune_augment(run_cfg, splits), device, seed)
    if name == "finetune":
        from tc2ssl.eval.finetune import finetune_protocol

        return finetune_protocol(backbone, train, test, eval_cfg, finetune_augment(run_cfg, splits), device, seed)
    if name == "layers":
        from tc2ssl.eval.layers import layer_probes

        return layer_probes(backbone, train, test, eval_cfg, device, seed)
    raise ConfigError(f"unknown protocol {name!r}; valid protocols: {', '.join(PROTOCOLS)}")


def evaluate_protocols(backbones: dict[str, nn.Module], splits: DataSplits, run_cfg, protocols: list[str],
                       device: str | torch.device = "cpu") -> dict[str, dict[str, dict]]:
    """``{protocol: {model name: result}}``; ``linear`` and ``knn`` share one computation."""
    results: dict[str, dict[str, dict]] = {}
    for protocol in protocols:
        shared = "linear" if protocol == "knn" else "knn" if protocol == "linear" else None
        if shared in results:
            results[protocol] = results[shared]
            continue
        results[protocol] = {model: run_protocol(protocol, backbone, splits, run_cfg, device)
                             for model, backbone in backbones.items()}
    return results


# ------------------------------------------------------------------------------------------------------- tables
def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100.0 * value:.2f}"


def fewshot_setting_label(setting: str) -> str:
    """``"5way_1shot"`` -> ``"5-way 1-shot"``: how a few-shot setting key is shown in tables."""
    return setting.replace('way_', '-way ').replace('shot', '-shot')


def _fewshot_rows(model: str, scope: str, settings: dict) -> list[str]:
    rows = []
    for setting, heads in settings.items():
        for head, score in heads.items():
            rows.append(f"| {model} | {scope} | {fewshot_setting_label(setting)} | {head} "
                        f"| {_pct(score['mean'])} ± {_pct(score['ci95'])} | {score['episodes']} |")
    return rows


def protocol_table(protocol: str, rows: dict[str, dict]) -> str:
    """A markdown table of one protocol's results by model name (accuracies in percent)."""
    if protocol in ("linear", "knn"):
        from tc2ssl.eval.evaluate import results_table

        return results_table(rows)
    lines: list[str]
    if protocol == "fewshot":
        lines = ["| model | images | setting | head | accuracy (95% CI) | episodes |", "|---|---|---|---|---|---|"]
        for model, result in rows.items():
            settings = {k: v for k, v in result.items() if "way_" in k}
            lines += _fewshot_rows(model, "all test", settings)
            for group, group_settings in result.get("groups", {}).items():
                lines += _fewshot_rows(model, group, group_settings)
    elif protocol == "semisup":
        lines = ["| model | labels | fine-tune | linear probe | labelled images |", "|---|---|---|---|---|"]
        for model, result in rows.items():
            lines += [f"| {model} | {share} | {_pct(r['finetune'])} | {_pct(r['linear_probe'])} | {r['n_labelled']} |"
                      for share, r in result.items()]
    elif protocol == "finetune":
        lines = ["| model | test accuracy | best val accuracy | best epoch | epochs run | train / val / test |",
                 "|---|---|---|---|---|---|"]
        lines += [f"| {model} | {_pct(r['accuracy'])} | {_pct(r['val_accuracy'])} | {r['best_epoch']} | "
                  f"{r['epochs_run']} | {r['n_train']} / {r['n_val']} / {r['n_test']} |" for model, r in rows.items()]
    elif protocol == "layers":
        lines = ["| model | layer | probe accuracy | best C | dim |", "|---|---|---|---|---|"]
        for model, result in rows.items():
            lines += [f"| {model} | {tap} | {_pct(r['accuracy'])} | {r['best_c']:g} | {r['feature_dim']} |"
                      for tap, r in result.items()]
    else:
        raise ConfigError(f"unknown protocol {protocol!r}; valid protocols: {', '.join(PROTOCOLS)}")
    return "\n".join(lines) + "\n"


def write_protocol_results(results: dict[str, dict[str, dict]], out_dir: str | Path, stem: str) -> list[Path]:
    """``<stem>_<protocol>.json`` and ``.md`` per protocol (written atomically); returns the JSON paths."""
    from tc2ssl.train.checkpoint import atomic_write_text

    paths = []
    for protocol, rows in results.items():
        path = Path(out_dir) / f"{stem}_{protocol}.json"
        atomic_write_text(path, json.dumps(rows, indent=2) + "\n")
        atomic_write_text(path.with_suffix(".md"), f"# Evaluation: {protocol} ({stem})\n\n"
                          f"{protocol_table(protocol, rows)}")
        paths.append(path)
    return paths
