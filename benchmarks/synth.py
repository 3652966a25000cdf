"""Throughput of the industrial-shape log generator (``write_industrial``, ``mldcn synth``).

    .venv/bin/python benchmarks/synth.py --rows 5000000 --workers 1 2

For each worker count, a fresh process writes a log of ``--rows`` training rows
(plus 10% each of validation and test rows) with the default 48 fields to a
folder of its own under ``--workdir`` (outside the repository; deleted after
each run) and reports: rows/s (all splits, wall clock, from the start to the
finished directory, the teacher's calibration included), the CPU seconds used
per million rows (all threads, inside ``write_industrial``), the peak resident
memory, the size written and the ceiling AUCs of the test split. The machine's
load average at the start is printed too: on a shared machine the wall-clock
figure is what was left to this process, the CPU figure what the generator costs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from mldcn.studies.table import format_table

CHILD = r"""
import json, resource, sys
from mldcn.data.industrial import IndustrialConfig, write_industrial

def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

rows, workers, vocab, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
config = IndustrialConfig(train_rows=rows, valid_rows=rows // 10, test_rows=rows // 10, largest_vocab=vocab)
before = cpu()
report = write_industrial(config, out, workers=workers)
used = cpu() - before
print(json.dumps({"report": report, "cpu_s": used, "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=5_000_000, help="training rows (valid and test: 10%% each)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--largest-vocab", type=int, default=1_000_000)
    parser.add_argument("--workdir", default="/work/bench_tmp")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    workdir = Path(args.workdir) / f"synth-{os.getpid()}"  # our own folder: others may use --workdir too
    workdir.mkdir(parents=True)
    table = []
    try:
        for workers in args.workers:
            out = workdir / f"industrial_{args.rows}_{workers}"
            load = os.getloadavg()[0]
            command = [sys.executable, "-c", CHILD, str(args.rows), str(workers), str(args.largest_vocab), str(out)]
            result = subprocess.run(command, capture_output=True, text=True)
            shutil.rmtree(out, ignore_errors=True)
            if result.returncode != 0:
                sys.exit(f"the generator failed:\n{result.stderr}")
            child = json.loads(result.stdout.strip().splitlines()[-1])
            report = child["report"]
            rows = sum(report["rows"].values())
            ceiling = report["ceiling"]["test"]
            table.append(
                {
                    "rows": f"{rows:,}",
                    "workers": workers,
                    "load avg": f"{load:.1f}",
                    "seconds": f"{report['seconds']:.1f}",
                    "rows/s": f"{report['rows_per_second']:,.0f}",
                    "CPU s / 1M rows": f"{child['cpu_s'] / rows * 1e6:.2f}",
                    "peak RSS MiB": f"{child['peak_kib'] / 1024:,.0f}",
                    "written MiB": f"{report['bytes'] / 2**20:,.0f}",
                    "test ceiling click / good_click": f"{ceiling['click']['auc']:.4f} / {ceiling['good_click']['auc']:.4f}",
                }
            )
            print(json.dumps(table[-1]), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(format_table(table, [(key, key) for key in table[0]], markdown=args.markdown))


if __name__ == "__main__":
    main()
