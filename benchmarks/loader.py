"""Batch throughput of the loader on prepared data (it must never be the bottleneck).

    .venv/bin/python benchmarks/loader.py data/frappe_x1 [more prepared dirs]

Times a full shuffled pass and a full in-order pass over the training split at the
training batch size, read whole into memory (a seeded permutation, one gather per
column per batch; in order: views) and streamed from disk (the block shuffle of
mldcn.data.stream with its default block and buffer rows; in order: one read per batch).
"""

from __future__ import annotations

import argparse
import time

import torch

from mldcn.data.prepared import load_prepared
from mldcn.studies.table import format_table


def rate(split, batch_size: int, shuffle: bool) -> float:
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    rows = 0
    for batch in split.batches(batch_size, shuffle=shuffle, generator=generator):
        rows += len(batch)
    return rows / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("prepared", nargs="+")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    rows = []
    for path in args.prepared:
        for load in ("memory", "stream"):
            data = load_prepared(path, load)
            split, features = data.train, data.features
            rate(split, args.batch_size, True)  # warm the page cache
            rows.append(
                {
                    "data": path,
                    "rows": len(split),
                    "fields": sum(len(part) for part in (features.categorical, features.numeric, features.sequence)),
                    "storage": "in memory" if load == "memory" else "streamed",
                    "shuffled": rate(split, args.batch_size, True),
                    "in_order": rate(split, args.batch_size, False),
                }
            )
    columns = [
        ("data", "prepared data"),
        ("rows", "train rows"),
        ("fields", "fields"),
        ("storage", "storage"),
        ("shuffled", f"shuffled ex/s (batch {args.batch_size})"),
        ("in_order", "in-order ex/s"),
    ]
    print(format_table(rows, columns, markdown=args.markdown))


if __name__ == "__main__":
    main()
