"""Tables of ``tc2ssl evaluate --protocol`` results over seeds (docs/results.md §12): mean ± std per model and
score, and each model's paired difference to a base model with its 95% t-interval.

    python benchmarks/protocol_tables.py runs/protocols/digits --data usps --protocols fewshot,semisup,finetune \
        --models none,gessl,none/posthoc_umm,none/posthoc_none --base none

Layout read: ROOT/s<seed>/<model>/eval_<data>_<protocol>.json (``tc2ssl evaluate --protocol`` writes them), the
pretrained encoder's entry ("pretrained"). Seeds are every s<N> folder holding all the models' files.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from tc2ssl.benchmarks.stats import paired_difference, summarize
from tc2ssl.eval.protocols import fewshot_setting_label


def scores(protocol: str, result: dict) -> dict[str, float]:
    """One run's scores of one protocol, flattened to {name: accuracy in [0, 1]}."""
    if protocol == "fewshot":
        flat = {}
        for scope, settings in [("all test", result), *result.get("groups", {}).items()]:
            for setting, heads in settings.items():
                if "way_" not in setting:
                    continue
                for head, score in heads.items():
                    flat[f"{scope}, {fewshot_setting_label(setting)}, {head}"] = \
                        score["mean"]
        return flat
    if protocol == "semisup":
        return {f"{share} {kind}": r[key] for share, r in result.items()
                for kind, key in (("fine-tune", "finetune"), ("linear probe", "linear_probe"))}
    if protocol == "finetune":
        return {"fine-tune (test)": result["accuracy"]}
    raise ValueError(f"protocol {protocol!r} has no table here")


def load(root: Path, data: str, protocol: str, models: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """{model: {seed: scores}} over the seeds where every model has the file."""
    by_model: dict[str, dict[str, dict[str, float]]] = {m: {} for m in models}
    for seed_dir in sorted(root.glob("s[0-9]*")):
        paths = {m: seed_dir / m / f"eval_{data}_{protocol}.json" for m in models}
        if all(p.is_file() for p in paths.values()):
            for model, path in paths.items():
                by_model[model][seed_dir.name] = scores(protocol, json.loads(path.read_text())["pretrained"])
    return by_model


def table(by_model: dict, base: str) -> str:
    models = list(by_model)
    seeds = sorted(by_model[base])
    names = list(by_model[base][seeds[0]]) if seeds else []
    others = [m for m in models if m != base]
    head = "| " + " | ".join(["score", *models, *(f"{m} − {base}" for m in others)]) + " |"
    lines = [head, "|" + "---|" * (1 + len(models) + len(others))]
    for name in names:
        cells = []
        for model in models:
            s = summarize([100 * by_model[model][seed][name] for seed in seeds])
            cells.append(f"{s.mean:.2f} ± {s.std:.2f}")
        for model in others:
            d = paired_difference([100 * by_model[model][seed][name] for seed in seeds],
                                  [100 * by_model[base][seed][name] for seed in seeds], 0.95)
            cells.append(f"{d.mean:+.2f} [{d.ci_low:+.2f}, {d.ci_high:+.2f}]")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\n(seeds: {', '.join(seeds)}; accuracies in %)\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--data", required=True, help="the eval data name in the file names (eval_<data>_...)")
    parser.add_argument("--protocols", default="fewshot")
    parser.add_argument("--models", required=True, help="comma-separated model folders under each seed folder")
    parser.add_argument("--base", required=True)
    args = parser.parse_args(argv)
    models = args.models.split(",")
    for protocol in args.protocols.split(","):
        print(f"### {protocol}\n\n{table(load(args.root, args.data, protocol, models), args.base)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
