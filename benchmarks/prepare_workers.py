"""Parallel preparation: rows/s with 1 and N workers, peak memory per worker, identical output.

    .venv/bin/python benchmarks/prepare_workers.py --rows 1000000 10000000 --workers 1 2

For each size a raw Criteo-format TSV (label, I1..I13, C1..C26; no header) is made
from the real rows of ``../shared/data/criteo_sample`` (200 rows), repeated with
perturbations: each row is a random sample row whose integers move by -1/0/+1 and
whose categorical values are, with probability 0.3, replaced by one of a fixed
pool of hex ids per column (so the vocabularies are realistic in shape and stop
growing well before 1M rows: memory then shows what the pipeline holds, not the
vocabulary). The file goes to ``--workdir`` (outside the repository; reused if
present), never into the repository: the sample's rows are under Criteo's terms.

Then ``mldcn prepare --schema criteo`` with a seeded random 80/10/10 split runs in
a fresh process for each worker count. The child reports its own peak RSS and
that of its largest worker process (``RUSAGE_CHILDREN``: the workers are its only
children) and the CPU seconds of both (the work done: on a busy machine the speed-up
in wall time says little, the CPU seconds still compare). Results go to stdout as
JSON (one object) and, with ``--markdown``, a table. The checks: speed-up of N workers over 1 (target >= 1.8 with 2 on 2 free
cores), peak RSS per worker flat in the file size (target: 10M / 1M <= 1.2), and
every array byte-identical across worker counts (sha256 of every ``.bin``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "criteo_sample" / "criteo_sample.txt"
CHUNK_ROWS = 500_000
POOL_SIZES = [40, 500, 20_000, 12_000, 200, 15, 8_000, 500, 3, 6_000, 10_000, 20_000, 3_000, 25, 8_000,
              20_000, 10, 4_000, 1_500, 4, 20_000, 15, 15, 15_000, 80, 12_000]  # fmt: skip  # per C column

CHILD = r"""
import json, resource, sys
from mldcn.data.prepare import SplitConfig, prepare
from mldcn.data.schema import load_schema
def cpu():
    return sum(u.ru_utime + u.ru_stime for u in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))
baseline, cpu_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, cpu()
report = prepare(load_schema("criteo"), sys.argv[2], input=sys.argv[1], split=SplitConfig(kind="random"),
                 force=True, workers=int(sys.argv[3]))
print(json.dumps({"report": report, "baseline_kib": baseline, "cpu_seconds": cpu() - cpu_before,
                  "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "worker_peak_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def write_criteo_tsv(path: Path, rows: int, seed: int = 0) -> None:
    """``rows`` perturbed copies of the sample's rows as a raw Criteo TSV (written chunk by chunk)."""
    sample = pcsv.read_csv(SAMPLE)
    names = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
    rng = np.random.default_rng(seed)
    pools = [pa.array([f"{zlib.crc32(f'{c}:{i}'.encode()):08x}" for i in range(size)]) for c, size in enumerate(POOL_SIZES)]
    integers = [pc.cast(pc.floor(pc.cast(sample[f"I{i}"], pa.float64())), pa.int64()) for i in range(1, 14)]
    options = pcsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    schema = pa.schema([("label", pa.int64())] + [(f"I{i}", pa.int64()) for i in range(1, 14)] + [(f"C{i}", pa.string()) for i in range(1, 27)])
    with pcsv.CSVWriter(str(path), schema, write_options=options) as writer:
        for start in range(0, rows, CHUNK_ROWS):
            n = min(CHUNK_ROWS, rows - start)
            pick = pa.array(rng.integers(0, sample.num_rows, n))
            columns = [sample["label"].take(pick)]
            for values in integers:
                base = values.take(pick)
                moved = pc.add(base, pa.array(rng.integers(-1, 2, n)))
                columns.append(pc.if_else(pc.less(base, 0), base, pc.max_element_wise(moved, 0)))  # keep -1 as -1
            for c in range(26):
                base = pc.cast(sample[f"C{c + 1}"].take(pick), pa.string())
                other = pools[c].take(pa.array(rng.integers(0, POOL_SIZES[c], n)))
                replace = pa.array((rng.random(n) < 0.3) & np.asarray(base.is_valid()))
                columns.append(pc.if_else(replace, other, base))
            writer.write_table(pa.table(dict(zip(names, columns))).cast(schema))


def digest(out: Path) -> str:
    """sha256 over every array file of a prepared directory, in name order."""
    h = hashlib.sha256()
    for path in sorted(out.rglob("*.bin")):
        h.update(str(path.relative_to(out)).encode())
        with open(path, "rb") as f:
            while block := f.read(16 << 20):
                h.update(block)
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workdir", default="/work/bench_tmp/prepare_workers")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    if not SAMPLE.exists():
        raise SystemExit(f"the Criteo sample is not at {SAMPLE}")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for n in args.rows:
        raw = workdir / f"criteo_from_sample_{n}.tsv"
        if not raw.exists():
            start = time.perf_counter()
            write_criteo_tsv(Path(str(raw) + ".part"), n)
            os.replace(str(raw) + ".part", raw)
            print(f"wrote {raw} ({raw.stat().st_size / 2**20:,.0f} MiB) in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        for workers in args.workers:
            out = workdir / f"prepared_{n}_w{workers}"
            child = subprocess.run([sys.executable, "-c", CHILD, str(raw), str(out), str(workers)], capture_output=True, text=True)
            if child.returncode != 0:
                raise SystemExit(child.stderr)
            measured = json.loads(child.stdout.strip().splitlines()[-1])
            report = measured["report"]
            results.append(
                {
                    "rows": n,
                    "workers": workers,
                    "file_mib": round(raw.stat().st_size / 2**20, 1),
                    "seconds": round(report["seconds"], 2),
                    "fit_seconds": round(report["fit_seconds"], 2),
                    "rows_per_second": round(report["rows_per_second"]),
                    # CPU of the main process and its workers: the work done, whatever else runs on the machine
                    "cpu_seconds": round(measured["cpu_seconds"], 2),
                    "main_peak_mib": round(measured["peak_kib"] / 1024),
                    "main_after_import_mib": round(measured["baseline_kib"] / 1024),
                    # with one worker the main process does the work: its peak is the worker's
                    "worker_peak_mib": round((measured["worker_peak_kib"] if workers > 1 else measured["peak_kib"]) / 1024),
                    "units": sum(len(e.get("parts", [None])) for e in report["inputs"]),
                    "rows_written": report["rows_written"],
                    "sha256": digest(out),
                }
            )
            print(f"{n:,} rows, {workers} workers: {report['rows_per_second']:,.0f} rows/s", file=sys.stderr, flush=True)
    summary = {"results": results, "speedup": {}, "worker_peak_growth": {}, "identical": {}}
    for n in args.rows:
        by_workers = {r["workers"]: r for r in results if r["rows"] == n}
        base = by_workers[min(by_workers)]
        summary["speedup"][n] = {w: round(r["rows_per_second"] / base["rows_per_second"], 2) for w, r in by_workers.items()}
        summary["identical"][n] = len({r["sha256"] for r in by_workers.values()}) == 1
    if len(args.rows) > 1:
        small, large = min(args.rows), max(args.rows)
        for w in args.workers:
            peaks = {r["rows"]: r["worker_peak_mib"] for r in results if r["workers"] == w}
            summary["worker_peak_growth"][w] = round(peaks[large] / peaks[small], 3)
    print(json.dumps(summary, indent=2))
    if args.markdown:
        keys = ["rows", "workers", "file_mib", "seconds", "cpu_seconds", "rows_per_second", "worker_peak_mib", "main_peak_mib", "units"]
        print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
        for r in results:
            print("| " + " | ".join(f"{r[k]:,}" if isinstance(r[k], int) else str(r[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
