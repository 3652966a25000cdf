"""Dynamic batching, worker processes, /metrics and graceful shutdown of ``mldcn serve``.

In process: random hostile requests, checked one by one and encoded as one
batch, get what each gets alone from ``encode_records`` (its rows or the same
error); the batcher's window and row limit; what happens when a forward pass
fails. As real server processes on free loopback ports (always
terminated by a finalizer): concurrent requests share forward passes (seen in
the batch-size histogram of /metrics) and get the answers they get alone and
from ``mldcn predict``; bad requests get their 4xx without joining a batch;
/metrics parses and counts what was sent, over two workers too; SIGTERM lets
the requests in flight finish and the server exits 0.
"""

from __future__ import annotations

import asyncio
import math
import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pyarrow as pa
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from toy_log import HEADER, TINY_MODEL, TINY_TRAIN, make_toy_data, train_toy

from mldcn.cli import main
from mldcn.data.encode import Encoder
from mldcn.data.schema import CategoricalColumn, DataSchema, NumericColumn, SequenceColumn
from mldcn.data.source import DataConfig
from mldcn.data.synthetic import SyntheticConfig
from mldcn.serve.artifact import load_artifact, save_run_artifact
from mldcn.serve.batching import Batcher, BatchFailed
from mldcn.serve.inputs import Codec, IdInputs, RawInputs, RecordError
from mldcn.serve.predict import TorchBackend, read_probabilities
from mldcn.serve.server import ForwardError, PredictionService, ServeConfig, create_app
from mldcn.train.run import RunConfig, run

START_TIMEOUT = 120.0
WINDOW_MS = 250  # long enough that requests sent together surely meet in one window


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    base = tmp_path_factory.mktemp("batching")
    data = make_toy_data(base / "data")
    run_dir = train_toy(base / "run", data)
    assert main(["predict", str(run_dir), "--input", str(data["test"]), "--out", str(base / "offline.csv")]) == 0
    lines = data["test"].read_text().splitlines()[1:]
    records = [dict(zip(HEADER[1:], line.split(",")[1:])) for line in lines]  # raw values, no label
    return {"run": run_dir, "offline": read_probabilities(base / "offline.csv"), "records": records, "base": base}


@pytest.fixture(scope="module")
def ids_run(tmp_path_factory):
    """A model of ids trained on the synthetic log (fields c0 < 4, c1 < 8, n0)."""
    base = tmp_path_factory.mktemp("batching-ids")
    data = SyntheticConfig(train_rows=2000, valid_rows=500, test_rows=500, vocab_sizes=(4, 8), num_numeric=1, seed=1)
    save_run_artifact(run(RunConfig(model=TINY_MODEL, data=DataConfig(synthetic=data), train=TINY_TRAIN), base / "run"))
    return base / "run"


# ---------------------------------------------------------------------------- the two stages of a codec

# (no lone surrogates: the server refuses them before the codec, and Arrow cannot hold them)
ODD_VALUES = [
    "", " ", "u1", "i3", "a|b|", "|", "é", "12.5", " 5 ", "1e400", "NaN", "cheap", "x" * 50,
    0, -1, 2.5, 1e20, 1e39, 3.5e38, 10**400, 2**63, math.nan, math.inf, -math.inf, True, None,
    [], ["a", "b"], ["a", None], ["a", math.nan], [1, 2], {"k": 1},
]  # fmt: skip


def odd_records(rng: random.Random, fields: list[str], good: list[dict]) -> list:
    """1-4 records: good ones with some values replaced by odd ones, some fields dropped, or not objects."""
    records = []
    for _ in range(rng.randint(1, 4)):
        draw = rng.random()
        if draw < 0.05:
            records.append(rng.choice([17, "record", None, [1, 2]]))
            continue
        record = dict(rng.choice(good))
        if draw < 0.75:
            for name in rng.sample(fields, rng.randint(1, 2)):
                record[name] = rng.choice(ODD_VALUES)
        elif draw < 0.85:
            del record[rng.choice(fields)]
        records.append(record)
    return records


def encoded_or_error(encode):
    try:
        batch = encode()
    except RecordError as error:
        return str(error)
    return [None if v is None else v.numpy() for v in batch.inputs()]


def assert_same(expected, got) -> None:
    if isinstance(expected, str) or isinstance(got, str):
        assert got == expected
        return
    for a, b in zip(expected, got):
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_array_equal(a, b)  # NaN-aware, exact


def staged_batch(codec: Codec, requests: list) -> list:
    """Each request's outcome when the requests are checked one by one and the good ones encoded
    as one batch: its own rows of the batch, or its error message."""
    outcomes, parts, owners = [], [], []
    for k, records in enumerate(requests):
        try:
            parts.append(codec.check(records))
            owners.append(k)
            outcomes.append(None)
        except RecordError as error:
            outcomes.append(str(error))
    if parts:
        batch, errors = codec.encode(parts)
        start = 0
        for k, part, error in zip(owners, parts, errors):
            if error is not None:
                outcomes[k] = str(error)
                continue
            rows = batch.rows(start, start + codec.rows(part))
            start += codec.rows(part)
            outcomes[k] = [None if v is None else v.numpy() for v in rows.inputs()]
    return outcomes


def toy_codecs(toy) -> list:
    codec = RawInputs(load_artifact(toy["run"]).encoder)
    # a numeric field without a log transform, so 1e39 overflows float32 after the encoding
    schema = DataSchema(
        categorical=(CategoricalColumn("user"),), numeric=(NumericColumn("price", transform="none"),),
        sequence=(SequenceColumn("genres", separator="|", max_len=3),),
    )  # fmt: skip
    plain = RawInputs(Encoder(schema, {"user": pa.array(["u1", "u2"]), "genres": pa.array(["a", "b"])}, {"price": {"mean": 0.0, "std": 1.0}}))
    return [codec, plain]


def test_random_requests_batched_get_what_each_gets_alone(toy, ids_run):
    rng = random.Random(20261202)
    cases = [(codec, toy["records"][:20]) for codec in toy_codecs(toy)]
    ids = IdInputs(load_artifact(ids_run).features)
    cases.append((ids, [{"c0": 3, "c1": 7, "n0": 0.5}, {"c0": 0, "c1": 1, "n0": -1}, {"c0": 1, "c1": 4, "n0": None}]))
    outcomes = set()
    for codec, good in cases:
        fields = [f.name for f in codec.fields]
        for _ in range(150):  # three random requests at a time, batched, against each one encoded alone
            requests = [odd_records(rng, fields, good) for _ in range(3)]
            alone = [encoded_or_error(lambda r=r: codec.encode_records(r)) for r in requests]
            for expected, got in zip(alone, staged_batch(codec, requests)):
                assert_same(expected, got)
                outcomes.add("error" if isinstance(expected, str) else "ok")
    assert outcomes == {"error", "ok"}


def test_a_batch_encodes_as_its_requests_alone_and_refuses_only_an_overflowing_one(toy):
    plain = toy_codecs(toy)[1]
    requests = [
        [{"user": "u1", "price": 1.5, "genres": "a|b"}, {"user": "zz", "price": None, "genres": ""}],
        [{"user": "u2", "price": "1e39", "genres": "b"}],  # past float32 once encoded
        [{"user": "u2", "price": 3e38, "genres": ["a"]}],
    ]
    batch, errors = plain.encode([plain.check(r) for r in requests])
    assert [e is None for e in errors] == [True, False, True]
    assert str(errors[1]) == "record 0, field 'price': '1e39' overflows the model's float32 input 'price'"
    with pytest.raises(RecordError) as alone:
        plain.encode_records(requests[1])
    assert str(alone.value) == str(errors[1])
    expected = [plain.encode_records(requests[0]), plain.encode_records(requests[2])]
    for name in ("categorical", "numeric", "sequence"):
        np.testing.assert_array_equal(getattr(batch, name), torch.cat([getattr(b, name) for b in expected]))


# ---------------------------------------------------------------------------- the batcher


def test_batcher_gathers_requests_of_one_window_up_to_max_rows():
    batches = []

    def score(parts):
        batches.append(list(parts))
        return [f"answer {p}" for p in parts]

    async def scenario():
        batcher = Batcher(score, wait_s=0.2, max_rows=5, runners=1)
        together = await asyncio.gather(*(batcher.submit(k, rows=1) for k in range(3)))
        assert together == ["answer 0", "answer 1", "answer 2"]
        # 7 rows: a batch is scored as soon as it holds 5; the rest waits for its own window
        start = time.perf_counter()
        split = await asyncio.gather(*(batcher.submit(k, rows=r) for k, r in zip(range(10, 14), (2, 3, 1, 1))))
        assert split == [f"answer {k}" for k in range(10, 14)]
        # a request larger than max_rows is scored alone
        assert await batcher.submit(99, rows=50) == "answer 99"
        await batcher.close()
        return time.perf_counter() - start

    elapsed = asyncio.run(scenario())
    assert batches == [[0, 1, 2], [10, 11], [12, 13], [99]]
    assert elapsed >= 0.2  # [12, 13] waited for its window (the first two batches did not)


def test_batcher_without_a_window_scores_each_request_alone():
    batches = []

    def score(parts):
        batches.append(list(parts))
        time.sleep(0.01)
        return parts

    async def scenario():
        batcher = Batcher(score, wait_s=0, max_rows=256, runners=2)
        assert await asyncio.gather(*(batcher.submit(k, rows=1) for k in range(6))) == list(range(6))
        await batcher.close()

    asyncio.run(scenario())
    assert sorted(batches) == [[k] for k in range(6)]


def test_batcher_survives_a_score_function_that_raises_and_skips_cancelled_requests():
    calls = []

    def score(parts):
        calls.append(list(parts))
        if "boom" in parts:
            raise ValueError("boom")
        return [p.upper() for p in parts]

    async def scenario():
        batcher = Batcher(score, wait_s=0.05, max_rows=10, runners=1)
        results = await asyncio.gather(batcher.submit("a", 1), batcher.submit("boom", 1), return_exceptions=True)
        assert all(isinstance(r, BatchFailed) and "ValueError: boom" in str(r) for r in results)
        cancelled = asyncio.ensure_future(batcher.submit("never", 1))
        await asyncio.sleep(0)
        cancelled.cancel()
        assert await asyncio.gather(batcher.submit("b", 1), batcher.submit("c", 1)) == ["B", "C"]
        await batcher.close()

    asyncio.run(scenario())
    assert calls == [["a", "boom"], ["b", "c"]]


# ---------------------------------------------------------------------------- a failing forward pass


class PoisonedBackend:
    """The toy model, but a forward pass over a row whose price is ``poison`` raises (say, a kernel bug)."""

    name = "torch"

    def __init__(self, model, poison: float) -> None:
        self.inner = TorchBackend(model)
        self.poison = poison
        self.calls: list[int] = []

    def __call__(self, batch):
        self.calls.append(len(batch))
        if bool((batch.numeric == self.poison).any()):
            raise RuntimeError("kernel failure")
        return self.inner(batch)


def test_a_failing_forward_pass_is_retried_request_by_request(toy):
    artifact = load_artifact(toy["run"])
    good = toy["records"][:3]
    poisoned = {**toy["records"][3], "price": "7.2513579"}
    poison = float(artifact.encoder.encode({k: pa.array([poisoned[k]], pa.string()) for k in HEADER[1:]}).numeric[0, 0])
    backend = PoisonedBackend(artifact.model, poison)
    service = PredictionService(artifact, ServeConfig(), backend=backend)
    failures = []
    parts = [service.check([r]) for r in good[:2]] + [service.check([poisoned])] + [service.check([good[2]])]
    results = service.score_parts(parts, on_failure=lambda: failures.append(1))
    assert isinstance(results[2], ForwardError) and "RuntimeError: kernel failure" in str(results[2])
    np.testing.assert_allclose(np.concatenate([results[k] for k in (0, 1, 3)]), toy["offline"][:3], rtol=0, atol=1e-6)
    assert backend.calls == [4, 1, 1, 1, 1] and len(failures) == 2  # the batch, then each alone: one fails again


def test_a_request_the_model_cannot_score_gets_503_and_its_neighbours_200(toy):
    artifact = load_artifact(toy["run"])
    poisoned = {**toy["records"][3], "price": "7.2513579"}
    poison = float(artifact.encoder.encode({k: pa.array([poisoned[k]], pa.string()) for k in HEADER[1:]}).numeric[0, 0])
    # the batch is scored when its fifth row arrives, not when a window ends: one batch however loaded the machine
    config = ServeConfig(batch_wait_ms=30_000, max_batch_rows=5)
    service = PredictionService(artifact, config, backend=PoisonedBackend(artifact.model, poison))
    app = create_app(service)

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            bodies = [{"records": [r]} for r in toy["records"][:4]] + [{"records": [poisoned]}]
            responses = await asyncio.gather(*(client.post("/predict", json=b) for b in bodies))
            metrics = (await client.get("/metrics")).text
        return responses, metrics

    responses, metrics = asyncio.run(scenario())
    assert [r.status_code for r in responses] == [200, 200, 200, 200, 503]
    assert responses[4].json()["detail"] == "the model could not score this request (RuntimeError: kernel failure)"
    got = np.array([[r.json()["probabilities"][0]["label"]] for r in responses[:4]])
    np.testing.assert_allclose(got, toy["offline"][:4], rtol=0, atol=1e-6)
    samples = parse_metrics(metrics)
    assert value(samples, "mldcn_forward_failures_total") == 2
    assert value(samples, "mldcn_http_requests_total", endpoint="/predict", code="503") == 1
    assert value(samples, "mldcn_batch_requests_count") == 1 and value(samples, "mldcn_batch_requests_sum") == 5


# ---------------------------------------------------------------------------- server processes


class Server:
    """A ``python -m mldcn serve`` process with ``options``; ``url`` once it answers /health."""

    def __init__(self, run_dir, log_path, *options: str) -> None:
        command = [sys.executable, "-m", "mldcn", "serve", str(run_dir), "--port", "0", "--threads", "1", *options]
        self.log = open(log_path, "w")
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line) for line in self.process.stdout], daemon=True).start()
        self.url = self._wait_until_listening()

    def _wait_until_listening(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", self.lines.get(timeout=0.5))
            except queue.Empty:
                continue
            while match and time.monotonic() < deadline:
                try:
                    if httpx.get(f"{match.group(1)}/health", timeout=2).status_code == 200:
                        return match.group(1)
                except httpx.TransportError:
                    time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the server did not start; its log:\n{open(self.log.name).read()}")

    def metrics(self) -> dict:
        response = httpx.get(f"{self.url}/metrics", timeout=30)  # a new connection: any worker
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        return parse_metrics(response.text)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        self.log.close()


def parse_metrics(text: str) -> dict:
    """Prometheus text (parsed by prometheus_client's parser) → {(sample name, labels): value}."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(after: dict, before: dict, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def probabilities(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    body = response.json()
    return np.asarray([[row[task] for task in body["tasks"]] for row in body["probabilities"]], dtype=np.float64)


def post_together(url: str, bodies: list, warm: bool = True) -> tuple[list, list[float]]:
    """POST ``bodies`` at the same moment, each on its own (already open) connection: responses, and
    each one's time of arrival (``time.perf_counter()``)."""
    clients = [httpx.Client(base_url=url, timeout=60) for _ in bodies]
    try:
        if warm:
            for client in clients:
                client.get("/health")  # connect first, so the posts leave together
        barrier = threading.Barrier(len(bodies))

        def send(k: int):
            barrier.wait()
            body = bodies[k]
            if isinstance(body, bytes):
                response = clients[k].post("/predict", content=body, headers={"content-type": "application/json"})
            else:
                response = clients[k].post("/predict", json=body)
            return response, time.perf_counter()

        with ThreadPoolExecutor(len(bodies)) as pool:
            done = list(pool.map(send, range(len(bodies))))
    finally:
        for client in clients:
            client.close()
    return [r for r, _ in done], [t for _, t in done]


@pytest.fixture(scope="module")
def batched(toy):
    server = Server(
        toy["run"], toy["base"] / "batched.log",
        "--batch-wait-ms", str(WINDOW_MS), "--max-batch-rows", "64", "--concurrency", "1", "--max-records", "500",
    )  # fmt: skip
    yield server
    server.stop()


def test_concurrent_clients_get_their_single_request_answers(batched, toy):
    records, offline = toy["records"], toy["offline"]
    service = PredictionService(load_artifact(toy["run"]), ServeConfig())
    alone = np.concatenate([service.predict([r]) for r in records[:96]])  # each record scored alone
    before = batched.metrics()

    def client(k: int) -> list[tuple[int, np.ndarray]]:
        with httpx.Client(base_url=batched.url, timeout=60) as own:
            return [(i, probabilities(own.post("/predict", json={"records": [records[i]]}))) for i in range(k, 96, 32)]

    with ThreadPoolExecutor(32) as pool:
        answers = [a for part in pool.map(client, range(32)) for a in part]
    after = batched.metrics()
    got = np.concatenate([p for _, p in sorted(answers, key=lambda a: a[0])])
    np.testing.assert_allclose(got, offline[:96], rtol=0, atol=1e-6)  # = mldcn predict
    np.testing.assert_allclose(got, alone, rtol=0, atol=1e-6)  # = each request scored alone
    assert delta(after, before, "mldcn_batch_requests_sum") == 96
    assert delta(after, before, "mldcn_batch_requests_count") < 96 / 4  # they shared forward passes


def test_requests_sent_together_share_one_forward_pass(batched, toy):
    records = toy["records"]
    before = batched.metrics()
    responses, _ = post_together(batched.url, [{"records": [records[k]]} for k in range(8)])
    after = batched.metrics()
    np.testing.assert_allclose(np.concatenate([probabilities(r) for r in responses]), toy["offline"][:8], rtol=0, atol=1e-6)
    assert delta(after, before, "mldcn_batch_requests_count") == 1  # one forward pass ...
    assert delta(after, before, "mldcn_batch_requests_sum") == 8  # ... of 8 requests
    assert delta(after, before, "mldcn_batch_requests_bucket", le="4.0") == 0
    assert delta(after, before, "mldcn_batch_requests_bucket", le="8.0") == 1
    assert delta(after, before, "mldcn_batch_rows_sum") == 8


def test_a_bad_request_among_good_ones_gets_its_4xx_without_joining_their_batch(batched, toy):
    records = toy["records"]
    missing = {k: v for k, v in records[0].items() if k != "item"}
    bodies = [{"records": [records[k]]} for k in range(6)]
    bodies += [{"records": [records[6], missing]}, b'{"records": [{"user": "u1",', {"records": []}]
    before = batched.metrics()
    responses, arrivals = post_together(batched.url, bodies)
    after = batched.metrics()
    assert [r.status_code for r in responses] == [200] * 6 + [422, 400, 422]
    assert responses[6].json()["detail"] == "record 1, field 'item': missing (send null for a missing value)"
    assert responses[7].json()["detail"].startswith("malformed JSON: Expecting property name")
    assert responses[8].json()["detail"] == "'records' is empty: send at least one record"
    np.testing.assert_allclose(np.concatenate([probabilities(r) for r in responses[:6]]), toy["offline"][:6], rtol=0, atol=1e-6)
    assert max(arrivals[6:]) < min(arrivals[:6])  # refused at once, not after the good ones' window
    assert delta(after, before, "mldcn_batch_requests_count") == 1
    assert delta(after, before, "mldcn_batch_requests_sum") == 6  # the bad ones never joined


def test_metrics_parse_and_count_what_was_sent(batched, toy):
    before = batched.metrics()
    with httpx.Client(base_url=batched.url, timeout=30) as client:
        for k in range(5):
            assert client.post("/predict", json={"records": toy["records"][k : k + 2]}).status_code == 200
        for _ in range(3):
            assert client.post("/predict", json={"records": [{"user": "u1"}]}).status_code == 422
        assert client.post("/predict", content=b"{", headers={"content-type": "application/json"}).status_code == 400
        assert client.get("/nothing").status_code == 404
        assert client.get("/health").status_code == 200
    after = batched.metrics()
    assert delta(after, before, "mldcn_http_requests_total", endpoint="/predict", code="200") == 5
    assert delta(after, before, "mldcn_http_requests_total", endpoint="/predict", code="422") == 3
    assert delta(after, before, "mldcn_http_requests_total", endpoint="/predict", code="400") == 1
    assert delta(after, before, "mldcn_http_requests_total", endpoint="other", code="404") == 1
    assert delta(after, before, "mldcn_http_requests_total", endpoint="/health", code="200") == 1
    assert delta(after, before, "mldcn_http_requests_total", endpoint="/metrics", code="200") == 1  # the first scrape
    assert delta(after, before, "mldcn_http_request_duration_seconds_count", endpoint="/predict") == 9
    assert delta(after, before, "mldcn_http_request_duration_seconds_bucket", endpoint="/predict", le="+Inf") == 9
    assert delta(after, before, "mldcn_batch_rows_sum") == 10  # 5 requests of 2 records
    assert not any(name == "mldcn_http_requests_total" and dict(labels)["code"].startswith("5") for name, labels in after)


@pytest.fixture(scope="module")
def ids_batched(ids_run, tmp_path_factory):
    server = Server(ids_run, tmp_path_factory.mktemp("ids-log") / "server.log", "--batch-wait-ms", str(WINDOW_MS))
    yield server
    server.stop()


def test_a_record_the_model_cannot_compute_fails_only_its_own_request(ids_batched, ids_run):
    # 1e20 passes every check but makes the model's float32 products overflow: only the forward
    # pass shows it, so this request does join the batch; its NaN row fails it alone
    good = [{"c0": k % 4, "c1": k % 8, "n0": 0.25 * k} for k in range(5)]
    bad = [{"c0": 3, "c1": 7, "n0": 0.5}, {"c0": 3, "c1": 7, "n0": 1e20}]
    before = ids_batched.metrics()
    responses, _ = post_together(ids_batched.url, [{"records": [r]} for r in good] + [{"records": bad}])
    after = ids_batched.metrics()
    assert [r.status_code for r in responses] == [200] * 5 + [422]
    assert responses[5].json()["detail"] == (
        "record 1: the model's probability is NaN (a number in the record is too large for its float32 arithmetic)"
    )
    artifact = load_artifact(ids_run)
    with torch.inference_mode():
        categorical = torch.tensor([[r["c0"], r["c1"]] for r in good])
        expected = torch.sigmoid(artifact.model(categorical, torch.tensor([[r["n0"]] for r in good], dtype=torch.float32)))
    np.testing.assert_allclose(np.concatenate([probabilities(r) for r in responses[:5]]), expected.numpy(), rtol=0, atol=1e-6)
    assert delta(after, before, "mldcn_batch_requests_count") == 1
    assert delta(after, before, "mldcn_batch_requests_sum") == 6


def test_two_workers_serve_and_their_metrics_add_up(toy):
    server = Server(toy["run"], toy["base"] / "workers.log", "--workers", "2", "--batch-wait-ms", "5", "--max-records", "500")
    try:
        pids, deadline = set(), time.monotonic() + START_TIMEOUT
        while len(pids) < 2 and time.monotonic() < deadline:  # each new connection goes to one worker
            meta = httpx.get(f"{server.url}/metadata", timeout=30).json()["serving"]
            assert meta["workers"] == 2
            pids.add(meta["worker_pid"])
        assert len(pids) == 2, "only one worker answered"
        records = toy["records"]

        def client(k: int) -> np.ndarray:
            with httpx.Client(base_url=server.url, timeout=60) as own:  # each client on its own connection
                return np.concatenate([probabilities(own.post("/predict", json={"records": [records[i]]})) for i in range(k, 60, 12)])

        with ThreadPoolExecutor(12) as pool:
            got = list(pool.map(client, range(12)))
        for k, answers in enumerate(got):
            np.testing.assert_allclose(answers, toy["offline"][k:60:12], rtol=0, atol=1e-6)
        scrapes = [server.metrics() for _ in range(6)]  # new connections: both workers answer some
        for samples in scrapes:
            assert value(samples, "mldcn_http_requests_total", endpoint="/predict", code="200") == 60
            assert value(samples, "mldcn_batch_requests_sum") == 60
            assert value(samples, "mldcn_http_request_duration_seconds_count", endpoint="/predict") == 60
        time.sleep(0.2)  # a worker counts a request just after answering it
        assert value(server.metrics(), "mldcn_http_requests_total", endpoint="/metrics", code="200") == 6
    finally:
        server.stop()
    assert server.process.returncode == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_lets_the_requests_in_flight_finish(workers, toy):
    window = 1500  # ms: the requests are still waiting for their batch when SIGTERM comes
    server = Server(
        toy["run"], toy["base"] / f"sigterm-{workers}.log", "--workers", str(workers), "--batch-wait-ms", str(window)
    )
    try:
        records = toy["records"]
        results: list = []
        clients = [httpx.Client(base_url=server.url, timeout=60) for _ in range(6)]
        for client in clients:
            client.get("/health")
        threads = [
            threading.Thread(target=lambda k=k: results.append((k, clients[k].post("/predict", json={"records": [records[k]]}), time.perf_counter())))
            for k in range(6)
        ]  # fmt: skip
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        terminated = time.perf_counter()
        server.process.send_signal(signal.SIGTERM)
        if workers == 1:  # it stops accepting at once (with workers, the supervisor holds the socket until they exit)
            time.sleep(0.3)
            with pytest.raises(httpx.TransportError):
                httpx.get(f"{server.url}/health", timeout=5)
        for thread in threads:
            thread.join(timeout=60)
        assert server.process.wait(timeout=60) == 0
        for client in clients:
            client.close()
    finally:
        server.stop()
    assert len(results) == 6
    for k, response, answered in results:
        assert answered > terminated  # it was in flight when SIGTERM came
        np.testing.assert_allclose(probabilities(response), toy["offline"][k : k + 1], rtol=0, atol=1e-6)


def test_batching_options_are_checked():
    assert (ServeConfig().batch_wait_ms, ServeConfig().max_batch_rows, ServeConfig().workers) == (0.0, 256, 1)
    with pytest.raises(ValueError, match="batch_wait_ms must be >= 0"):
        ServeConfig(batch_wait_ms=-1)
    with pytest.raises(ValueError, match="workers must be > 0"):
        ServeConfig(workers=0)
    with pytest.raises(SystemExit):
        main(["serve", "MODEL", "--batch-wait-ms", "nan"])
