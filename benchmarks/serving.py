"""Serving cost: HTTP load test and in-process forward latency, ML-DCN vs DCNv2 at matched FLOPs.

    .venv/bin/python benchmarks/serving.py --artifact runs/frappe-mldcn/model \\
        --rows ../shared/data/frappe_x1/test.csv --markdown

Three parts, all on this machine's loopback interface, each server a real
``mldcn serve`` process on a free port:

1. Parity: every row of ``--rows`` is posted to the server (both backends, 512
   records a request) and compared with ``mldcn predict``'s offline output.
2. Load test: ``--clients`` concurrent clients (threads, keep-alive connections)
   send a bounded number of requests of 1, 64 and 512 raw records each
   (``--batch-sizes``/``--requests``), after a warm-up; throughput and p50/p99
   latency per (model, backend, batch size). Any failed request (a non-200, a
   wrong number of probabilities, a transport error) fails the run: zero errors
   are allowed.
3. Forward latency without HTTP: µs per example of the model's forward pass at
   batch 1 and 512, eager PyTorch and ONNX Runtime.
4. Dynamic batching (``--parts batching``; the trained model only): 32
   concurrent clients (``--batching-clients``; asyncio connections with
   keep-alive, one process) each send one-record requests, a bounded number in
   all (``--batching-requests``), to three servers of the same model on this
   machine: without batching (``--batch-wait-ms 0``, one worker: every request
   its own forward pass), with batching (``--batch-wait-ms``), and with
   batching on 2 workers. The three take turns in alternating rounds.
   Throughput, p50/p99 latency, requests per forward pass (from the server's
   /metrics), throughput relative to no batching; every answer is compared
   with ``mldcn predict`` (max |Δp|), and any failed request fails the run.

    .venv/bin/python benchmarks/serving.py --artifact runs/frappe-mldcn \\
        --rows ../shared/data/frappe_x1/test.csv --parts batching --markdown

Models: the given artifact (ML-DCN, trained), and DCNv2 low-rank with its rank
solved to the artifact's interaction FLOPs (±3%, ``match_budget``) and the same
head and embedding size, saved as an artifact with the same preprocessing
(untrained weights: latency does not depend on their values). The figure to read
is the ratio ML-DCN / DCNv2 measured in the same run; absolute numbers move with
the machine and its load. ``--parts matched`` runs parts 1-3 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import torch

from mldcn.models import create_model, get_preset, model_cost
from mldcn.models.budget import match_budget
from mldcn.serve.artifact import load_artifact, save_artifact
from mldcn.serve.export import ProbabilityModel, export_onnx, onnx_session
from mldcn.serve.predict import TorchBackend, predict_file, read_probabilities
from mldcn.serve.server import MULTIPROCESS_ENV
from mldcn.studies.table import format_table
from mldcn.train.loop import seed_everything

BASELINE = "dcnv2_lowrank"


class Server:
    """A ``python -m mldcn serve`` process on a free loopback port."""

    def __init__(self, artifact: Path, backend: str, threads: int, concurrency: int, log: Path, *options: str) -> None:
        command = [
            sys.executable, "-m", "mldcn", "serve", str(artifact), "--backend", backend, "--port", "0",
            "--threads", str(threads), "--concurrency", str(concurrency), "--max-body-bytes", str(64 << 20), *options,
        ]  # fmt: skip
        self.log = open(log, "w")
        env = {k: v for k, v in os.environ.items() if k != MULTIPROCESS_ENV}  # each server its own metrics
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.process.stdout], daemon=True).start()
        deadline = time.monotonic() + 120
        self.url = None
        while self.url is None and time.monotonic() < deadline and self.process.poll() is None:
            try:
                match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", lines.get(timeout=0.5))
                self.url = match.group(1) if match else None
            except queue.Empty:
                pass
        while self.url is not None and time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not start: {Path(log).read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def read_records(path: Path, columns: list[str]) -> list[dict]:
    """The raw rows of a CSV as request records (strings, as in the file)."""
    table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(column_types={c: pa.string() for c in columns}, include_columns=columns))
    return table.to_pylist()


def check_parity(server: Server, records: list[dict], offline: np.ndarray) -> float:
    """Max |served − offline| over all records, posted 512 a request."""
    served = []
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for start in range(0, len(records), 512):
            response = client.post("/predict", json={"records": records[start : start + 512]})
            response.raise_for_status()
            body = response.json()
            served.extend([row[task] for task in body["tasks"]] for row in body["probabilities"])
    if len(served) != len(offline):
        raise RuntimeError(f"served {len(served)} probabilities for {len(offline)} rows")
    return float(np.abs(np.asarray(served) - offline).max())


def load_test(url: str, bodies: list[bytes], batch: int, requests: int, clients: int, warmup: int = 16) -> dict:
    """``requests`` POSTs of ``batch`` records from ``clients`` threads: latencies (s) and wall time (s).

    Raises if any request fails: zero errors are allowed.
    """
    errors: list[str] = []
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(requests))
    transport_options = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]

    def worker(_: int) -> None:
        transport = httpx.HTTPTransport(socket_options=transport_options)
        with httpx.Client(base_url=url, timeout=60, transport=transport, headers={"content-type": "application/json"}) as client:
            for i in range(max(1, warmup // clients)):
                client.post("/predict", content=bodies[i % len(bodies)]).raise_for_status()
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                start = time.perf_counter()
                try:
                    response = client.post("/predict", content=bodies[i % len(bodies)])
                    ok = response.status_code == 200 and len(response.json()["probabilities"]) == batch
                    problem = None if ok else f"HTTP {response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as error:
                    problem = f"{type(error).__name__}: {error}"
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    if problem:
                        errors.append(problem)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} of {requests} requests to {url} failed (zero allowed); first: {errors[0]}")
    return {"latencies": latencies, "wall": wall}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def forward_latency(models: dict, features, batch: int, threads: int, repeats: int) -> dict:
    """µs per example of one forward pass of each model, eager PyTorch and ONNX Runtime.

    The models take turns call by call, so the machine's load changes hit all alike;
    each figure is the median of ``repeats`` calls after a warm-up.
    """
    from mldcn.serve.export import example_inputs  # noqa: PLC0415

    inputs = example_inputs(features, batch=batch, seed=batch)
    steps = {}
    for name, (model, onnx_path) in models.items():
        wrapper = ProbabilityModel(model).eval()
        args = [inputs[n] for n in wrapper.input_names]
        session = onnx_session(onnx_path, threads)
        feed = {n: x.numpy() for n, x in zip(wrapper.input_names, args)}

        def eager(wrapper=wrapper, args=args) -> None:
            with torch.inference_mode():
                wrapper(*args)

        steps[(name, "torch")] = eager
        steps[(name, "onnx")] = lambda session=session, feed=feed: session.run(None, feed)
    timings: dict = {key: [] for key in steps}
    for round_ in range(repeats + 10):
        for key, step in steps.items():
            start = time.perf_counter()
            step()
            if round_ >= 10:
                timings[key].append(time.perf_counter() - start)
    return {key: 1e6 * statistics.median(values) / batch for key, values in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--artifact", required=True, help="the trained ML-DCN artifact (or its run directory)")
    parser.add_argument("--rows", required=True, help="raw CSV rows to serve (e.g. Frappe_x1 test.csv)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 512])
    parser.add_argument("--requests", type=int, nargs="+", default=[2000, 2000, 500], help="per batch size")
    parser.add_argument("--threads", type=int, default=1, help="server: intra-op threads per forward pass")
    parser.add_argument("--concurrency", type=int, default=2, help="server: forward passes at the same time")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds per (backend, batch size)")
    parser.add_argument("--repeats", type=int, default=300, help="forward-latency timings per figure")
    parser.add_argument("--backends", nargs="+", default=["torch", "onnx"])
    parser.add_argument("--parts", nargs="+", choices=["matched", "batching"], default=["matched", "batching"],
                        help="matched: parts 1-3 (ML-DCN vs DCNv2); batching: part 4")  # fmt: skip
    parser.add_argument("--batching-clients", type=int, default=32, help="part 4: concurrent clients")
    parser.add_argument("--batching-requests", type=int, default=4000, help="part 4: one-record requests per server")
    parser.add_argument("--batch-wait-ms", type=float, default=2.0, help="part 4: the batching servers' window")
    parser.add_argument("--max-batch-rows", type=int, default=256, help="part 4: the batching servers' row limit")
    parser.add_argument("--batching-backends", nargs="+", default=["torch"], help="part 4: backends")
    parser.add_argument("--out", help="also write the results as JSON here")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    if len(args.requests) != len(args.batch_sizes):
        parser.error("give one --requests count per --batch-sizes entry")
    torch.set_num_threads(args.threads)

    trained = load_artifact(args.artifact)
    encoder = trained.encoder
    if encoder is None:
        parser.error("the artifact must take raw rows (trained on `mldcn prepare` data)")
    columns = [c.column for c in (*encoder.schema.categorical, *encoder.schema.numeric, *encoder.schema.sequence)]
    columns = list(dict.fromkeys(columns))
    records = read_records(Path(args.rows), columns)
    work = Path(tempfile.mkdtemp(prefix="mldcn-serving-"))
    results = {}
    try:
        if "matched" in args.parts:
            results.update(run_benchmark(args, trained, records, work))
        if "batching" in args.parts:
            results["batching"] = batching_benchmark(args, trained, records, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


def run_benchmark(args: argparse.Namespace, trained, records: list[dict], work: Path) -> dict:
    """Parts 1-3: parity, the HTTP load test and the forward pass, ML-DCN vs DCNv2 at matched FLOPs."""
    features, encoder = trained.features, trained.encoder

    # the baseline: DCNv2 low-rank at the trained model's interaction FLOPs, same head and embedding
    budget = model_cost(trained.model).interaction.total
    config = trained.config
    baseline_config = match_budget(
        get_preset(BASELINE).replace(head=config.head, embedding_dim=config.embedding_dim), features, budget
    )
    seed_everything(0)
    baseline_path = save_artifact(work / BASELINE, create_model(baseline_config, features), encoder)
    models = {"mldcn": trained.path, BASELINE: baseline_path}
    for name, path in models.items():
        artifact = load_artifact(path)
        if not (path / "model.onnx").exists():
            export_onnx(artifact.model, path / "model.onnx", artifact.weights_sha256)

    cost = {name: model_cost(load_artifact(path).model) for name, path in models.items()}
    print(f"{len(records):,} rows from {args.rows}; {features.num_fields} fields; torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs; server --threads {args.threads} --concurrency {args.concurrency}; "
          f"{args.clients} clients", flush=True)  # fmt: skip
    for name in models:
        width = getattr(load_artifact(models[name]).config.interaction, "rank", "-")
        print(f"  {name}: rank {width}, interaction {cost[name].interaction.total:,} FLOPs/ex, "
              f"total {cost[name].total.total:,} FLOPs/ex, dense params {cost[name].dense_params:,}")  # fmt: skip

    # 1. parity of the served trained model with offline prediction
    offline_file = work / "offline.csv"
    predict_file(trained, Path(args.rows), offline_file, backend=TorchBackend(trained.model))
    offline = read_probabilities(offline_file).astype(np.float64)
    parity = {}
    for backend in args.backends:
        with Server(models["mldcn"], backend, args.threads, args.concurrency, work / f"parity-{backend}.log") as server:
            parity[backend] = check_parity(server, records, offline)
        print(f"parity, served ({backend}) vs `mldcn predict`, {len(records):,} rows: max |Δp| = {parity[backend]:.2e}", flush=True)

    # 2. load test: per backend both models' servers run side by side and take turns, round by round
    rows = []
    names = list(models)
    for backend in args.backends:
        servers = {}
        try:
            for name, path in models.items():
                servers[name] = Server(path, backend, args.threads, args.concurrency, work / f"{name}-{backend}.log")
            for batch, requests in zip(args.batch_sizes, args.requests):
                bodies = [
                    json.dumps({"records": [records[(k * batch + j) % len(records)] for j in range(batch)]}).encode()
                    for k in range(64)
                ]
                pooled = {name: {"latencies": [], "wall": 0.0} for name in names}
                round_ratios = []
                for round_ in range(args.rounds):
                    p50 = {}
                    for name in names if round_ % 2 == 0 else names[::-1]:
                        result = load_test(servers[name].url, bodies, batch, requests // args.rounds, args.clients)
                        pooled[name]["latencies"] += result["latencies"]
                        pooled[name]["wall"] += result["wall"]
                        p50[name] = percentile(result["latencies"], 0.5)
                    round_ratios.append(p50["mldcn"] / p50[BASELINE])
                for name in names:
                    latencies, wall = pooled[name]["latencies"], pooled[name]["wall"]
                    row = {
                        "model": name, "backend": backend, "batch": batch, "requests": len(latencies), "errors": 0,
                        "req_per_s": len(latencies) / wall, "rows_per_s": len(latencies) * batch / wall,
                        "p50_ms": 1e3 * percentile(latencies, 0.5), "p99_ms": 1e3 * percentile(latencies, 0.99),
                    }  # fmt: skip
                    if name != BASELINE:
                        row["round_ratios"] = f"{min(round_ratios):.2f}–{max(round_ratios):.2f}"
                    rows.append(row)
                    print(f"{name} {backend} batch {batch}: {row['req_per_s']:,.0f} req/s, {row['rows_per_s']:,.0f} rows/s, "
                          f"p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms, 0 errors", flush=True)  # fmt: skip
        finally:
            for server in servers.values():
                server.stop()
    for row in rows:
        base = next(r for r in rows if r["model"] == BASELINE and r["backend"] == row["backend"] and r["batch"] == row["batch"])
        row["p50_ratio"] = row["p50_ms"] / base["p50_ms"]
        row["p99_ratio"] = row["p99_ms"] / base["p99_ms"]
        row["throughput_ratio"] = row["rows_per_s"] / base["rows_per_s"]

    # 3. forward latency without HTTP
    loaded = {name: (load_artifact(path).model, path / "model.onnx") for name, path in models.items()}
    forward = []
    for batch in (1, 512):
        us = forward_latency(loaded, features, batch, args.threads, args.repeats)
        for name in names:
            forward.append({
                "model": name, "batch": batch,
                "torch_us": us[(name, "torch")], "torch_ratio": us[(name, "torch")] / us[(BASELINE, "torch")],
                "onnx_us": us[(name, "onnx")], "onnx_ratio": us[(name, "onnx")] / us[(BASELINE, "onnx")],
            })  # fmt: skip

    print()
    print(f"HTTP load test: {args.clients} clients on loopback, keep-alive, {args.rounds} alternating rounds; "
          f"ratio = mldcn / {BASELINE} (same backend, batch); p50 ratio per round: min–max")  # fmt: skip
    print(format_table(rows, [
        ("model", "model"), ("backend", "backend"), ("batch", "records/request"), ("requests", "requests"),
        ("errors", "errors"), ("req_per_s", "requests/s"), ("rows_per_s", "rows/s"), ("p50_ms", "p50 ms"),
        ("p99_ms", "p99 ms"), ("p50_ratio", "p50 vs dcnv2"), ("round_ratios", "p50 ratio per round"),
        ("p99_ratio", "p99 vs dcnv2"), ("throughput_ratio", "rows/s vs dcnv2"),
    ], markdown=args.markdown))  # fmt: skip
    print()
    print(f"forward pass only (no HTTP, no JSON), {args.threads} thread(s), models alternating, median of {args.repeats}")
    print(format_table(forward, [
        ("model", "model"), ("batch", "batch"), ("torch_us", "torch µs/example"), ("torch_ratio", "torch vs dcnv2"),
        ("onnx_us", "onnx µs/example"), ("onnx_ratio", "onnx vs dcnv2"),
    ], markdown=args.markdown))  # fmt: skip
    return {"parity": parity, "load": rows, "forward": forward}


# ---------------------------------------------------------------------------- part 4: dynamic batching

# (name, --batch-wait-ms (None: the --batch-wait-ms argument), --workers); the first is the reference
BATCHING_SETUPS = [("no batching", 0.0, 1), ("batching", None, 1), ("batching, 2 workers", None, 2)]


async def _http_load(port: int, bodies: list[bytes], requests: int, clients: int, warmup: int = 2) -> dict:
    """``requests`` POST /predict of ``bodies`` (request i sends ``bodies[i % len]``) over ``clients``
    keep-alive connections of asyncio streams: a minimal HTTP/1.1 client, so that on a small machine
    the load generator takes little of the CPU the servers need.

    Returns each request's latency (s), status and body, and the wall time after the warm-up.
    """
    head = "POST /predict HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n"
    messages = [head.format(len(body)).encode() + body for body in bodies]
    latencies, statuses, answers = [0.0] * requests, [0] * requests, [b""] * requests
    counter = iter(range(requests))
    go = asyncio.Event()
    ready = 0

    async def exchange(reader, writer, message: bytes) -> tuple[int, bytes]:
        writer.write(message)
        header = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in header.split(b"\r\n") if line.lower().startswith(b"content-length:"))
        return int(header[9:12]), await reader.readexactly(length)

    async def client() -> None:
        nonlocal ready
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for k in range(warmup):
                status, body = await exchange(reader, writer, messages[k % len(messages)])
                if status != 200:
                    raise RuntimeError(f"warm-up request: HTTP {status}: {body[:200]!r}")
            ready += 1
            await go.wait()
            for i in counter:
                start = time.perf_counter()
                statuses[i], answers[i] = await exchange(reader, writer, messages[i % len(messages)])
                latencies[i] = time.perf_counter() - start
        finally:
            writer.close()

    tasks = [asyncio.ensure_future(client()) for _ in range(clients)]
    while ready < clients and not any(t.done() for t in tasks):
        await asyncio.sleep(0.01)
    start = time.perf_counter()
    go.set()
    await asyncio.gather(*tasks)
    return {"latencies": latencies, "statuses": statuses, "answers": answers, "wall": time.perf_counter() - start}


def _batches(url: str) -> tuple[float, float]:
    """(forward passes, requests scored) so far, from the server's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    samples = {s.name: s.value for f in text_string_to_metric_families(httpx.get(f"{url}/metrics").text) for s in f.samples}
    return samples.get("mldcn_batch_requests_count", 0.0), samples.get("mldcn_batch_requests_sum", 0.0)


def batching_benchmark(args: argparse.Namespace, trained, records: list[dict], work: Path) -> list[dict]:
    """Part 4: one-record requests from many clients, without and with dynamic batching and workers."""
    offline_file = work / "offline-batching.csv"
    predict_file(trained, Path(args.rows), offline_file, backend=TorchBackend(trained.model))
    offline = read_probabilities(offline_file).astype(np.float64)  # [N, T]
    tasks = list(trained.features.task_names)
    bodies = [json.dumps({"records": [record]}).encode() for record in records]
    print(f"part 4, dynamic batching: {args.batching_clients} clients, {args.batching_requests:,} one-record requests per "
          f"server in {args.rounds} alternating rounds; {os.cpu_count()} CPUs; --threads {args.threads} "
          f"--concurrency {args.concurrency}; batching: --batch-wait-ms {args.batch_wait_ms:g} "
          f"--max-batch-rows {args.max_batch_rows}", flush=True)  # fmt: skip
    rows = []
    for backend in args.batching_backends:
        servers = {}
        try:
            for name, wait, workers in BATCHING_SETUPS:
                wait = args.batch_wait_ms if wait is None else wait
                options = ["--batch-wait-ms", f"{wait:g}", "--max-batch-rows", str(args.max_batch_rows), "--workers", str(workers)]
                log = work / f"batching-{backend}-{workers}-{wait:g}.log"
                servers[name] = Server(trained.path, backend, args.threads, args.concurrency, log, *options)
            names = list(servers)
            pooled = {name: {"latencies": [], "wall": 0.0, "worst": 0.0, "requests": 0} for name in names}
            round_ratios = {name: [] for name in names}
            before = {name: _batches(servers[name].url) for name in names}
            per_round = args.batching_requests // args.rounds
            for round_ in range(args.rounds):
                throughput = {}
                offset = round_ * per_round  # every round and server sends the same rows, each round new ones
                for name in names if round_ % 2 == 0 else names[::-1]:
                    port = int(servers[name].url.rsplit(":", 1)[1])
                    result = asyncio.run(_http_load(port, bodies[offset:] + bodies[:offset], per_round, args.batching_clients))
                    failed = [(s, a[:200]) for s, a in zip(result["statuses"], result["answers"]) if s != 200]
                    if failed:
                        raise RuntimeError(f"{len(failed)} of {per_round} requests to {name} failed (zero allowed); first: {failed[0]}")
                    served = np.asarray([[json.loads(a)["probabilities"][0][t] for t in tasks] for a in result["answers"]])
                    expected = offline[(offset + np.arange(per_round)) % len(offline)]
                    pooled[name]["worst"] = max(pooled[name]["worst"], float(np.abs(served - expected).max()))
                    pooled[name]["latencies"] += result["latencies"]
                    pooled[name]["wall"] += result["wall"]
                    pooled[name]["requests"] += per_round
                    throughput[name] = per_round / result["wall"]
                for name in names:
                    round_ratios[name].append(throughput[name] / throughput[names[0]])
            for name, wait, workers in BATCHING_SETUPS:
                passes, scored = (a - b for a, b in zip(_batches(servers[name].url), before[name]))
                latencies, wall = pooled[name]["latencies"], pooled[name]["wall"]
                rows.append({
                    "setup": name, "backend": backend, "workers": workers,
                    "wait_ms": args.batch_wait_ms if wait is None else wait,
                    "requests": pooled[name]["requests"], "errors": 0, "req_per_s": len(latencies) / wall,
                    "p50_ms": 1e3 * percentile(latencies, 0.5), "p99_ms": 1e3 * percentile(latencies, 0.99),
                    "requests_per_pass": scored / passes if passes else float("nan"),
                    "max_abs_diff": pooled[name]["worst"], "max_dp": f"{pooled[name]['worst']:.1e}",
                    "round_ratios": f"{min(round_ratios[name]):.2f}–{max(round_ratios[name]):.2f}",
                })  # fmt: skip
        finally:
            for server in servers.values():
                server.stop()
        reference = next(r for r in rows if r["backend"] == backend and r["setup"] == names[0])
        for row in rows:
            if row["backend"] == backend:
                row["throughput_ratio"] = row["req_per_s"] / reference["req_per_s"]
                row["shown"] = {"window": f"{row['wait_ms']:g}", "passes": f"{row['requests_per_pass']:.1f}",
                                "ratio": f"{row['throughput_ratio']:.2f}", "p50": f"{row['p50_ms']:.1f}",
                                "p99": f"{row['p99_ms']:.1f}"}  # fmt: skip
                print(f"{row['setup']} ({backend}): {row['req_per_s']:,.0f} req/s, p50 {row['p50_ms']:.2f} ms, "
                      f"p99 {row['p99_ms']:.2f} ms, {row['requests_per_pass']:.1f} requests/forward pass, "
                      f"max |Δp| vs predict {row['max_abs_diff']:.1e}, {row['throughput_ratio']:.2f}x", flush=True)  # fmt: skip
    print()
    print(f"dynamic batching: {args.batching_clients} clients, one record per request, loopback, keep-alive; "
          f"throughput ratio = req/s / req/s without batching (same backend); per round: min–max")  # fmt: skip
    table = [{**row, **row.pop("shown")} for row in rows]
    print(format_table(table, [
        ("setup", "server"), ("backend", "backend"), ("workers", "workers"), ("window", "window ms"),
        ("requests", "requests"), ("errors", "errors"), ("req_per_s", "requests/s"), ("p50", "p50 ms"),
        ("p99", "p99 ms"), ("passes", "requests/forward pass"), ("max_dp", "max |Δp| vs predict"),
        ("ratio", "throughput vs no batching"), ("round_ratios", "ratio per round"),
    ], markdown=args.markdown))  # fmt: skip
    worst = max(row["max_abs_diff"] for row in rows)
    if worst > 1e-6:
        raise RuntimeError(f"served probabilities differ from `mldcn predict` by up to {worst:.2e} (> 1e-6)")
    return rows


if __name__ == "__main__":
    main()
