"""Streamed training on a log larger than the in-memory budget: peak memory and speed against in memory.

    .venv/bin/python benchmarks/stream.py --dir /work/bench_tmp/stream --rows 30000000 --ddp dcnv2_lowrank --markdown

Writes two industrial-shape logs with the same generator and seed (``mldcn synth``'s
:func:`~mldcn.data.industrial.write_industrial`, reused when already there): a big one
(``--rows`` training rows) and a small one (``--small-rows``). For each model it
trains one pass, each in a fresh process so that peak resident memory (``VmHWM``) is
that run's alone:

- the small log read whole into memory (``data.load: memory``): the baseline rate;
- the big log streamed from disk (``data.load: stream``): its rate and peak RSS. Its
  files are first evicted from the OS page cache (``posix_fadvise(DONTNEED)``), so
  the pass reads from the disk as it would for a log larger than memory (the
  machine's memory would otherwise cache a log of a few GB);
- with ``--ddp MODEL``, that model on the big log streamed on two processes (one
  thread each): each rank's peak RSS.

Training examples/s is the training pass alone (``fit``'s ``train_examples_per_second``,
validation excluded). The ratio of streamed to in-memory rate is measured in one run of
this script, on the same machine, so it holds on a busy one where absolute rates do not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

MODELS = ("dcnv2_lowrank", "mldcn")


def peak_rss() -> int:
    """This process's peak resident memory in bytes (``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(args: argparse.Namespace) -> None:
    """One training pass (run in a fresh process); prints a JSON line with its rate and peak RSS."""
    import torch  # noqa: PLC0415

    from mldcn.data.prepared import load_prepared  # noqa: PLC0415
    from mldcn.models import HeadConfig, create_model, get_preset  # noqa: PLC0415
    from mldcn.train import distributed  # noqa: PLC0415
    from mldcn.train.loop import TrainConfig, fit, seed_everything  # noqa: PLC0415

    ctx = distributed.init(torch.device("cpu"))
    data = load_prepared(args.data, args.load)
    config = get_preset(args.model).replace(embedding_dim=8, head=HeadConfig(hidden=(256, 128)))
    train = TrainConfig(
        epochs=1,
        batch_size=4096,
        embedding_optimizer="rowwise_adagrad",
        embedding_lr=0.05,
        progress=False,
        precision="fp32",
        threads=args.threads,
        seed=0,
    )
    seed_everything(0)
    model = create_model(config, data.features)
    result = fit(model, data.train, data.valid, train)
    record = {
        "model": args.model,
        "data": args.data,
        "load": data.info["load"],
        "rank": ctx.rank,
        "processes": ctx.world_size,
        "train_rows": len(data.train),
        "examples_per_second": result.train_examples_per_second,
        "valid_auc": result.best_valid[data.features.task_names[0]]["auc"],
        "peak_rss": peak_rss(),
    }
    print("RESULT " + json.dumps(record), flush=True)


def evict(path: Path) -> None:
    """Drop ``path``'s array files from the OS page cache (the next reads come from the disk)."""
    for file in path.rglob("*.bin"):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run_child(data: Path, model: str, load: str, threads: int, processes: int = 1) -> list[dict]:
    script = [str(Path(__file__).resolve()), "--child", "--data", str(data), "--model", model, "--load", load, "--threads", str(threads)]
    if processes == 1:
        command = [sys.executable, *script]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_addr", "127.0.0.1", "--master_port", "29517", *script]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    completed = subprocess.run(command, capture_output=True, text=True, env=env)
    if completed.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")
    return [json.loads(line[len("RESULT ") :]) for line in completed.stdout.splitlines() if line.startswith("RESULT ")]


def write_log(path: Path, rows: int, valid_rows: int, seed: int) -> dict:
    from mldcn.data.industrial import IndustrialConfig, write_industrial  # noqa: PLC0415

    if (path / "feature_map.json").exists():
        return {"reused": True}
    start = time.perf_counter()
    write_industrial(IndustrialConfig(train_rows=rows, valid_rows=valid_rows, test_rows=valid_rows, seed=seed), path)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rows_per_second": (rows + 2 * valid_rows) / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default="/work/bench_tmp/stream", help="where the logs are written (outside the repository)")
    parser.add_argument("--rows", type=int, default=30_000_000)
    parser.add_argument("--small-rows", type=int, default=1_000_000)
    parser.add_argument("--valid-rows", type=int, default=200_000)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ddp", metavar="MODEL", help="also train MODEL on two streamed processes on the big log")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--load", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    root = Path(args.dir)
    big, small = root / f"industrial_{args.rows}", root / f"industrial_{args.small_rows}"
    for path, rows in ((big, args.rows), (small, args.small_rows)):
        made = write_log(path, rows, args.valid_rows, seed=0)
        size = sum(f.stat().st_size for f in path.rglob("*.bin"))
        print(json.dumps({"log": str(path), "train_rows": rows, "prepared_bytes": size, **made}), flush=True)

    results = []
    for model in args.models:
        memory = run_child(small, model, "memory", args.threads)[0]
        evict(big)
        streamed = run_child(big, model, "stream", args.threads)[0]
        for record in (memory, streamed):
            print(json.dumps(record), flush=True)
        results.append({**streamed, "in_memory_rate": memory["examples_per_second"], "in_memory_rss": memory["peak_rss"]})
        if args.ddp == model:
            evict(big)
            for record in run_child(big, model, "stream", 1, processes=2):
                print(json.dumps(record), flush=True)
                results.append({**record, "in_memory_rate": float("nan"), "in_memory_rss": float("nan")})

    if args.markdown:
        print(f"| model | processes | train rows (streamed) | streamed ex/s | in-memory ex/s ({args.small_rows:,} rows) | ratio | peak RSS per process |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for r in results:
            ratio = r["examples_per_second"] / r["in_memory_rate"] if r["processes"] == 1 else float("nan")
            print(
                f"| {r['model']} | {r['processes']} (rank {r['rank']}) | {r['train_rows']:,} | {r['examples_per_second']:,.0f} "
                f"| {r['in_memory_rate']:,.0f} | {ratio:.2f} | {r['peak_rss'] / 2**30:.2f} GiB |"
            )


if __name__ == "__main__":
    main()
