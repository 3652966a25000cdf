"""How much of a one-pass training step is reading its rows: the bound on sharing one data pass among several models.

    .venv/bin/python benchmarks/read_share.py --families dcnv2_lowrank mldcn --budgets 25000 400000

On the industrial-shape log of ``configs/scale/industrial_onepass.yaml`` (its
schema, head, batch and sparse-Adam tables; ``--rows`` training rows), it times,
each the best of ``--repeats``:

* **read**: iterating the split's batches of 2,048 in order, as one-pass
  training does (``Split.batches``), with nothing else;
* **train**: the same pass as ``fit`` trains it in one-pass mode
  (``train.examples`` = all the rows; its training seconds, without the one
  validation scoring), for each family and budget, one thread.

If K models shared one pass, each would save at most the read time, so a sweep
would gain at most ``train / (train − read·(K−1)/K)`` runs an hour.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from mldcn.config import load_yaml
from mldcn.data.industrial import make_industrial
from mldcn.models import create_model, get_preset
from mldcn.models.budget import match_budget
from mldcn.studies.scale import scale_config_from_dict
from mldcn.train.loop import fit

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", default=["dcnv2_lowrank", "mldcn"])
    parser.add_argument("--budgets", type=float, nargs="+", default=[25_000, 400_000])
    parser.add_argument("--rows", type=int, default=65_536)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sweep = scale_config_from_dict(load_yaml(ROOT / "configs" / "scale" / "industrial_onepass.yaml"))
    batch_size = sweep.train.batch_size
    data = make_industrial(dataclasses.replace(sweep.data.industrial, train_rows=args.rows, valid_rows=1_000, test_rows=1_000))
    train = data.train
    # the sweep's recipe over every whole batch of the rows, the validation split scored once
    train_config = dataclasses.replace(sweep.train, examples=len(train) // batch_size * batch_size, curve_points=1, threads=1)

    def read() -> None:
        for _ in train.batches(batch_size):
            pass

    def best(run) -> float:
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return min(times)

    print(f"{args.rows:,} rows, batches of {batch_size:,}, 1 thread, best of {args.repeats}")
    print("family          budget  read ms  train s  read share")
    for family in args.families:
        for budget in args.budgets:
            config = match_budget(get_preset(family).replace(embedding_dim=sweep.embedding_dim, head=sweep.head), data.features, budget)

            def one_pass() -> float:
                torch.manual_seed(0)
                return fit(create_model(config, data.features), train, data.valid, train_config).train_seconds

            one_pass()  # warm-up
            seconds_read = best(read)
            seconds_train = min(one_pass() for _ in range(args.repeats))
            print(f"{family:14s} {budget:8,.0f}  {1000 * seconds_read:7.2f}  {seconds_train:7.2f}  {seconds_read / seconds_train:9.3%}", flush=True)


if __name__ == "__main__":
    main()
