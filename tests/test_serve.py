"""``mldcn serve``, run as a real process on a free loopback port, for both backends.

Its probabilities equal ``mldcn predict``'s on the same rows; every bad request gets
a 4xx naming the problem, and the server answers normally afterwards. The server
processes are always terminated (fixture finalizer).
"""

from __future__ import annotations

import json
import math
import os
import queue
import re
import socket
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
from toy_log import (  # the shared toy log
    HEADER,
    TINY_MODEL,
    TINY_TRAIN,
    make_toy_data,
    train_toy,
)

from mldcn.cli import main
from mldcn.data.synthetic import SyntheticConfig
from mldcn.serve.artifact import load_artifact
from mldcn.serve.predict import read_probabilities
from mldcn.serve.server import bind
from mldcn.train.run import DataConfig, RunConfig, run

MAX_BODY = 64 * 1024
MAX_RECORDS = 500
START_TIMEOUT = 90.0


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    base = tmp_path_factory.mktemp("serve")
    data = make_toy_data(base / "data")
    run_dir = train_toy(base / "run", data)
    assert main(["export", str(run_dir), "--format", "onnx", "--no-check"]) == 0  # the onnx server loads it
    assert main(["predict", str(run_dir), "--input", str(data["test"]), "--out", str(base / "offline.csv")]) == 0
    return {**data, "run": run_dir, "offline": read_probabilities(base / "offline.csv"), "base": base}


def raw_records(toy) -> list[dict]:
    """The test CSV's rows as request records: the raw values, without the label."""
    lines = toy["test"].read_text().splitlines()[1:]
    return [dict(zip(HEADER[1:], line.split(",")[1:])) for line in lines]


class Server:
    """A ``python -m mldcn serve`` process; ``url`` once it listens."""

    def __init__(self, run_dir, backend: str, log_path) -> None:
        command = [
            sys.executable, "-m", "mldcn", "serve", str(run_dir),
            "--backend", backend, "--port", "0", "--threads", "1", "--concurrency", "2",
            "--max-body-bytes", str(MAX_BODY), "--max-records", str(MAX_RECORDS),
        ]  # fmt: skip
        self.log = open(log_path, "w")
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.url = self._wait_until_listening()

    def _pump(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)

    def _wait_until_listening(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
            if match:
                url = match.group(1)
                while time.monotonic() < deadline:  # the socket listens; wait for the app
                    try:
                        if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                            return url
                    except httpx.TransportError:
                        time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the server did not start; its log:\n{open(self.log.name).read()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        self.log.close()


@pytest.fixture(scope="module", params=["torch", "onnx"])
def server(request, toy):
    server = Server(toy["run"], request.param, toy["base"] / f"server-{request.param}.log")
    request.addfinalizer(server.stop)
    server.backend = request.param
    return server


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def predict(client, records) -> np.ndarray:
    response = client.post("/predict", json={"records": records})
    assert response.status_code == 200, response.text
    probabilities = response.json()["probabilities"]
    assert len(probabilities) == len(records)
    return np.asarray(probabilities, dtype=np.float64)


def assert_still_serving(client, toy) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    rows = raw_records(toy)[:3]
    np.testing.assert_allclose(predict(client, rows), toy["offline"][:3], rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------- predictions


def test_server_equals_offline_prediction(client, toy):
    rows = raw_records(toy)
    got, start = [], 0
    for size in (1, 7, 64, 128, len(rows)):  # requests of several sizes cover all 400 rows
        got.append(predict(client, rows[start : start + size]))
        start += size
        if start >= len(rows):
            break
    got = np.concatenate(got)
    assert len(got) == len(toy["offline"]) == 400
    # equal up to float32 rounding: a GEMM's summation order can depend on the batch size
    np.testing.assert_allclose(got, toy["offline"], rtol=0, atol=1e-6)


def test_json_numbers_and_lists_are_read_as_the_file_text(client, toy):
    rows = raw_records(toy)[:20]
    typed = [{**r, "price": float(r["price"]), "genres": [g for g in r["genres"].split("|") if g]} for r in rows]
    np.testing.assert_allclose(predict(client, typed), predict(client, rows), rtol=0, atol=0)


def test_null_is_a_missing_value_and_unknown_categories_are_oov(client, toy):
    row = raw_records(toy)[0]
    records = [
        {**row, "user": "never-seen", "genres": "zzz"},
        {**row, "price": None, "genres": None, "label": 1, "extra_key": "ignored"},
    ]
    artifact = load_artifact(toy["run"])
    encoded = artifact.encoder.encode(
        {k: pa.array([r[k] for r in records], pa.string()) for k in HEADER[1:]}
    )
    with torch.inference_mode():
        expected = torch.sigmoid(
            artifact.model(
                torch.from_numpy(encoded.categorical).long(),
                torch.from_numpy(encoded.numeric),
                torch.from_numpy(encoded.sequence).long(),
            )
        ).numpy()
    assert encoded.categorical[0, 0] == 0 and encoded.sequence[0, 0, 0] == 1  # OOV ids
    np.testing.assert_allclose(predict(client, records), expected, rtol=0, atol=1e-6)


def test_concurrent_clients_get_their_own_answers(client, server, toy):
    rows = raw_records(toy)

    def worker(k: int) -> float:
        with httpx.Client(base_url=server.url, timeout=30) as own:
            worst = 0.0
            for i in range(8):
                start = (k * 37 + i * 11) % 390
                got = predict(own, rows[start : start + 1 + (i % 5)])
                worst = max(worst, float(np.abs(got - toy["offline"][start : start + len(got)]).max()))
            return worst

    with ThreadPoolExecutor(8) as pool:
        assert max(pool.map(worker, range(8))) <= 1e-6


# ---------------------------------------------------------------------------- bad requests


def record(toy, **changes) -> dict:
    return {**raw_records(toy)[0], **changes}


BAD_REQUESTS = {
    # name: (body maker, status, detail pattern)
    "missing field": (
        lambda toy: {"records": [record(toy), record(toy), {k: v for k, v in record(toy).items() if k != "item"}]},
        422, r"^record 2, field 'item': missing",
    ),
    "object where a scalar goes": (
        lambda toy: {"records": [record(toy, user={"id": 3})]}, 422, r"^record 0, field 'user': expected a string or a number, got an object",
    ),
    "list where a scalar goes": (
        lambda toy: {"records": [record(toy), record(toy, item=["i1", "i2"])]}, 422, r"^record 1, field 'item': .*got a list",
    ),
    "non-number in a numeric field": (
        lambda toy: {"records": [record(toy, price="cheap")]}, 422, r"^record 0, field 'price': 'cheap' is not a number",
    ),
    "boolean in a numeric field": (
        lambda toy: {"records": [record(toy, price=True)]}, 422, r"^record 0, field 'price': .*got a boolean",
    ),
    "null inside a multi-valued list": (
        lambda toy: {"records": [record(toy, genres=["a", None])]}, 422, r"^record 0, field 'genres': a list of values may not hold null",
    ),
    "record that is not an object": (
        lambda toy: {"records": [record(toy), 17]}, 422, r"^record 1: expected an object",
    ),
    "empty list": (lambda toy: {"records": []}, 422, r"'records' is empty"),
    "records not a list": (lambda toy: {"records": record(toy)}, 422, r"'records' must be a list"),
    "no records key": (lambda toy: [record(toy)], 422, r'expected a JSON object \{"records"'),
    "too many records": (
        lambda toy: {"records": [{"user": "u1"}] * (MAX_RECORDS + 1)}, 413, r"501 records is over the limit of 500",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_gets_a_4xx_naming_the_problem(case, client, toy):
    make, status, pattern = BAD_REQUESTS[case]
    response = client.post("/predict", json=make(toy))
    assert response.status_code == status, response.text
    assert re.search(pattern, response.json()["detail"]), response.json()["detail"]
    assert_still_serving(client, toy)


def test_nan_is_refused(client, toy):
    body = json.dumps({"records": [record(toy, price=math.nan)]})  # Python writes the NaN literal
    response = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"] == "record 0, field 'price': nan is not a finite number"
    assert_still_serving(client, toy)


@pytest.mark.parametrize(
    "body, pattern",
    [
        (b'{"records": [{"user": "u1",', r"^malformed JSON: Expecting property name"),
        (b"records=1", r"^malformed JSON: Expecting value: line 1 column 1"),
        (b"", r"^malformed JSON: Expecting value"),
        (b'{"records": ["\xff\xfe"]}', r"^malformed JSON: the body is not UTF-8 text"),
    ],
)
def test_malformed_json_gets_400(body, pattern, client, toy):
    response = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert re.search(pattern, response.json()["detail"]), response.json()["detail"]
    assert_still_serving(client, toy)


def test_oversize_body_gets_413(client, toy):
    records = [record(toy, user="u" * 1000) for _ in range(100)]  # ~100 KiB > 64 KiB
    response = client.post("/predict", json={"records": records})
    assert response.status_code == 413
    assert re.search(r"request body of [\d,]+ bytes is over the limit of 65,536 bytes", response.json()["detail"])
    assert_still_serving(client, toy)


def test_oversize_chunked_body_gets_413(client, toy):
    body = json.dumps({"records": [record(toy, user="u" * 1000) for _ in range(100)]}).encode()

    def chunks():  # no content-length: the server must count while it reads
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    response = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["detail"] == "request body is over the limit of 65,536 bytes"
    assert_still_serving(client, toy)


def test_wrong_method_and_path(client, toy):
    assert client.get("/predict").status_code == 405
    assert client.get("/nothing").status_code == 404
    assert_still_serving(client, toy)


def test_small_responses_are_not_held_back_by_nagle(client):
    # without TCP_NODELAY on the server's connections a small response waits for a delayed
    # ACK: every request then takes ~40 ms on Linux; normally a /health takes ~1-2 ms here
    timings = []
    for _ in range(15):
        start = time.perf_counter()
        client.get("/health")
        timings.append(time.perf_counter() - start)
    assert sorted(timings)[len(timings) // 2] < 0.030
    with bind("127.0.0.1", 0) as sock:
        assert sock.proto == socket.IPPROTO_TCP


# ---------------------------------------------------------------------------- metadata, docs


def test_metadata_describes_model_features_and_cost(client, server, toy):
    meta = client.get("/metadata").json()
    artifact = load_artifact(toy["run"])
    assert meta["model"]["family"] == "mldcn"
    assert meta["model"]["weights_sha256"] == artifact.weights_sha256
    assert meta["features"] == artifact.features.to_dict()
    assert meta["cost"] == artifact.info["cost"] and meta["cost"]["interaction_flops"] > 0
    assert [f["name"] for f in meta["input_fields"]] == ["user", "item", "price", "genres"]
    assert {f["name"]: f["kind"] for f in meta["input_fields"]}["price"] == "number"
    assert meta["serving"]["backend"] == server.backend
    assert meta["serving"]["max_body_bytes"] == MAX_BODY
    assert meta["training"]["test"]["auc"] == pytest.approx(artifact.info["test"]["auc"])


def test_openapi_docs_describe_the_request(client):
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    record_schema = body["properties"]["records"]["items"]
    assert record_schema["required"] == ["user", "item", "price", "genres"]
    assert set(spec["paths"]["/predict"]["post"]["responses"]) >= {"200", "400", "413", "422"}
    assert {"/health", "/metadata", "/predict"} <= set(spec["paths"])
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


# ---------------------------------------------------------------------------- a model that takes ids


def test_a_synthetic_model_serves_ids(tmp_path):
    data = SyntheticConfig(train_rows=2000, valid_rows=500, test_rows=500, vocab_sizes=(4, 8), num_numeric=1, seed=1)
    run(RunConfig(model=TINY_MODEL, data=DataConfig(synthetic=data), train=TINY_TRAIN), tmp_path / "run")
    artifact = load_artifact(tmp_path / "run")
    server = Server(tmp_path / "run", "torch", tmp_path / "server.log")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            got = predict(client, [{"c0": 3, "c1": 7, "n0": 0.5}, {"c0": 0, "c1": 1, "n0": -1}])
            with torch.inference_mode():
                logits = artifact.model(torch.tensor([[3, 7], [0, 1]]), torch.tensor([[0.5], [-1.0]]))
            np.testing.assert_allclose(got, torch.sigmoid(logits).numpy(), rtol=0, atol=1e-6)
            bad = client.post("/predict", json={"records": [{"c0": 9, "c1": 7, "n0": 0.5}]})
            assert bad.status_code == 422 and bad.json()["detail"] == "record 0, field 'c0': id 9 is outside [0, 4)"
            bad = client.post("/predict", json={"records": [{"c0": "3", "c1": 7, "n0": 0.5}]})
            assert bad.status_code == 422 and "expected an integer id, got the string '3'" in bad.json()["detail"]
            assert client.get("/metadata").json()["inputs"] == "ids"
    finally:
        server.stop()
