"""Reproduce BARS Frappe_x1 figures: each model's BARS run config over several seeds, against the leaderboard.

    .venv/bin/python benchmarks/bars_frappe.py --models deepfm xdeepfm autoint_plus dlrm finalmlp gdcn dcnv2 \\
        --seeds 2021 1 2 --out results/bars --markdown

For each model ``M`` and seed ``S`` it runs

    mldcn train --config configs/frappe/M_bars.yaml --set train.seed=S --set train.progress=false --out OUT/M-S

in a fresh process (the seed also seeds the initial weights), unless ``OUT/M-S/result.json``
exists already: the script resumes where it stopped. Then it prints, per model, the test
AUC and logloss (mean ± sd over the seeds, and every seed), the BARS leaderboard's
figure (``../shared/data/bars_leaderboard/frappe_x1.csv``) and the difference. Runs
whose result is missing are listed as such, not left out silently.

Needs ``data/frappe_x1`` prepared (the command is in configs/frappe/dcnv2_bars.yaml).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LEADERBOARD = ROOT.parent / "shared" / "data" / "bars_leaderboard" / "frappe_x1.csv"
#: the leaderboard's name for each config, where it has one (GDCN has none)
BARS_NAMES = {
    "dcnv2": "DCN-V2",
    "deepfm": "DeepFM",
    "xdeepfm": "xDeepFM",
    "autoint_plus": "AutoInt+",
    "dlrm": "DLRM",
    "finalmlp": "FinalMLP",
    "masknet": "MaskNet",
}


def leaderboard() -> dict[str, tuple[float, float]]:
    with open(LEADERBOARD, newline="") as f:
        return {row["Model"]: (float(row["AUC"]), float(row["Logloss"])) for row in csv.DictReader(f)}


def run_one(model: str, seed: int, out: Path, mldcn: str, threads: int | None) -> None:
    target = out / f"{model}-{seed}"
    if (target / "result.json").exists():
        return
    config = ROOT / "configs" / "frappe" / f"{model}_bars.yaml"
    command = [mldcn, "train", "--config", str(config), "--set", f"train.seed={seed}", "--set", "train.progress=false",
               "--out", str(target)]  # fmt: skip
    if threads:
        command += ["--set", f"train.threads={threads}"]
    if (target / "last.pt").exists():  # an interrupted run: continue it
        command.append("--resume")
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        print(f"{model} seed {seed}: exit {completed.returncode}\n{completed.stderr[-2000:]}", file=sys.stderr)
        return
    print(f"{model} seed {seed}: done in {time.perf_counter() - start:.0f} s", flush=True)


def summary(models: list[str], seeds: list[int], out: Path) -> list[dict]:
    board = leaderboard()
    rows = []
    for model in models:
        results = {}
        for seed in seeds:
            path = out / f"{model}-{seed}" / "result.json"
            if path.exists():
                results[seed] = json.loads(path.read_text())
        aucs = [r["test"]["click"]["auc"] for r in results.values()]
        loglosses = [r["test"]["click"]["logloss"] for r in results.values()]
        bars = board.get(BARS_NAMES.get(model, ""))
        row = {
            "model": model,
            "seeds": f"{len(aucs)}/{len(seeds)}",
            "auc": _mean_sd(aucs),
            "logloss": _mean_sd(loglosses),
            "bars_auc": f"{bars[0]:.4f}" if bars else "none",
            "delta": f"{statistics.mean(aucs) - bars[0]:+.4f}" if bars and aucs else "",
            "per_seed": ", ".join(f"{s}: {r['test']['click']['auc']:.5f} ({r['epochs']} ep)" for s, r in results.items()),
            "missing": [s for s in seeds if s not in results],
        }
        rows.append(row)
    return rows


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.4f} (one seed)"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", required=True, help="configs/frappe/<model>_bars.yaml names")
    parser.add_argument("--seeds", type=int, nargs="+", default=[2021, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("results/bars"), help="results/bars: the committed records (results/README.md)")
    parser.add_argument("--threads", type=int, help="torch threads a run (default: torch's); may change on resume")
    parser.add_argument("--report", action="store_true", help="train nothing: summarise the runs in --out")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    mldcn = str(Path(sys.executable).with_name("mldcn"))
    if not args.report:
        for seed in args.seeds:  # seed-major: every model gets its first seed before any its third
            for model in args.models:
                run_one(model, seed, args.out, mldcn, args.threads)
    rows = summary(args.models, args.seeds, args.out)
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |" if args.markdown else "  ".join(cells)

    header = ["model", "seeds", "test AUC (mean ± sd)", "test logloss", "BARS AUC", "mean − BARS", "per seed (epochs)"]
    print(line(header))
    if args.markdown:
        print(line(["---"] * len(header)))
    for row in rows:
        cells = [row["model"], row["seeds"], row["auc"], row["logloss"], row["bars_auc"], row["delta"], row["per_seed"]]
        print(line(cells))
        if row["missing"]:
            print(f"  missing seeds for {row['model']}: {row['missing']}")


if __name__ == "__main__":
    main()
