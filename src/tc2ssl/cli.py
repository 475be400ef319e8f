"""The ``tc2ssl`` command.

    tc2ssl pretrain [-p PRESET ...] [key=value ...]     pretrain, evaluate, write report.md
    tc2ssl compare [-p PRESET ...] [--plugins none,tasks,tc2] [key=value ...]
                                                        the same run per plug-in, one report side by side
    tc2ssl figure1 [--plugins tasks,tc2] [--seeds 0,1,2] [key=value ...]
                                                        Figure 1: inter-task gradient cosine per epoch
    tc2ssl benchmark SUITE [--preset smoke|cpu|standard|paper] [--plugins random_init,none,tasks,tc2,gessl]
                     [--seeds 0,1,2] [--methods byol,...] [key=value ...]
                                                        transfer / OOD suites: pacs, colored_mnist, digits_transfer,
                                                        cifar10_subset (results.md: mean ± std, paired CIs,
                                                        the checks (docs/decisions.md) R1-R6 with their verdicts)
    tc2ssl merge OUT BENCHMARK_DIR... [--rows A,B] [--seeds 0,1,2,3,4]
                                                        one benchmark table from several (seeds, base methods)
    tc2ssl recheck BENCHMARK_DIR                        recompute a finished benchmark's checks, rewrite results.md
    tc2ssl evaluate [--protocol linear,knn,fewshot,semisup,finetune,layers] RUN_DIR [eval.data=NAME ...]
                                                        evaluate a trained encoder on any labelled data (default:
                                                        linear probe + kNN)
    tc2ssl export RUN_DIR [--format torchvision|timm|state_dict] [--out FILE]
                                                        the encoder as a file plain torchvision / timm load
    tc2ssl umm RUN_DIR [key=value ...]                  UMM post hoc on a finished run (= tc2ssl posthoc RUN_DIR
                                                        plugin.name=umm; docs/umm.md)
    tc2ssl config [-p PRESET ...] [key=value ...]       print the resolved config
    tc2ssl list                                         data sources, backbones, methods, plug-ins, presets

Errors caused by input (bad config, missing data, corrupt files, a run folder in use or holding another run, a
full or read-only disk) are printed as one line, exit status 2; anything else is a bug and keeps its traceback.
Options and key=value overrides may come in any order.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings

from tc2ssl.errors import ConfigError, TC2SSLError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tc2ssl", description="Self-supervised learning with TC², GeSSL and UMM.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("pretrain", "pretrain an encoder, evaluate it and write report.md"),
                            ("config", "print the resolved config")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("-p", "--preset", action="append", default=[],
                       help="preset name (see `tc2ssl list`) or YAML file; repeatable, later ones win")
        p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=5 plugin.name=tc2")
    p = sub.add_parser("umm", help="UMM post hoc on a finished run: tc2ssl posthoc RUN_DIR plugin.name=umm")
    p.add_argument("run_dir")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=10 plugin.umm.lam=0.1")
    p = sub.add_parser("posthoc", help="fine-tune a finished run with a plug-in, from its weights and config")
    p.add_argument("run_dir", help="a finished run folder (holding config.yaml and checkpoint.pt)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. plugin.name=tc2 train.epochs=2")
    p = sub.add_parser("compare", help="pretrain the same config once per plug-in and compare them in one report")
    p.add_argument("-p", "--preset", action="append", default=[])
    p.add_argument("--plugins", default="none,tc2", help="comma-separated plug-in names (default: none,tc2)")
    p.add_argument("overrides", nargs="*")
    p = sub.add_parser("figure1", help="inter-task gradient cosine per epoch for several seeds (paper Fig. 1)")
    p.add_argument("-p", "--preset", action="append", default=[])
    p.add_argument("--plugins", default="tasks,tc2")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("overrides", nargs="*")
    p = sub.add_parser("benchmark", help="a transfer / OOD suite: every plug-in over seeds, paired differences")
    p.add_argument("suite", help="pacs, colored_mnist, digits_transfer or cifar10_subset (options and key=value "
                   "overrides may come in any order)")
    p.add_argument("--preset", default="cpu", help="scale: smoke, cpu (default), standard or paper")
    p.add_argument("-p", dest="config_presets", action="append", default=[], metavar="PRESET",
                   help="a config preset for every row, as in `tc2ssl pretrain -p` (e.g. -p calibrated); applied "
                   "after the scale preset, before your key=value overrides")
    p.add_argument("--plugins", default="random_init,none,tasks,tc2,gessl",
                   help="comma-separated rows: plug-in names, and random_init (the untrained backbone, evaluated "
                   "only); default: random_init,none,tasks,tc2,gessl (with gessl and none also 'none batch=N/M'). "
                   "A row variant 'NAME key=value ...' (e.g. 'tc2 plugin.beta1=0.01') adds that plug-in with "
                   "overrides for its row only; preset=NAME there stands for a config preset's overrides (e.g. "
                   "'tc2 preset=calibrated')")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: the preset's)")
    p.add_argument("--methods", default="", help="further SSL methods, comma-separated: rows METHOD/PLUGIN for "
                   "every plug-in, paired with METHOD/none (the base method.name keeps the plain rows)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides and suite.KEY=VALUE suite options")
    p = sub.add_parser("merge", help="one benchmark table from several finished benchmarks of the same suite and "
                       "preset (seeds run at different times, or rows of another base method)")
    p.add_argument("out", help="the folder to write the merged results.json / results.md / figures to")
    p.add_argument("folders", nargs="+", help="benchmark folders (each holding results.json); the first one's base "
                   "method names the plain rows")
    p.add_argument("--rows", default=None, help="comma-separated row labels to keep (their bases and equal-compute "
                   "comparators come with them); default: all")
    p.add_argument("--seeds", default=None, help="comma-separated seeds to keep; default: every seed of any folder")
    p = sub.add_parser("recheck", help="recompute the checks (docs/decisions.md) of a finished benchmark and "
                       "rewrite its results.json / results.md")
    p.add_argument("benchmark_dir", help="the benchmark's output folder (holding results.json)")
    p = sub.add_parser("evaluate", help="evaluate a run's encoder (default: linear probe + kNN)")
    p.add_argument("run_dir")
    p.add_argument("--protocol", default=None,
                   help="comma-separated: linear, knn, fewshot, semisup, finetune, layers (default: linear probe + "
                   "kNN, as eval.json); results go to RUN_DIR/eval_DATA_PROTOCOL.json and .md. Give it before "
                   "RUN_DIR or after the eval.* overrides")
    p.add_argument("overrides", nargs="*", help="eval.* overrides, e.g. eval.data=usps")
    p = sub.add_parser("export", help="write a run's encoder for plain torchvision / timm (or as a state_dict)")
    p.add_argument("run_dir", help="a run folder, or its encoder.safetensors")
    p.add_argument("--format", dest="fmt", default=None, choices=("torchvision", "timm", "state_dict"),
                   help="default: the backbone's own library (state_dict for tc2ssl's own backbones)")
    p.add_argument("--out", default=None, help="file to write (default: RUN_DIR/encoder_FORMAT.safetensors|.pt)")
    sub.add_parser("list", help="list data sources, backbones, methods, plug-ins and presets")
    parser.set_defaults(commands=sub.choices)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, options and ``key=value`` overrides in any order (``pretrain k=v -p mae k2=v2``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    commands = parser.get_default("commands")
    if argv and argv[0] in commands:
        args = commands[argv[0]].parse_intermixed_args(argv[1:])
        args.command = argv[0]
        return args
    return parser.parse_args(argv)   # --help, or an unknown command: argparse's own message


def main(argv: list[str] | None = None) -> int:
    """Run one command; an error caused by input is printed as one line (exit status 2), a bug as a traceback."""
    from tc2ssl.train.run_folder import DISK_ERRNOS, disk_error, interrupted_message

    args = parse_args(argv)
    try:
        return _dispatch(args)
    except TC2SSLError as exc:
        print(f"tc2ssl: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS:
            raise
        print(f"tc2ssl: error: {disk_error(exc, exc.filename or 'the output folder')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tc2ssl: {interrupted_message()}", file=sys.stderr)
        return 130


def _print_means(result: dict) -> None:
    """A benchmark's mean per row and metric, as JSON on stdout."""
    print(json.dumps({row: {m: s["mean"] for m, s in by_metric.items()}
                      for row, by_metric in result["summary"].items()}, indent=2))


def _dispatch(args) -> int:
    from tc2ssl import config as config_mod

    if args.command == "list":
        from tc2ssl.data import SOURCES
        from tc2ssl.methods import METHODS
        from tc2ssl.models import BACKBONES
        from tc2ssl.plugins import PLUGINS

        print("data sources: " + ", ".join(SOURCES.names()))
        print("backbones:    " + ", ".join(BACKBONES.names()) + ", timm:NAME")
        print("methods:      " + ", ".join(METHODS.names()))
        print("plug-ins:     " + ", ".join(PLUGINS.names()))
        print("presets:      " + ", ".join(sorted(p.stem for p in config_mod.PRESET_DIR.glob("*.yaml"))))
        from tc2ssl.eval.protocols import PROTOCOLS

        print("protocols:    " + ", ".join(PROTOCOLS) + " (tc2ssl evaluate --protocol)")
        return 0
    if args.command == "config":
        print(config_mod.to_yaml(config_mod.load_config(args.preset, args.overrides)), end="")
        return 0
    if args.command == "pretrain":
        from tc2ssl.workflows import run_pretrain

        cfg = config_mod.load_config(args.preset, args.overrides)
        results = run_pretrain(cfg)
        if results:
            print(json.dumps(_summary(results), indent=2))
        return 0
    if args.command in ("posthoc", "umm"):
        from tc2ssl.workflows import run_posthoc

        overrides = ["plugin.name=umm", *args.overrides] if args.command == "umm" else args.overrides
        results = run_posthoc(args.run_dir, overrides)
        if results:
            print(json.dumps(_summary(results), indent=2))
        return 0
    if args.command == "compare":
        from tc2ssl.workflows import run_compare

        cfg, plugins = _config_per_plugin(args, "compare")
        rows = run_compare(cfg, plugins)
        print(json.dumps({k: {"linear_probe": v["linear_probe"]["accuracy"], "knn": v["knn"]["accuracy"]}
                          for k, v in rows.items()}, indent=2))
        return 0
    if args.command == "figure1":
        from tc2ssl.diagnostics.figure1 import run_figure1

        args.overrides = ["plugin.conflict_every=1", *args.overrides]   # Fig. 1 is per iteration; yours win
        cfg, plugins = _config_per_plugin(args, "figure1")
        try:
            seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
        except ValueError:
            raise config_mod.ConfigError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
        result = run_figure1(cfg, plugins, seeds)
        print(json.dumps(result["r1"], indent=2))
        return 0
    if args.command == "benchmark":
        from tc2ssl.benchmarks import parse_seeds, run_benchmark

        from tc2ssl.config import preset_overrides

        seeds = None if args.seeds is None else parse_seeds(args.seeds)
        overrides = [item for name in args.config_presets for item in preset_overrides(name)] + list(args.overrides)
        result = run_benchmark(args.suite, args.preset, args.plugins.split(","), seeds, overrides,
                               methods=args.methods.split(","))
        _print_means(result)
        return 0
    if args.command == "merge":
        from tc2ssl.benchmarks import parse_seeds
        from tc2ssl.benchmarks.merge import merge_results

        result = merge_results(args.folders, args.out, None if args.rows is None else args.rows.split(","),
                               None if args.seeds is None else parse_seeds(args.seeds))
        _print_means(result)
        return 0
    if args.command == "recheck":
        from tc2ssl.benchmarks.suites import recheck

        result = recheck(args.benchmark_dir)
        print(json.dumps({c["id"]: c["verdict"] for c in result["checks"]}, indent=2))
        return 0
    if args.command == "evaluate":
        from tc2ssl.workflows import run_evaluate

        if args.protocol is not None:
            from tc2ssl.eval.protocols import parse_protocols, protocol_table

            by_protocol = run_evaluate(args.run_dir, args.overrides, parse_protocols(args.protocol))
            for protocol, rows in by_protocol.items():
                print(f"## {protocol}\n\n{protocol_table(protocol, rows)}")
            return 0
        print(json.dumps(_summary(run_evaluate(args.run_dir, args.overrides)), indent=2))
        return 0
    if args.command == "export":
        from tc2ssl.models.export import export_encoder_file

        print(export_encoder_file(args.run_dir, args.fmt, args.out))
        return 0
    raise AssertionError(args.command)


def _config_per_plugin(args, command: str):
    """The config of a command that runs once per ``--plugins`` entry, and the plug-in names; every plug-in's
    config is validated before any work starts."""
    from tc2ssl import config as config_mod

    cfg = config_mod.load_config(args.preset, args.overrides)
    plugins = [p.strip() for p in args.plugins.split(",") if p.strip()]
    for name in plugins:
        config_mod.load_config(args.preset, [*args.overrides, f"plugin.name={name}"])
    _check_one_run_per_launch(cfg, command)
    return cfg, plugins


def _check_one_run_per_launch(cfg, command: str) -> None:
    if cfg.train.devices > 1 and cfg.train.strategy == "ddp":
        raise ConfigError(
            f"train.strategy=ddp re-runs the command in every process and supports one training run per command; "
            f"`tc2ssl {command}` trains several: use train.strategy=ddp_spawn (or auto)")


def _summary(results: dict) -> dict:
    return {name: {"linear_probe": r["linear_probe"]["accuracy"], "knn": r["knn"]["accuracy"]}
            for name, r in results.items() if isinstance(r, dict) and "linear_probe" in r}


if __name__ == "__main__":  # pragma: no cover
    warnings.simplefilter("default")
    raise SystemExit(main())
