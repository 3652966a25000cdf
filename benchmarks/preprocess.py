"""Preprocessing throughput and peak memory on synthetic Criteo-format TSVs of growing size.

    .venv/bin/python benchmarks/preprocess.py --rows 1000000 10000000

For each size, a raw Criteo-format file (label, I1..I13, C1..C26; tab-separated,
no header, 5% missing values) is written by the synthetic generator into
``--workdir`` (reused if present; never committed), then ``mldcn prepare
--schema criteo`` runs in a fresh process with a seeded random 80/10/10 split.
The child reports its own peak resident memory (``ru_maxrss``) and the memory it
held right after importing mldcn, so the table separates the preprocessing's
own memory from the interpreter's. Flat peak memory from 1M to 10M rows shows
the pipeline streams: what remains is Arrow's CSV read-ahead (a fixed multiple
of the block size) and the vocabularies (which grow with the number of distinct
values, not of rows).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from mldcn.studies.table import format_table

CHILD = r"""
import json, resource, sys
from mldcn.data.prepare import SplitConfig, prepare
from mldcn.data.schema import load_schema
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
report = prepare(load_schema("criteo"), sys.argv[2], input=sys.argv[1], split=SplitConfig(kind="random"), force=True)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"report": report, "baseline_kib": baseline, "peak_kib": peak}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--workdir", default="/tmp/mldcn-bench")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.rows:
        raw = workdir / f"criteo_synthetic_{n}.tsv"
        if not raw.exists():
            from mldcn.data.synthetic import write_criteo_tsv

            start = time.perf_counter()
            write_criteo_tsv(str(raw) + ".part", n)
            os.replace(str(raw) + ".part", raw)
            print(f"wrote {raw} ({raw.stat().st_size / 2**20:,.0f} MiB) in {time.perf_counter() - start:.0f} s", flush=True)
        out = workdir / f"prepared_{n}"
        result = subprocess.run([sys.executable, "-c", CHILD, str(raw), str(out)], capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(result.stderr)
        child = json.loads(result.stdout.strip().splitlines()[-1])
        report = child["report"]
        feature_map = json.loads((out / "feature_map.json").read_text())
        rows.append(
            {
                "rows": n,
                "mib": raw.stat().st_size / 2**20,
                "seconds": report["seconds"],
                "rows_per_second": report["rows_per_second"],
                "mib_per_second": raw.stat().st_size / 2**20 / report["seconds"],
                "baseline_mib": child["baseline_kib"] / 1024,
                "peak_mib": child["peak_kib"] / 1024,
                "own_mib": (child["peak_kib"] - child["baseline_kib"]) / 1024,
                "written": report["rows_written"],
                "vocabulary": sum(v["values"] for v in feature_map["vocabularies"].values()),
            }
        )
        print(f"{n:,} rows: {report['rows_per_second']:,.0f} rows/s, peak {child['peak_kib'] / 1024:,.0f} MiB", flush=True)
    columns = [
        ("rows", "rows"),
        ("mib", "file MiB"),
        ("seconds", "seconds (fit + encode)"),
        ("rows_per_second", "rows/s"),
        ("mib_per_second", "MiB/s"),
        ("baseline_mib", "RSS after import, MiB"),
        ("peak_mib", "peak RSS, MiB"),
        ("own_mib", "peak - import, MiB"),
        ("written", "rows written"),
        ("vocabulary", "vocabulary entries"),
    ]
    print(format_table(rows, columns, markdown=args.markdown))


if __name__ == "__main__":
    main()
