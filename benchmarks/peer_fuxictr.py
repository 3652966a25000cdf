"""Side-by-side: mldcn vs FuxiCTR 2.3.10 on DCNv2 with the BARS Frappe_x1 settings.

    .venv/bin/python benchmarks/peer_fuxictr.py --markdown

Sets up FuxiCTR 2.3.10 from PyPI in its own virtual environment (``--venv``;
created once, never a dependency of mldcn; without a GPU torch is pinned to the
local 2.13.0 CPU wheel, and polars < 2 because FuxiCTR 2.3.10 calls
``scan_csv(dtypes=...)``, removed in polars 2), then runs, one after the other,
in fresh processes with the same thread count:

* ``peers/fuxictr_dcnv2.py``: FuxiCTR's preprocessing, DCNv2 (4 full-rank cross
  layers ∥ DNN 400-400-400, BN, dropout 0.4, embedding 10), Adam 1e-3, batch
  4096, embedding regulariser 0.05, gradient clipping 10, early stopping on
  validation AUC with patience 2 and lr × 0.1 on plateau;
* ``peers/mldcn_dcnv2.py``: the same with mldcn, in each ``--precision``.

Writes a table of each figure and its mldcn / FuxiCTR ratio. FuxiCTR shuffles
with Ray, which the seed does not control, so its runs are not repeatable.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from mldcn.studies.table import format_table

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "frappe_x1"


def ensure_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([python, "-c", "import fuxictr"], capture_output=True).returncode == 0:
        return python
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    if shutil.which("nvidia-smi") is None:
        subprocess.run(pip + ["torch==2.13.0"], check=True)
    subprocess.run(pip + ["fuxictr==2.3.10", "polars<2"], check=True)
    return python


def run(python: str | Path, script: str, *args: str) -> dict:
    with tempfile.TemporaryDirectory() as workdir:
        result = subprocess.run(
            [str(python), str(HERE / "peers" / script), "--workdir", workdir, *args],
            capture_output=True,
            text=True,
        )
    if result.returncode != 0:
        raise SystemExit(f"{script} failed:\n{result.stderr[-4000:]}")
    line = [x for x in result.stdout.splitlines() if x.startswith("{")][-1]
    return json.loads(line)


FIGURES = [
    ("fit_seconds", "fit wall time to the early-stopping point, s", "lower"),
    ("epochs", "epochs run", "lower"),
    ("test_auc", "test AUC", "higher"),
    ("test_logloss", "test logloss", "lower"),
    ("train_examples_per_second", "train ex/s (fit, evaluation included)", "higher"),
    ("step_examples_per_second", "train ex/s (optimiser steps only)", "higher"),
    ("eval_examples_per_second", "evaluation ex/s", "higher"),
    ("predict_examples_per_second", "predict ex/s", "higher"),
    ("forward_examples_per_second", "bare forward ex/s (batch 4096)", "higher"),
    ("prepare_rows_per_second", "preprocessing rows/s", "higher"),
    ("peak_rss_mib", "peak memory, MiB", "lower"),
]


def mean(runs: list[dict], key: str) -> float:
    return statistics.fmean(r[key] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--venv", default=str(HERE.parent / ".bench" / "fuxictr-venv"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[2021])
    parser.add_argument("--precision", nargs="+", default=["bf16", "fp32"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    python = ensure_venv(Path(args.venv))
    common = ["--data", args.data, "--threads", str(args.threads)]
    results: dict[str, list[dict]] = {"fuxictr": []}
    for seed in args.seeds:
        print(f"FuxiCTR, seed {seed} ...", flush=True)
        results["fuxictr"].append(run(python, "fuxictr_dcnv2.py", *common, "--seed", str(seed)))
        for precision in args.precision:
            print(f"mldcn {precision}, seed {seed} ...", flush=True)
            results.setdefault(precision, []).append(
                run(sys.executable, "mldcn_dcnv2.py", *common, "--seed", str(seed), "--precision", precision)
            )
    for runs in results.values():
        for r in runs:
            r["prepare_rows_per_second"] = r["prepare_rows"] / r["prepare_seconds"]
    rows = []
    for key, label, _ in FIGURES:
        row = {"figure": label, "fuxictr": mean(results["fuxictr"], key)}
        for precision in args.precision:
            row[precision] = mean(results[precision], key)
            row[f"{precision}_ratio"] = row[precision] / row["fuxictr"]
        rows.append(row)
    columns = [("figure", "figure"), ("fuxictr", "FuxiCTR 2.3.10")]
    for precision in args.precision:
        columns += [(precision, f"mldcn {precision}"), (f"{precision}_ratio", f"mldcn {precision} / FuxiCTR")]
    print(f"\nDCNv2, BARS Frappe_x1 settings, seeds {args.seeds} (means), {args.threads} threads")
    print(format_table(rows, columns, markdown=args.markdown))
    print("\nper run (test AUC, fit s, epochs):")
    for name, runs in results.items():
        print(f"  {name}: " + "; ".join(f"seed {r['seed']}: {r['test_auc']:.5f}, {r['fit_seconds']:.0f} s, {r['epochs']}" for r in runs))


if __name__ == "__main__":
    main()
