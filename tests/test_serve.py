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
import random
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
import pyarrow.csv as pcsv
import pytest
import torch
from toy_log import (  # the shared toy log
    HEADER,
    TINY_MODEL,
    TINY_TRAIN,
    make_toy_data,
    train_toy,
    write_csv,
)

from mldcn.cli import main
from mldcn.config import ConfigError
from mldcn.data.encode import Encoder
from mldcn.data.schema import CategoricalColumn, DataSchema, NumericColumn
from mldcn.data.source import DataConfig
from mldcn.data.synthetic import SyntheticConfig
from mldcn.models import get_preset
from mldcn.serve.artifact import load_artifact, save_run_artifact
from mldcn.serve.inputs import RawInputs, RecordError
from mldcn.serve.predict import read_probabilities
from mldcn.serve.server import ServeConfig, bind
from mldcn.train.run import RunConfig, run

MAX_BODY = 64 * 1024
MAX_RECORDS = 500
MAX_DEPTH = 16
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
            "--max-body-bytes", str(MAX_BODY), "--max-records", str(MAX_RECORDS), "--max-depth", str(MAX_DEPTH),
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


def answer(response) -> np.ndarray:
    """The probabilities of a /predict answer as ``[records, T]``, in the order of its ``tasks``."""
    body = response.json()
    return np.asarray([[row[task] for task in body["tasks"]] for row in body["probabilities"]], dtype=np.float64)


def predict(client, records) -> np.ndarray:
    response = client.post("/predict", json={"records": records})
    assert response.status_code == 200, response.text
    probabilities = answer(response)
    assert len(probabilities) == len(records)
    return probabilities


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
            artifact.model(encoded.categorical.long(), encoded.numeric, encoded.sequence.long())
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


def post_text(client, body: str | bytes, content_type: str | None = "application/json") -> httpx.Response:
    """POST a body as it is (``json=`` cannot send NaN literals or lone surrogates)."""
    headers = {"content-type": content_type} if content_type else {}
    return client.post("/predict", content=body.encode() if isinstance(body, str) else body, headers=headers)


def with_literal(records: list[dict], index: int, field: str, literal: str) -> str:
    """A /predict body whose ``records[index][field]`` is the JSON text ``literal`` (e.g. ``1e400``)."""
    records = [dict(r) for r in records]
    records[index][field] = "@literal@"
    return json.dumps({"records": records}).replace('"@literal@"', literal)


def nested(depth: int, inner: str = "1") -> str:
    """``inner`` inside ``depth`` JSON lists."""
    return "[" * depth + inner + "]" * depth


def test_nan_is_a_missing_value(client, toy):
    # the rule of the whole project: NaN = missing (as null, an empty field); json.dumps writes the NaN literal.
    # Same positions in same-sized requests: the answers are equal to the bit
    fields = ["price", "user", "genres"]
    with_nan = post_text(client, json.dumps({"records": [record(toy, **{f: math.nan}) for f in fields]}))
    assert with_nan.status_code == 200, with_nan.text
    with_null = predict(client, [record(toy, **{f: None}) for f in fields])
    assert answer(with_nan).tolist() == with_null.tolist()
    assert not np.allclose(with_null, predict(client, [record(toy)] * 3))  # the values were filled, not kept
    assert_still_serving(client, toy)


@pytest.mark.parametrize("field", ["price", "user", "genres"])
@pytest.mark.parametrize("literal, shown", [("Infinity", "Infinity"), ("-Infinity", "-Infinity"), ("1e400", "Infinity"), ("-1e400", "-Infinity")])
def test_infinity_is_refused(field, literal, shown, client, toy):
    response = post_text(client, with_literal([record(toy), record(toy)], 1, field, literal))
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == f"record 1, field {field!r}: {shown} is not a finite number"
    assert_still_serving(client, toy)


RAW_BAD_BODIES = {
    # name: (body maker, status, detail pattern)
    "lone surrogate in a value": (
        lambda toy: json.dumps({"records": [record(toy), record(toy, user="ab\ud800")]}),
        422, r"^record 1, field 'user': the string holds a lone surrogate \\ud800, which is not valid Unicode$",
    ),
    "lone surrogate in a multi-valued list": (
        lambda toy: json.dumps({"records": [record(toy, genres=["a", "\udfff"])]}),
        422, r"^record 0, field 'genres': the string holds a lone surrogate \\udfff",
    ),
    "lone surrogate in a key": (
        lambda toy: json.dumps({"records": [{**record(toy), "x\ud800": 1}]}),
        422, r"^record 0: the key 'x\\ud800' holds a lone surrogate \\ud800, which is not valid Unicode$",
    ),
    "lone surrogate outside the records": (
        lambda toy: json.dumps({"records": [record(toy)], "note": "\ud800"}),
        422, r"^the string holds a lone surrogate \\ud800",
    ),
    "surrogate written as UTF-8 bytes (CESU-8)": (
        lambda toy: json.dumps({"records": [record(toy, user="@")]}).encode().replace(b"@", b"\xed\xa0\x80"),
        422, r"^record 0, field 'user': the string holds a lone surrogate \\ud800",
    ),
    "records nested 5,000 deep": (
        lambda toy: '{"records": ' + nested(5000) + "}", 400, rf"^JSON nested deeper than {MAX_DEPTH} levels$",
    ),
    "a value nested 5,000 deep": (
        lambda toy: with_literal([record(toy)], 0, "user", nested(5000)), 400, rf"^JSON nested deeper than {MAX_DEPTH} levels$",
    ),
    "objects nested 5,000 deep": (
        lambda toy: with_literal([record(toy)], 0, "user", '{"a": ' * 5000 + "1" + "}" * 5000),
        400, rf"^JSON nested deeper than {MAX_DEPTH} levels$",
    ),
    "a value one level too deep": (  # {"records": [{"user": ...}]} holds the value at depth 4
        lambda toy: with_literal([record(toy), record(toy)], 1, "user", nested(MAX_DEPTH - 2)),
        400, rf"^record 1, field 'user': JSON nested deeper than {MAX_DEPTH} levels$",
    ),
    "a value at the depth limit": (
        lambda toy: with_literal([record(toy)], 0, "user", nested(MAX_DEPTH - 3)),
        422, r"^record 0, field 'user': expected a string or a number, got a list$",
    ),
    "a record nested too deep": (
        lambda toy: '{"records": [' + json.dumps(record(toy)) + ", " + nested(MAX_DEPTH) + "]}",
        400, rf"^record 1: JSON nested deeper than {MAX_DEPTH} levels$",
    ),
    "NaN inside a multi-valued list": (
        lambda toy: json.dumps({"records": [record(toy, genres=["a", math.nan])]}),
        422, r"^record 0, field 'genres': a list of values may not hold null or NaN$",
    ),
    "a number text past the float range": (
        lambda toy: json.dumps({"records": [record(toy, price="1e400")]}), 422, r"^record 0, field 'price': '1e400' is not a finite number$",
    ),
    "an integer of 5,000 digits": (
        lambda toy: with_literal([record(toy)], 0, "price", "7" * 5000), 400, r"^malformed JSON: .*5000 digits",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(RAW_BAD_BODIES))
def test_bad_body_gets_a_4xx_naming_the_problem(case, client, toy):
    make, status, pattern = RAW_BAD_BODIES[case]
    response = post_text(client, make(toy))
    assert response.status_code == status, response.text
    assert re.search(pattern, response.json()["detail"]), response.json()["detail"]
    assert_still_serving(client, toy)


def test_valid_unicode_is_served(client, toy):
    # a surrogate pair escape is one character (U+1F600); other non-ASCII text is fine too
    body = json.dumps({"records": [record(toy, user="\U0001f600"), record(toy, user="é\u2028")]})
    assert "\\ud83d\\ude00" in body
    response = post_text(client, body)
    assert response.status_code == 200, response.text
    unknown = predict(client, [record(toy, user="never-seen")])[0]
    # both are unknown users, the OOV id (equal up to float32 rounding: rows of one batch may differ in the last bit)
    np.testing.assert_allclose(answer(response), [unknown, unknown], rtol=0, atol=1e-6)


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


def test_a_raw_number_that_overflows_float32_is_refused():
    # transform none keeps 1e39 as it is, past float32: refused before the model sees an infinity
    schema = DataSchema(categorical=(CategoricalColumn("user"),), numeric=(NumericColumn("price", transform="none"),))
    codec = RawInputs(Encoder(schema, {"user": pa.array(["u1"])}, {"price": {"mean": 0.0, "std": 1.0}}))
    encoded = codec.encode_records([{"user": "u1", "price": 3e38}, {"user": "u2", "price": math.nan}])
    np.testing.assert_array_equal(encoded.numeric, np.array([[3e38], [0.0]], dtype=np.float32))  # NaN: the fill, 0
    with pytest.raises(RecordError, match=r"^record 1, field 'price': '1e\+39' overflows the model's float32 input 'price'$"):
        codec.encode_records([{"user": "u1", "price": 1.0}, {"user": "u1", "price": 1e39}])


def test_max_depth_is_a_positive_limit_json_can_parse():
    assert ServeConfig().max_depth == 32
    with pytest.raises(ConfigError, match="max_depth must be > 0"):
        ServeConfig(max_depth=0)
    with pytest.raises(ConfigError, match="max_depth must be <= 512, got 513"):
        ServeConfig(max_depth=513)


# ---------------------------------------------------------------------------- hostile bodies

ODD_STRINGS = [
    "", " ", "u1", "a|b|", "|", "\x00", "é", "\u2028", "\U0001f600", "\ud800", "\udfff", "x\udc80y",
    "1e400", "NaN", "Infinity", "-0", "0x1F", "1_000", " 5 ", "\\", '"', "x" * 3000,
]  # fmt: skip
ODD_NUMBERS = [0, -1, 1.5, 1e-320, 1e20, 1e308, 3.5e38, 2**63, -(2**63) - 1, 10**400, math.nan, math.inf, -math.inf, True, False]
NUMBER_LITERALS = [
    "NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e-400", "-0.0", "1E+2", "1e20", "-3e38", "7" * 5000, "1" + "0" * 400,
]  # fmt: skip
CONTENT_TYPES = [
    "application/json", "application/json; charset=latin-1", "text/plain", "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x", None,
]  # fmt: skip


def odd_value(rng, depth: int):
    """A random JSON value: odd strings and numbers, and lists and objects ``depth`` deep at most."""
    draw = rng.random()
    if depth > 0 and draw < 0.15:
        return [odd_value(rng, depth - 1) for _ in range(rng.randrange(4))]
    if depth > 0 and draw < 0.25:
        return {rng.choice(ODD_STRINGS): odd_value(rng, depth - 1) for _ in range(rng.randrange(4))}
    if draw < 0.55:
        return rng.choice(ODD_STRINGS)
    if draw < 0.9:
        return rng.choice(ODD_NUMBERS)
    return None


def hostile_body(rng, records: list[dict]) -> bytes:
    """One random body: valid records with odd values, odd shapes, deep nesting, odd bytes and encodings."""
    good = json.dumps({"records": [dict(r) for r in rng.sample(records, rng.randint(1, 4))]})
    draw = rng.randrange(9)
    if draw == 0:  # valid records with some values replaced, dropped or added
        changed = [dict(r) for r in rng.sample(records, rng.randint(1, 4))]
        for r in changed:
            for name in rng.sample(list(r), rng.randint(1, len(r))):
                choice = rng.random()
                if choice < 0.7:
                    r[name] = odd_value(rng, 3)
                elif choice < 0.85:
                    del r[name]
                else:
                    r[rng.choice(ODD_STRINGS)] = odd_value(rng, 2)
        return json.dumps({"records": changed}).encode()
    if draw == 1:  # an odd value anywhere: the whole body, the records, one record
        where = rng.randrange(3)
        value = odd_value(rng, 5)
        body = value if where == 0 else {"records": value} if where == 1 else {"records": [value, *records[:1]]}
        return json.dumps(body).encode()
    if draw == 2:  # deep nesting, at the top, as the records, in a record's value
        depth = rng.choice([MAX_DEPTH - 3, MAX_DEPTH - 2, MAX_DEPTH, 100, 990, 1000, 5000, 20_000])
        opening, closing = rng.choice([("[", "]"), ('{"a": ', "}")])
        value = opening * depth + rng.choice(["1", "NaN", '"\\ud800"', "[]"]) + closing * depth
        where = rng.randrange(3)
        if where == 0:
            return value.encode()
        if where == 1:
            return ('{"records": ' + value + "}").encode()
        return with_literal(records[:2], rng.randrange(2), rng.choice(list(records[0])), value).encode()
    if draw == 3:  # number literals Python's json reads (NaN, Infinity) or overflows (1e400, 5,000 digits)
        record = rng.choice(records)
        return with_literal([record], 0, rng.choice(list(record)), rng.choice(NUMBER_LITERALS)).encode()
    if draw == 4:  # cut short
        return good[: rng.randrange(len(good))].encode()
    if draw == 5:  # bytes that are not UTF-8 inside a string, or nothing but random bytes
        if rng.random() < 0.5:
            return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        bad = rng.choice([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xf4\x90\x80\x80", b"\x80"])
        return good.encode().replace(b"u", bad, 1)
    if draw == 6:  # other encodings of a good body, a BOM
        return rng.choice([good.encode("utf-16"), good.encode("utf-32"), b"\xef\xbb\xbf" + good.encode(), good.encode("utf-16-le")])
    if draw == 7:  # nearly empty bodies
        return rng.choice([b"", b" ", b"null", b"[]", b"{}", b'{"records": null}', b'{"records": [{}]}', b"\x00", b"NaN"])
    return good.encode() * rng.choice([1, 2, 300])  # a good body, repeated (past the byte limit when 300 times)


def assert_no_500(client, rng, records: list[dict], count: int) -> dict[int, int]:
    """POST ``count`` hostile bodies; every answer is < 500, a 200 holds probabilities in [0, 1] and a 4xx a
    string ``detail``. The status counts."""
    statuses: dict[int, int] = {}
    failures = []
    for _ in range(count):
        body = hostile_body(rng, records)
        response = post_text(client, body, rng.choice(CONTENT_TYPES))
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        if response.status_code >= 500:
            failures.append((response.status_code, body[:300]))
        elif response.status_code == 200:
            rows = response.json()["probabilities"]
            if not all(isinstance(p, float) and 0 <= p <= 1 for row in rows for p in row.values()):
                failures.append((200, body[:300], response.text[:300]))
        elif response.status_code >= 400:
            detail = response.json().get("detail")
            if not isinstance(detail, str) or not detail:
                failures.append((response.status_code, body[:300], detail))
    assert not failures, failures[:10]
    return statuses


def test_hostile_bodies_never_get_a_500(client, toy):
    statuses = assert_no_500(client, random.Random(20261128), raw_records(toy)[:20], 400)
    assert set(statuses) == {200, 400, 413, 422}, statuses  # the generator reaches every answer
    assert_still_serving(client, toy)


def test_hostile_bodies_never_get_a_500_with_ids(ids):
    records = [{"c0": c0, "c1": c1, "n0": n0} for c0, c1, n0 in [(3, 7, 0.5), (0, 1, -1), (1, 4, 2.5), (2, 0, 0)]]
    statuses = assert_no_500(ids["client"], random.Random(7), records, 300)
    assert set(statuses) == {200, 400, 413, 422}, statuses
    assert ids["client"].get("/health").status_code == 200


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
    assert meta["serving"]["max_depth"] == MAX_DEPTH
    assert meta["training"]["test"]["label"]["auc"] == pytest.approx(artifact.info["test"]["label"]["auc"])
    assert [t["name"] for t in meta["features"]["tasks"]] == ["label"]  # the toy schema's one label


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


@pytest.fixture(scope="module")
def ids(tmp_path_factory):
    """A model trained on the synthetic log (fields c0 < 4, c1 < 8, n0), its artifact and a client of its server."""
    base = tmp_path_factory.mktemp("serve-ids")
    data = SyntheticConfig(train_rows=2000, valid_rows=500, test_rows=500, vocab_sizes=(4, 8), num_numeric=1, seed=1)
    save_run_artifact(run(RunConfig(model=TINY_MODEL, data=DataConfig(synthetic=data), train=TINY_TRAIN), base / "run"))
    server = Server(base / "run", "torch", base / "server.log")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            yield {"artifact": load_artifact(base / "run"), "client": client}
    finally:
        server.stop()


def ids_probabilities(artifact, categorical, numeric) -> np.ndarray:
    with torch.inference_mode():
        logits = artifact.model(torch.tensor(categorical), torch.tensor(numeric, dtype=torch.float32))
    return torch.sigmoid(logits).numpy()


def test_a_synthetic_model_serves_ids(ids):
    client, artifact = ids["client"], ids["artifact"]
    got = predict(client, [{"c0": 3, "c1": 7, "n0": 0.5}, {"c0": 0, "c1": 1, "n0": -1}])
    np.testing.assert_allclose(got, ids_probabilities(artifact, [[3, 7], [0, 1]], [[0.5], [-1.0]]), rtol=0, atol=1e-6)
    bad = client.post("/predict", json={"records": [{"c0": 9, "c1": 7, "n0": 0.5}]})
    assert bad.status_code == 422 and bad.json()["detail"] == "record 0, field 'c0': id 9 is outside [0, 4)"
    bad = client.post("/predict", json={"records": [{"c0": "3", "c1": 7, "n0": 0.5}]})
    assert bad.status_code == 422 and "expected an integer id, got the string '3'" in bad.json()["detail"]
    assert client.get("/metadata").json()["inputs"] == "ids"


def test_ids_nan_number_is_missing_and_filled_with_zero(ids):
    # as a file of ids read by `mldcn predict` (IdInputs.encode_columns fills a missing number with 0.0)
    client, artifact = ids["client"], ids["artifact"]
    answers = []
    for value in (math.nan, None, 0.0):
        response = post_text(client, json.dumps({"records": [{"c0": 3, "c1": 7, "n0": value}]}))
        assert response.status_code == 200, response.text
        answers.append(answer(response).tolist())
    assert answers[0] == answers[1] == answers[2]
    np.testing.assert_allclose(answers[0], ids_probabilities(artifact, [[3, 7]], [[0.0]]), rtol=0, atol=1e-6)
    assert predict(client, [{"c0": 3, "c1": 7, "n0": 5.0}]).tolist() != answers[0]


@pytest.mark.parametrize(
    "field, literal, detail",
    [
        ("c0", "NaN", "expected an integer id, got NaN"),
        ("c1", "Infinity", "expected an integer id, got Infinity"),
        ("c0", "2.0", "expected an integer id, got the number 2.0"),
        ("n0", "Infinity", "Infinity is not a finite number"),
        ("n0", "-1e400", "-Infinity is not a finite number"),
        ("n0", "1e39", "the number 1e+39 is outside the float32 range (±3.4e38)"),
        ("n0", "1" + "0" * 400, "the number 1000000000000000000000000000000000000000... is outside the float32 range (±3.4e38)"),
        ("n0", '"0.5"', "expected a number, got the string '0.5'"),
    ],
)
def test_ids_bad_numbers_are_refused(field, literal, detail, ids):
    client = ids["client"]
    response = post_text(client, with_literal([{"c0": 3, "c1": 7, "n0": 0.5}] * 2, 1, field, literal))
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == f"record 1, field {field!r}: {detail}"
    assert client.get("/health").status_code == 200


def test_ids_a_number_the_model_cannot_compute_with_is_refused(ids):
    # 1e20 is a float32, but the model's products overflow: its probability would be NaN (JSON null)
    client = ids["client"]
    response = post_text(client, with_literal([{"c0": 3, "c1": 7, "n0": 0.5}] * 3, 2, "n0", "1e20"))
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == (
        "record 2: the model's probability is NaN (a number in the record is too large for its float32 arithmetic)"
    )
    assert client.get("/health").status_code == 200


# ---------------------------------------------------------------------------- a multi-task model


def test_a_multi_task_model_serves_the_same_per_task_probabilities_as_predict(tmp_path):
    data = SyntheticConfig(
        train_rows=2000, valid_rows=500, test_rows=500, vocab_sizes=(4, 8, 16), num_numeric=1, seed=2,
        tasks=("click", "good_click"), task_rates=(0.3,),
    )  # fmt: skip
    model = get_preset("mldcn_mmoe").replace(embedding_dim=4).with_interaction(rank=4, num_layers=1)
    save_run_artifact(run(RunConfig(model=model, data=DataConfig(synthetic=data), train=TINY_TRAIN), tmp_path / "run"))
    rng = np.random.default_rng(0)
    rows = [[int(rng.integers(4)), int(rng.integers(8)), int(rng.integers(16)), round(float(rng.normal()), 3)] for _ in range(64)]
    write_csv(tmp_path / "ids.csv", [[str(v) for v in row] for row in rows], header=["c0", "c1", "c2", "n0"])
    assert main(["predict", str(tmp_path / "run"), "--input", str(tmp_path / "ids.csv"), "--out", str(tmp_path / "p.csv")]) == 0
    offline = read_probabilities(tmp_path / "p.csv")
    assert offline.shape == (64, 2)
    assert pcsv.read_csv(tmp_path / "p.csv").column_names == ["probability_click", "probability_good_click"]
    server = Server(tmp_path / "run", "torch", tmp_path / "server.log")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            records = [{"c0": a, "c1": b, "c2": c, "n0": x} for a, b, c, x in rows]
            response = client.post("/predict", json={"records": records})
            assert response.status_code == 200, response.text
            assert response.json()["tasks"] == ["click", "good_click"]
            assert np.abs(answer(response) - offline).max() <= 1e-6
            spec = client.get("/openapi.json").json()
            schema = spec["paths"]["/predict"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
            assert list(schema["properties"]["probabilities"]["items"]["properties"]) == ["click", "good_click"]
            assert client.get("/metadata").json()["features"]["tasks"][1]["name"] == "good_click"
    finally:
        server.stop()
