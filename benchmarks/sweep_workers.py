"""Runs an hour of a one-pass sweep: one `mldcn scale` process using every core against N one-thread workers.

    .venv/bin/python benchmarks/sweep_workers.py --out .bench/sweep_workers

The sweep is a slice of ``configs/scale/industrial_onepass.yaml``: the same log,
head and one-pass recipe, with ``--families`` at ``--budgets``, ``--seeds`` seeds
and ``--examples`` examples a run. It is run twice from scratch, in turns:

* **one process**: ``mldcn scale --set train.threads=<cores>``, the runs one after
  another, each using every core;
* **N workers**: the same command started N times at once with
  ``--set train.threads=1``, sharing the output folder (a worker claims a run, the
  others skip it; ``mldcn.studies.runner``).

Each figure is wall time from the start to the last process's exit, so it counts
everything a user waits for: each process generates the log for itself, and the
workers' duplicate generation is part of their cost. The gain is the ratio of
runs an hour. Both sweeps train the same runs on the same seeds; their test AUCs
differ only by the float rounding of different thread counts, and the script
prints the largest difference so that a gain never comes from doing other work.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
MLDCN = str(Path(sys.executable).parent / "mldcn")


def sweep_config(args) -> dict:
    with open(ROOT / "configs" / "scale" / "industrial_onepass.yaml") as f:
        config = yaml.safe_load(f)
    batches = args.examples // config["train"]["batch_size"]
    config.update(budgets=args.budgets, families=args.families, seeds=list(range(args.seeds)), latency_batches=[])
    config["train"].update(examples=batches * config["train"]["batch_size"], curve_points=4)
    config["data"]["industrial"].update(train_rows=config["train"]["examples"], valid_rows=20_000, test_rows=50_000)
    return config


def timed_sweep(config_path: Path, out: Path, processes: int, threads: int) -> float:
    if out.exists():
        shutil.rmtree(out)
    command = [MLDCN, "scale", "--config", str(config_path), "--set", f"train.threads={threads}", "--out", str(out)]
    start = time.perf_counter()
    workers = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(processes)]
    for worker in workers:
        _, err = worker.communicate()
        if worker.returncode != 0:
            sys.exit(f"mldcn scale exited with {worker.returncode}:\n{err[-2000:]}")
    return time.perf_counter() - start


def test_aucs(out: Path) -> dict[str, float]:
    with open(out / "results.jsonl") as f:
        return {r["key"]: r["test_auc"] for r in map(json.loads, f)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", default=["mldcn", "dcnv2_lowrank"])
    parser.add_argument("--budgets", type=float, nargs="+", default=[25_000, 400_000])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--examples", type=int, default=262_144, help="examples a run (rounded down to whole batches)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--rounds", type=int, default=2, help="times each way is run, in turns")
    parser.add_argument("--out", type=Path, default=ROOT / ".bench" / "sweep_workers")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    config = sweep_config(args)
    config_path = args.out / "sweep.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    runs = len(args.families) * len(args.budgets) * args.seeds
    cores = os.cpu_count() or 2
    print(f"{runs} runs of {config['train']['examples']:,} examples; {cores} cores; {args.workers} workers of 1 thread")
    seconds = {"one process": [], "workers": []}
    for round_ in range(args.rounds):
        seconds["one process"].append(timed_sweep(config_path, args.out / "one", 1, cores))
        seconds["workers"].append(timed_sweep(config_path, args.out / "workers", args.workers, 1))
        print(f"round {round_ + 1}: one process {seconds['one process'][-1]:.0f} s, {args.workers} workers {seconds['workers'][-1]:.0f} s",
              flush=True)  # fmt: skip
    one, workers = test_aucs(args.out / "one"), test_aucs(args.out / "workers")
    if one.keys() != workers.keys():
        sys.exit(f"the two sweeps ran different runs: {sorted(one.keys() ^ workers.keys())}")
    best = {way: min(values) for way, values in seconds.items()}
    rate = {way: 3600 * runs / value for way, value in best.items()}
    print(f"one process: {rate['one process']:.0f} runs/h (best of {args.rounds}: {best['one process']:.0f} s)")
    print(f"{args.workers} workers:   {rate['workers']:.0f} runs/h (best of {args.rounds}: {best['workers']:.0f} s)")
    print(f"gain: {rate['workers'] / rate['one process']:.2f}x runs an hour")
    print(f"largest |test AUC difference| between the two ways: {max(abs(one[k] - workers[k]) for k in one):.2e}")


if __name__ == "__main__":
    main()
