"""Per-task comparison of multi-task sweeps with single-task sweeps (``mldcn scale`` folders).

Each folder is a finished ``mldcn scale`` run of one family at one budget; the runs of
its chosen setting (``summary.json``) are read from ``results.jsonl``. For every task,
a row per structure: interaction FLOPs, test AUC and logloss (mean ± std over the
seeds), and, against the single-task sweep of that task, the paired t-test over the
same seeds. Markdown on stdout.

    python benchmarks/multitask_report.py \\
        --multi runs/multitask/adult_mmoe runs/multitask/adult_shared_bottom \\
        --single income=runs/multitask/adult_income never_married=runs/multitask/adult_never_married
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from mldcn.studies.stats import paired_t


def chosen_runs(folder: Path) -> tuple[dict, list[dict]]:
    """The sweep's summary row and its runs at the chosen setting, by seed."""
    summary = json.loads((folder / "summary.json").read_text())
    (row,) = summary["rows"]
    records = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines() if line.strip()]
    runs = [r for r in records if r["lr"] == row["lr"] and r["embedding_l2"] == row["embedding_l2"]]
    return row, sorted(runs, key=lambda r: r["seed"])


def structure(folder: Path) -> str:
    config = (folder / "scale.yaml").read_text()
    for kind in ("mmoe", "shared_bottom", "ple"):
        if f"kind: {kind}" in config:
            return kind
    return "single task"


def pm(values: list[float]) -> str:
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--multi", nargs="+", type=Path, required=True, help="multi-task sweep folders")
    parser.add_argument("--single", nargs="+", required=True, metavar="TASK=FOLDER", help="single-task sweep of each task")
    args = parser.parse_args()
    single = {task: Path(folder) for task, folder in (item.split("=", 1) for item in args.single)}
    for task, folder in single.items():
        row, reference = chosen_runs(folder)
        ref_auc = [r["test"][task]["auc"] for r in reference]
        print(f"\n**{task}** (paired t against the single-task model, same seeds {[r['seed'] for r in reference]})\n")
        print("| model | interaction FLOPs | test AUC | test logloss | AUC − single task | paired t p |")
        print("|---|---:|---|---|---:|---:|")
        print(f"| single task | {row['interaction_flops']:,} | {pm(ref_auc)} | {pm([r['test'][task]['logloss'] for r in reference])} | | |")
        for multi in args.multi:
            multi_row, runs = chosen_runs(multi)
            aucs = [r["test"][task]["auc"] for r in runs]
            test = paired_t(aucs, ref_auc)
            print(
                f"| {structure(multi)} | {multi_row['interaction_flops']:,} | {pm(aucs)} | "
                f"{pm([r['test'][task]['logloss'] for r in runs])} | {test.mean_difference:+.4f} | {test.p_value:.3f} |"
            )


if __name__ == "__main__":
    main()
