"""The ``mldcn`` command.

    mldcn demo                      ML-DCN vs DCNv2 vs MaskNet at matched FLOPs (synthetic data)
    mldcn models                    every preset with its FLOPs and parameters
    mldcn prepare --schema frappe --train ... --valid ... --test ... --out DIR
                                    preprocess a raw click log
    mldcn synth DIR --train-rows N  write an industrial-shape log (neutral teacher) as prepared data
    mldcn train --model mldcn       train one model (config file and/or flags)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
import time
from pathlib import Path

from mldcn.config import ConfigError, apply_overrides, load_yaml
from mldcn.serve.cli import add_commands as add_serve_commands


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one model", description="Train one model and test it.")
    p.add_argument("--config", help="run config YAML with data / model / train sections")
    p.add_argument("--model", help="model preset name (see `mldcn models`); overrides the config's model")
    p.add_argument("--data", help="a prepared data directory (`mldcn prepare`); default: synthetic")
    p.add_argument("--epochs", type=int, help="maximum epochs")
    p.add_argument("--batch-size", type=int, help="training batch size")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--seed", type=int, help="seed for init, shuffling and dropout")
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set model.interaction.rank=16 (repeatable)",
    )
    p.add_argument("--out", help="run directory (default: runs/<model>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint (last.pt; last.dcp/ for sharded tables)")
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="train data-parallel on N processes of this machine (re-launches under torchrun)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def _relaunch_under_torchrun(args: argparse.Namespace) -> int:
    """``mldcn train --nproc N ...`` → ``torchrun --standalone --nproc_per_node N -m mldcn train ...``."""
    import subprocess

    out = args.out or str(Path("runs") / f"{args.model or 'run'}-{time.strftime('%Y%m%d-%H%M%S')}")
    argv = sys.argv[1:] if sys.argv[1:2] == ["train"] else ["train"]
    forwarded, skip = [], False
    for token in argv:  # drop --nproc N / --nproc=N / --out X; the shared --out is set below
        if skip:
            skip = False
            continue
        if token in ("--nproc", "--out"):
            skip = True
            continue
        if token.startswith(("--nproc=", "--out=")):
            continue
        forwarded.append(token)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc),
        "-m", "mldcn", *forwarded, "--out", out,
    ]  # fmt: skip
    return subprocess.call(command)


def cmd_train(args: argparse.Namespace) -> int:
    from mldcn.train import distributed
    from mldcn.train.run import run, run_config_from_dict

    if args.nproc > 1 and not distributed.launched_by_torchrun():
        return _relaunch_under_torchrun(args)
    data = load_yaml(args.config) if args.config else {}
    if args.model:
        data["model"] = args.model
    data.setdefault("model", "mldcn")
    overrides = list(args.set)
    flags = {
        "train.epochs": args.epochs,
        "train.batch_size": args.batch_size,
        "train.lr": args.lr,
        "train.seed": args.seed,
        "train.threads": args.threads,
    }
    overrides = [f"{k}={v}" for k, v in flags.items() if v is not None] + overrides
    if args.data:
        overrides += ["data.source=prepared", f"data.path={args.data}"]
    if args.quiet:
        overrides.append("train.progress=false")
    config = run_config_from_dict(apply_overrides(data, overrides))
    name = args.model or config.model.family
    out = Path(args.out) if args.out else Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.resume and not args.out:
        raise ConfigError("--resume needs the run directory: --out DIR")
    main_process = not distributed.launched_by_torchrun() or os.environ.get("RANK", "0") == "0"
    if main_process:
        print(f"data: {_describe_data(config.data)}", flush=True)
    try:
        result = run(config, out, resume=args.resume)
    except KeyboardInterrupt:
        if main_process:
            print(_interrupted(out), file=sys.stderr)
        return 130
    is_main = distributed.context().is_main
    distributed.shutdown()  # every rank trained and tested: leave the group together
    if not is_main:
        return 0
    from mldcn.serve.artifact import save_run_artifact

    save_run_artifact(result, out / "model")
    print(f"run directory: {out}")
    print(
        f"best epoch {result.fit.best_epoch}/{len(result.fit.history)}  "
        f"train {result.fit.train_examples_per_second:,.0f} ex/s"
    )
    for task, m in result.test.items():
        gauc = f"  gAUC {m['gauc']:.4f}" if "gauc" in m else ""
        print(
            f"  {task}: test AUC {m['auc']:.4f}{gauc}  logloss {m['logloss']:.4f}  "
            f"NE {m['ne']:.4f}  calibration {m['calibration']:.3f}"
        )
    return 0


def _describe_data(data) -> str:
    """One line: what a run trains on."""
    if data.source == "prepared":
        return f"prepared data in {data.path}" + ("" if data.load == "auto" else f" ({data.load})")
    if data.source == "industrial":
        s = data.industrial
        return (
            f"the industrial-shape log ({s.train_rows:,} train / {s.valid_rows:,} valid / {s.test_rows:,} test rows, "
            f"seed {s.seed}), generated in memory"
        )
    s = data.synthetic
    return (
        f"the embedded synthetic click log ({s.train_rows:,} train / {s.valid_rows:,} valid / {s.test_rows:,} test rows, "
        f"seed {s.seed}); train on your own log with --data DIR (see `mldcn prepare`)"
    )


def _interrupted(out: Path) -> str:
    """What to tell a user who pressed Ctrl-C during training: where the checkpoint is, how to resume."""
    from mldcn.train import checkpoint  # noqa: PLC0415

    if not checkpoint.found(out):
        return f"mldcn train: interrupted before the first epoch finished; no checkpoint was written in {out}"
    epochs = 0
    with contextlib.suppress(OSError, ValueError):
        lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
        epochs = max((line.get("epoch", 0) for line in lines), default=0)
    argv = [token for token in sys.argv[1:] if token != "--resume"]
    if "--out" not in argv and not any(token.startswith("--out=") for token in argv):
        argv += ["--out", str(out)]
    return (
        f"mldcn train: interrupted. The training state after the last finished epoch ({epochs}) is in "
        f"{out / checkpoint.LAST if (out / checkpoint.LAST).is_file() else checkpoint.sharded_checkpoint(out)}; "
        f"continue with:\n  mldcn {shlex.join(argv)} --resume"
    )


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="preprocess a raw click log into training arrays",
        description="Fit vocabularies and statistics on the training rows and encode every split "
        "into memory-mappable arrays plus a feature map.",
    )
    p.add_argument("--schema", required=True, help="built-in schema name (criteo, avazu, frappe, ...) or a YAML file")
    inputs = "; each: a file, several files, a quoted glob ('day_*.tsv') or a directory of files (e.g. Parquet shards)"
    p.add_argument("--train", nargs="+", metavar="PATH", help="training data" + inputs)
    p.add_argument("--valid", nargs="+", metavar="PATH", help="validation data")
    p.add_argument("--test", nargs="+", metavar="PATH", help="test data")
    p.add_argument("--input", nargs="+", metavar="PATH", help="data to split (with --split random or time)")
    p.add_argument("--split", choices=["files", "random", "time"], help="default: files, or random with --input")
    p.add_argument("--valid-fraction", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--split-seed", type=int, default=2021)
    p.add_argument("--time-column", help="column of a time split")
    p.add_argument("--valid-from", help="time split: first value of the validation period")
    p.add_argument("--test-from", help="time split: first value of the test period")
    p.add_argument("--min-count", type=int, help="override the schema's vocabulary min_count")
    p.add_argument("--on-bad-rows", choices=["error", "skip"], default="error")
    p.add_argument("--force", action="store_true", help="prepare again even if the inputs are unchanged")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes that read, fit and encode in parallel (files, and 32 MiB parts of large files); "
        "the output is the same for any number",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=cmd_prepare)


def cmd_prepare(args: argparse.Namespace) -> int:
    import dataclasses

    from mldcn.data.prepare import SplitConfig, prepare
    from mldcn.data.schema import load_schema

    schema = load_schema(args.schema)
    if args.min_count is not None:
        schema = dataclasses.replace(schema, min_count=args.min_count)
    kind = args.split or ("random" if args.input else "files")
    split = SplitConfig(
        kind=kind,
        valid_fraction=args.valid_fraction,
        test_fraction=args.test_fraction,
        seed=args.split_seed,
        time_column=args.time_column,
        valid_from=args.valid_from,
        test_from=args.test_from,
    )
    report = prepare(
        schema,
        args.out,
        train=args.train,
        valid=args.valid,
        test=args.test,
        input=args.input,
        split=split,
        on_bad_rows=args.on_bad_rows,
        force=args.force,
        workers=args.workers,
        progress=print,
    )
    if report["reused"]:
        print(f"{args.out}: inputs, schema and split unchanged; reusing the prepared data (--force to redo)")
    for entry in report["inputs"]:
        print(
            f"{entry['path']}: {entry['rows_read']:,} rows read = {entry['rows_kept']:,} written "
            f"+ {entry['rows_skipped']:,} skipped"
        )
        for part in entry.get("parts", []):  # a file read in parts (units of work)
            first, last = part["lines"]
            print(
                f"  lines {first:,}-{last:,}: {part['rows_read']:,} read = {part['rows_kept']:,} written "
                f"+ {part['rows_skipped']:,} skipped"
            )
        for bad in entry["skipped_examples"][:5]:
            print(f"  skipped line {bad['line']}: {bad['reason']}")
        if entry["rows_skipped"] > 5:
            print(f"  ... and {entry['rows_skipped'] - 5:,} more (the first 20 are listed in feature_map.json)")
    def rates(v: dict) -> str:
        return ", ".join(f"{task} {count / max(v['rows'], 1):.1%}" for task, count in v["positives"].items())

    splits = "; ".join(f"{name} {v['rows']:,} (positive: {rates(v)})" for name, v in report["splits"].items())
    print(f"splits: {splits}")
    print(f"{report['rows_read']:,} rows in {report['seconds']:.2f} s ({report['rows_per_second']:,.0f} rows/s) -> {args.out}")
    return 0


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list model presets with FLOPs and parameters")
    p.add_argument("pattern", nargs="?", default="", help="only presets whose name contains this")
    p.set_defaults(func=cmd_models)


def cmd_models(args: argparse.Namespace) -> int:
    from mldcn.data.synthetic import SyntheticClickLog, SyntheticConfig
    from mldcn.models import create_model, get_preset, list_models, model_cost
    from mldcn.models.registry import preset_description
    from mldcn.studies.table import format_table

    features = SyntheticClickLog(SyntheticConfig()).features
    rows = []
    for name in list_models(args.pattern):
        cost = model_cost(create_model(name, features))
        rows.append(
            {
                "name": name,
                "family": get_preset(name).family,
                "interaction": cost.interaction.total,
                "total": cost.total.total,
                "dense": cost.dense_params,
                "embedding": cost.embedding_params,
                "description": preset_description(name),
            }
        )
    print(f"FLOPs per example and parameters on the default synthetic schema ({features.num_fields} fields)")
    columns = [
        ("name", "model"),
        ("family", "family"),
        ("interaction", "interaction FLOPs"),
        ("total", "total FLOPs"),
        ("dense", "dense params"),
        ("embedding", "embedding params"),
        ("description", "description"),
    ]
    print(format_table(rows, columns))
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="ML-DCN vs DCNv2 vs MaskNet at matched FLOPs on synthetic data",
        description="Train ML-DCN, DCNv2 (low-rank) and MaskNet at matched FLOPs on the synthetic "
        "click log and print one table beside the ceiling AUC.",
    )
    p.add_argument("--budget", type=float, help="interaction FLOPs per example to match")
    p.add_argument("--train-rows", type=int, help="synthetic training rows")
    p.add_argument("--epochs", type=int, help="maximum epochs per model")
    p.add_argument("--seed", type=int, help="seed of the data and of training")
    p.add_argument("--out", default="runs/demo", help="where to write runs and the table")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    import dataclasses

    from mldcn.studies.demo import DemoConfig, run_demo

    config = DemoConfig()
    changes = {}
    if args.budget is not None:
        changes["budget"] = args.budget
    if args.train_rows is not None or args.seed is not None:
        data = config.data
        if args.train_rows is not None:
            data = dataclasses.replace(data, train_rows=args.train_rows)
        if args.seed is not None:
            data = dataclasses.replace(data, seed=args.seed)
        changes["data"] = data
    train = config.train
    if args.epochs is not None:
        train = dataclasses.replace(train, epochs=args.epochs)
    if args.seed is not None:
        train = dataclasses.replace(train, seed=args.seed)
    changes["train"] = dataclasses.replace(train, progress=not args.quiet)
    start = time.perf_counter()
    run_demo(dataclasses.replace(config, **changes), args.out)
    print(f"\ndone in {time.perf_counter() - start:.0f} s; runs and table in {args.out}/")
    return 0


def _data_features(data: str | None):
    """The feature spec of a prepared directory, or of the default synthetic log."""
    if data:
        from mldcn.data.encode import read_feature_map
        from mldcn.features import FeatureSpec

        return FeatureSpec.from_dict(read_feature_map(data)["features"])
    from mldcn.data.synthetic import SyntheticClickLog, SyntheticConfig

    return SyntheticClickLog(SyntheticConfig()).features


def _add_budget(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "budget",
        help="each family's configuration at a FLOPs budget",
        description="Resize every family's interaction module to a FLOPs budget (±3%%) and print "
        "its configuration, FLOPs and parameters.",
    )
    p.add_argument("--flops", type=float, required=True, help="interaction FLOPs per example")
    p.add_argument("--data", help="a prepared data directory (default: the synthetic schema)")
    p.add_argument("--embedding-dim", type=int, default=16)
    p.add_argument("--families", nargs="+", help="presets (default: the five main families)")
    p.set_defaults(func=cmd_budget)


def cmd_budget(args: argparse.Namespace) -> int:
    import dataclasses

    from mldcn.models import create_model, get_family, get_preset, model_cost
    from mldcn.models.budget import BudgetError, match_budget
    from mldcn.studies.scale import FAMILIES
    from mldcn.studies.table import format_table

    features = _data_features(args.data)
    rows = []
    for name in args.families or FAMILIES:
        base = get_preset(name).replace(embedding_dim=args.embedding_dim)
        try:
            config = match_budget(base, features, args.flops)
        except BudgetError as error:
            rows.append({"model": name, "config": f"unreachable: {error}"})
            continue
        cost = model_cost(create_model(config, features))
        family = get_family(config.family)
        changed = {
            k: v for k, v in dataclasses.asdict(config.interaction).items() if v != getattr(base.interaction, k)
        }
        rows.append(
            {
                "model": name,
                "config": ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in changed.items())
                or f"{family.width}={getattr(config.interaction, family.width)}",
                "interaction": cost.interaction.total,
                "error": f"{cost.interaction.total / args.flops - 1:+.2%}",
                "total": cost.total.total,
                "dense": cost.dense_params,
            }
        )
    print(f"interaction budget {args.flops:,.0f} FLOPs/example, {features.num_fields} fields, D={args.embedding_dim}")
    columns = [
        ("model", "model"),
        ("config", "resized to"),
        ("interaction", "interaction FLOPs"),
        ("error", "vs budget"),
        ("total", "total FLOPs"),
        ("dense", "dense params"),
    ]
    print(format_table(rows, columns))
    return 0


def _study_config(args: argparse.Namespace) -> dict:
    data = load_yaml(args.config) if args.config else {}
    if args.data:
        data["data"] = {"source": "prepared", "path": args.data}
    return apply_overrides(data, args.set)


def _add_study(sub: argparse._SubParsersAction, name: str, help: str, description: str, what: str, func) -> None:
    p = sub.add_parser(name, help=help, description=description)
    p.add_argument("--config", help=f"{what} config YAML")
    p.add_argument("--data", help="a prepared data directory (default: synthetic)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--out", required=True, help="output folder (rerun to resume)")
    p.set_defaults(func=func)


def cmd_scale(args: argparse.Namespace) -> int:
    from mldcn.studies.scale import run_scale, scale_config_from_dict

    run_scale(scale_config_from_dict(_study_config(args)), args.out)
    print((Path(args.out) / "summary.md").read_text())
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from mldcn.studies.ablate import ablate_config_from_dict, run_ablation

    run_ablation(ablate_config_from_dict(_study_config(args)), args.out)
    return 0


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="write an industrial-shape synthetic click log",
        description="Generate the industrial-shape click log (user / ad / context / cross fields, long-tail ids, "
        "multi-valued fields, click and good-click labels from a teacher shaped like no model family) straight "
        "into a prepared directory that `mldcn train --data OUT` reads. Prints rows/s, the size and the ceiling "
        "AUC (of the true probabilities) of every split. See docs/industrial.md.",
    )
    p.add_argument("out", metavar="OUT", help="output directory (an earlier log there is replaced)")
    p.add_argument("--train-rows", type=int, help="training rows (default 1,000,000)")
    p.add_argument("--valid-rows", type=int, help="validation rows (default 100,000)")
    p.add_argument("--test-rows", type=int, help="test rows (default 100,000)")
    p.add_argument("--seed", type=int, help="seed of the log: its teacher and its rows")
    p.add_argument("--largest-vocab", type=int, help="user ids, the largest field (default 1,000,000; up to 10^7 and more)")
    p.add_argument("--sequence-length", type=int, help="most items of a multi-valued field (default 10)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any generator setting, e.g. --set base_ctr=0.05 --set teacher_hidden=[64,32] (repeatable)",
    )
    p.add_argument("--workers", type=int, help="threads making chunks (default: one per core, at most 4)")
    p.set_defaults(func=cmd_synth)


def cmd_synth(args: argparse.Namespace) -> int:
    from mldcn.config import from_dict
    from mldcn.data.industrial import IndustrialConfig, write_industrial

    flags = {
        "train_rows": args.train_rows,
        "valid_rows": args.valid_rows,
        "test_rows": args.test_rows,
        "seed": args.seed,
        "largest_vocab": args.largest_vocab,
        "sequence_length": args.sequence_length,
    }
    data = apply_overrides({}, args.set)
    data.update({key: value for key, value in flags.items() if value is not None})
    config = from_dict(IndustrialConfig, data, "mldcn synth")
    report = write_industrial(config, args.out, progress=print, workers=args.workers)
    rows = sum(report["rows"].values())
    print(
        f"{rows:,} rows in {report['seconds']:.2f} s ({report['rows_per_second']:,.0f} rows/s) -> {args.out} "
        f"({report['bytes'] / 2**20:,.1f} MiB)"
    )
    for split, tasks in report["ceiling"].items():
        parts = [
            f"{task} ceiling AUC {value['auc']:.4f} (positive {report['positive_rate'][split][task]:.2%})"
            for task, value in tasks.items()
        ]
        print(f"  {split}: {'; '.join(parts)}")
    print(f"train on it: mldcn train --data {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mldcn",
        description="ML-DCN and its rivals for CTR prediction, compared at matched FLOPs.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_demo(sub)
    _add_models(sub)
    _add_budget(sub)
    _add_study(
        sub,
        "scale",
        "matched-FLOPs sweep: families x budgets x seeds",
        "Train every family at every FLOPs budget with several seeds (resumable); write the results, "
        "a summary with significance tests and an AUC-vs-FLOPs plot.",
        "scale (budgets, families, seeds, train, grid, data)",
        cmd_scale,
    )
    _add_study(
        sub,
        "ablate",
        "ML-DCN's options at one FLOPs budget",
        "Train each ML-DCN variant (mask kind, source, site, activation, sharing, LayerNorm, width) "
        "at one FLOPs budget under the same seeds and compare them.",
        "ablation",
        cmd_ablate,
    )
    _add_prepare(sub)
    _add_synth(sub)
    _add_train(sub)
    add_serve_commands(sub)  # predict, export, serve
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ValueError, OSError) as error:
        print(f"mldcn {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mldcn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
