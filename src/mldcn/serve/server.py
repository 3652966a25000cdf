"""The HTTP prediction service: FastAPI on uvicorn (the ``serve`` extra).

    POST /predict    {"records": [{field: value, ...}, ...]}
                     → {"tasks": [task, ...], "probabilities": [{task: p, ...}, ...]}
    GET  /health     {"status": "ok"}
    GET  /metadata   model, features, input fields, FLOPs and parameters, backend
    GET  /docs       OpenAPI docs (the schema at /openapi.json)

A record holds the raw columns of the training schema (the values of one row of
the raw file; the label is not needed, extra keys are ignored), or, for a model
trained on encoded ids, one id or value per model field (see
:mod:`mldcn.serve.inputs`). Bad requests get a 4xx whose ``detail`` names the
problem, and the server goes on serving:

    400  malformed JSON, or JSON nested deeper than ``max_depth`` levels
    413  body over ``max_body_bytes``, or more than ``max_records`` records
    422  not ``{"records": [...]}``, an empty list, a missing field, a value of
         the wrong type, an infinite number, a number past float32, or a string
         that is not valid Unicode (a lone surrogate escape such as
         ``\\ud800``), naming the record index and the field

A NaN (Python's json reads the literals ``NaN``, ``Infinity``, ``-Infinity``)
is a missing value, as ``null``; an infinity is refused.

Bad requests are refused before they join a batch (:mod:`mldcn.serve.batching`);
no request is answered 500: a forward pass that fails is retried request by
request, and a request that fails alone gets 503 (logged, and counted in
``/metrics``).

Serving, per worker process:

* **Dynamic batching** (``batch_wait_ms`` > 0): requests that arrive within
  the window, up to ``max_batch_rows`` rows, are encoded and scored in one
  forward pass and answered separately, each with the probabilities it gets
  alone (see :mod:`mldcn.serve.batching`). ``batch_wait_ms = 0`` scores each
  request alone.
* The forward passes run in ``concurrency`` worker threads, never on the event
  loop; JSON parsing and the per-request checks run on the loop (in a thread
  for requests of more than :data:`INLINE_CHECK_RECORDS` records).
* **Workers** (``workers`` > 1): uvicorn's process supervisor starts that many
  processes on the one listening socket, each with its own model and batcher,
  and restarts one that dies. ``GET /metrics`` then reports the sum over all
  workers (prometheus_client's multiprocess mode), whichever worker answers.
* **Shutdown**: on SIGTERM or SIGINT the server stops accepting connections,
  answers the requests it holds (their batches run), and exits with status 0.

    GET  /metrics    Prometheus text: requests by endpoint and status code, latency,
                     requests and rows per forward pass, failed forward passes

The backend (eager PyTorch or ONNX Runtime) is chosen at start-up.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import numpy as np
from fastapi import FastAPI, HTTPException, Request, Response
from pydantic import BaseModel, Field

from mldcn.config import Config, ConfigError
from mldcn.serve.artifact import Artifact
from mldcn.serve.batching import Batcher, BatchFailed
from mldcn.serve.inputs import RecordError, input_codec, json_kind, quoted
from mldcn.serve.predict import Backend, make_backend, score

logger = logging.getLogger("mldcn.serve")


# json.loads recurses once per level and raises RecursionError near Python's recursion
# limit (1000): a deeper max_depth could not be told apart from that failure
DEPTH_CEILING = 512
# requests of up to this many records are checked on the event loop (a thread hop costs
# about what checking 64 records does); larger ones in a worker thread
INLINE_CHECK_RECORDS = 64


@dataclass(frozen=True)
class ServeConfig(Config):
    """How to serve an artifact.

    Attributes:
        backend: ``torch`` (eager PyTorch) or ``onnx`` (ONNX Runtime).
        precision: ``fp32``, or ``bf16`` autocast (torch backend only).
        onnx_path: the ONNX file for the onnx backend (default: the artifact's
            ``model.onnx``, else an export made at start-up).
        threads: intra-op threads per forward pass (torch and ONNX Runtime).
        concurrency: forward passes running at the same time.
        max_body_bytes: larger request bodies get 413.
        max_records: more records in one request get 413.
        max_depth: JSON nested deeper (``{"records": [{...}]}`` is 3 levels, a
            list value in a record 4) gets 400; at most :data:`DEPTH_CEILING`.
        batch_size: rows per forward pass within one request.
        batch_wait_ms: how long the first request of a batch waits for others
            (dynamic batching); 0: every request is scored alone.
        max_batch_rows: a batch is scored once it holds this many rows; a
            larger request is scored alone (in forward passes of ``batch_size``).
        workers: server processes on the one socket, each with its own model.
    """

    backend: Literal["torch", "onnx"] = "torch"
    precision: Literal["fp32", "bf16"] = "fp32"
    onnx_path: str | None = None
    threads: int | None = 1
    concurrency: int = 2
    max_body_bytes: int = 8 << 20
    max_records: int = 10_000
    max_depth: int = 32
    batch_size: int = 8192
    batch_wait_ms: float = 0.0
    max_batch_rows: int = 256
    workers: int = 1

    _positive = (
        "threads", "concurrency", "max_body_bytes", "max_records", "max_depth", "batch_size", "max_batch_rows", "workers",
    )  # fmt: skip
    _non_negative = ("batch_wait_ms",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_depth > DEPTH_CEILING:
            raise ConfigError(f"ServeConfig.max_depth must be <= {DEPTH_CEILING}, got {self.max_depth}")


class PredictResponse(BaseModel):
    tasks: list[str] = Field(description="the model's tasks, in the order of its outputs")
    probabilities: list[dict[str, float]] = Field(
        description="each record's probability of each task, in request order"
    )


class ErrorResponse(BaseModel):
    detail: str = Field(description="what is wrong with the request")


class Health(BaseModel):
    status: str


def _request_schema(codec, max_records: int) -> dict:
    """The OpenAPI schema of a /predict body, with this model's record fields."""
    record = {
        "type": "object",
        "properties": {f.name: f.json_type for f in codec.fields},
        "required": [f.name for f in codec.fields],
        "additionalProperties": True,
    }
    return {
        "type": "object",
        "required": ["records"],
        "properties": {"records": {"type": "array", "minItems": 1, "maxItems": max_records, "items": record}},
        "example": {"records": [codec.example()]},
    }


class ForwardError(RuntimeError):
    """The model could not score a request, alone (not a problem of its values): answered 503."""


_NAN_PROBLEM = "the model's probability is NaN (a number in the record is too large for its float32 arithmetic)"


class PredictionService:
    """The model, its input codec and backend: records → probabilities (thread-safe).

    Requests are scored in two stages (the codec's, :class:`~mldcn.serve.inputs.Codec`):
    :meth:`check` one request's records, then :meth:`score_parts` the checked
    requests of a batch together.
    """

    def __init__(self, artifact: Artifact, config: ServeConfig, backend: Backend | None = None) -> None:
        import torch  # noqa: PLC0415

        if config.threads:
            torch.set_num_threads(config.threads)
        self.artifact = artifact
        self.config = config
        self.codec = input_codec(artifact.encoder, artifact.features)
        self.backend = backend or make_backend(
            artifact, config.backend, config.precision, config.onnx_path, config.threads
        )

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.artifact.features.task_names

    def check(self, records: list) -> Any:
        """One request's records, checked (:class:`RecordError` on a bad one), ready for :meth:`score_parts`."""
        return self.codec.check(records)

    def score_parts(self, parts: list, on_failure=None) -> list[np.ndarray | RecordError | ForwardError]:
        """Checked requests → each one's probabilities float32 ``[n, T]``, or its error; never raises.

        A record of finite inputs can still overflow the model's float32 arithmetic
        (1e20 in the numeric field of the tests' synthetic model of ids): its NaN
        probability is refused too (:class:`RecordError`), rather than answered as
        JSON ``null``; rows are scored independently, so that refuses only its request.

        If encoding or the forward pass raises, each request is scored again
        alone, so one that cannot be scored does not take the others down; one
        that fails alone gets :class:`ForwardError`. ``on_failure()`` is called
        on each failed attempt, and the error is logged.
        """
        try:
            return self._score_parts(parts)
        except Exception as error:
            logger.exception("scoring %d request(s) failed%s", len(parts), "; scoring each alone" if len(parts) > 1 else "")
            if on_failure is not None:
                on_failure()
            if len(parts) == 1:
                return [ForwardError(f"the model could not score this request ({type(error).__name__}: {error})")]
            return [self.score_parts([part], on_failure)[0] for part in parts]

    def _score_parts(self, parts: list) -> list[np.ndarray | RecordError]:
        batch, errors = self.codec.encode(parts)
        tasks = len(self.tasks)
        probabilities = score(self.backend, batch, self.config.batch_size, tasks) if len(batch) else np.zeros((0, tasks), np.float32)
        results: list[np.ndarray | RecordError] = []
        start = 0
        for part, error in zip(parts, errors):
            if error is not None:
                results.append(error)
                continue
            rows = probabilities[start : start + self.codec.rows(part)]  # [n, T]
            start += len(rows)
            nan = np.flatnonzero(np.isnan(rows).any(axis=1))
            results.append(RecordError(int(nan[0]), None, _NAN_PROBLEM) if nan.size else rows)
        if start != len(probabilities):  # an invariant, not a user error
            raise RuntimeError(f"{len(probabilities)} probabilities for {start} rows")
        return results

    def predict(self, records: list) -> np.ndarray:
        """Probabilities float32 ``[len(records), T]`` of one request scored alone.

        Raises :class:`RecordError` on a bad record, :class:`ForwardError` if the model fails.
        """
        result = self.score_parts([self.check(records)])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def metadata(self) -> dict:
        info = self.artifact.info
        features = self.artifact.features
        return {
            "model": {
                "family": self.artifact.config.family,
                "config": info["model"],
                "artifact": str(self.artifact.path),
                "artifact_format_version": info["format_version"],
                "mldcn_version": info.get("mldcn_version"),
                "weights_sha256": info["weights_sha256"],
            },
            "cost": info.get("cost", {}),
            "features": features.to_dict(),
            "inputs": info.get("inputs", "raw" if self.artifact.encoder is not None else "ids"),
            "input_fields": [f.to_dict() for f in self.codec.fields],
            "schema": self.artifact.encoder.schema.name if self.artifact.encoder is not None else None,
            "serving": {
                "backend": self.backend.name,
                "precision": self.config.precision if self.backend.name == "torch" else "fp32",
                "threads": self.config.threads,
                "concurrency": self.config.concurrency,
                "batch_wait_ms": self.config.batch_wait_ms,
                "max_batch_rows": self.config.max_batch_rows,
                "workers": self.config.workers,
                "worker_pid": os.getpid(),
                "max_body_bytes": self.config.max_body_bytes,
                "max_records": self.config.max_records,
                "max_depth": self.config.max_depth,
            },
            "training": {k: info[k] for k in ("test", "data") if k in info},
        }


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"request body of {int(declared):,} bytes is over the limit of {limit:,} bytes")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise HTTPException(413, f"request body is over the limit of {limit:,} bytes")
    return bytes(body)


def _parse(body: bytes, max_depth: int) -> Any:
    """The JSON value of a body: 400 when malformed or too deep, 422 for a string that is not Unicode."""
    try:
        data = json.loads(body)
    except UnicodeDecodeError:
        raise HTTPException(400, "malformed JSON: the body is not UTF-8 text") from None
    except RecursionError:  # thousands of levels: json.loads recurses per level
        raise HTTPException(400, f"JSON nested deeper than {max_depth} levels") from None
    except json.JSONDecodeError as error:
        raise HTTPException(400, f"malformed JSON: {error}") from None
    except ValueError as error:  # an integer of more than sys.get_int_max_str_digits() digits
        reason = str(error).split(";")[0]  # without its advice to call sys.set_int_max_str_digits
        raise HTTPException(400, f"malformed JSON: {reason}") from None
    _check_json(data, max_depth)
    return data


def _refusal(status: int, index: int | None, field: str | None, problem: str) -> HTTPException:
    """An HTTP error naming the record and field when ``index`` is not None."""
    return HTTPException(status, str(RecordError(index, field, problem)) if index is not None else problem)


def _check_unicode(text: str, index: int | None, field: str | None, what: str = "the string") -> None:
    """422 when ``text`` holds a character UTF-8 cannot encode: a surrogate without its pair (JSON ``"\\ud800"``)."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        problem = f"{what} holds a lone surrogate \\u{ord(text[error.start]):04x}, which is not valid Unicode"
        raise _refusal(422, index, field, problem) from None


def _check_json(data: Any, max_depth: int) -> None:
    """Refuse JSON nested deeper than ``max_depth`` levels (400) or holding a lone surrogate (422).

    ``{"records": [{...}]}`` is 3 levels deep. A problem inside ``records`` names
    the record index and, within a record, the field. Records are checked one at
    a time, each without recursion (a value may be hundreds of levels deep).
    """
    records = data.get("records") if isinstance(data, dict) else None
    if not isinstance(records, list):
        _check_value(data, 1, None, max_depth)
        return
    _check_value({key: value for key, value in data.items() if value is not records}, 1, None, max_depth)
    if max_depth < 2:
        raise _refusal(400, None, None, f"JSON nested deeper than {max_depth} levels")
    for index, record in enumerate(records):
        _check_value(record, 3, index, max_depth)


def _check_value(value: Any, depth: int, index: int | None, max_depth: int) -> None:
    """Check a JSON value ``depth`` levels deep: record ``index`` itself (at depth 3), or outside the records."""
    stack: list[tuple[Any, int, str | None]] = [(value, depth, None)]  # (value, its depth, the record's field)
    while stack:
        value, depth, field = stack.pop()
        kind = type(value)  # json.loads makes dict, list, str, int, float, bool, None: no subclasses
        if kind is str:
            _check_unicode(value, index, field)
            continue
        if kind is not dict and kind is not list:
            continue
        if depth > max_depth:
            raise _refusal(400, index, field, f"JSON nested deeper than {max_depth} levels")
        is_record = depth == 3 and index is not None and kind is dict  # its keys are the fields
        if kind is dict:
            if not "".join(value).isascii():  # the usual case in one call
                for key in value:
                    _check_unicode(key, index, field, f"the key {quoted(key)}")
            children = value.items()
        else:
            children = enumerate(value)
        for key, child in children:
            child_kind = type(child)
            if child_kind is str:
                if not child.isascii():  # (the usual case without a call)
                    _check_unicode(child, index, key if is_record else field)
            elif child_kind is dict or child_kind is list:
                stack.append((child, depth + 1, key if is_record else field))


def _records(data: Any, max_records: int) -> list:
    if not isinstance(data, dict) or "records" not in data:
        raise HTTPException(422, 'expected a JSON object {"records": [{field: value, ...}, ...]}')
    records = data["records"]
    if not isinstance(records, list):
        raise HTTPException(422, f"'records' must be a list of objects, got {json_kind(records)}")
    if not records:
        raise HTTPException(422, "'records' is empty: send at least one record")
    if len(records) > max_records:
        raise HTTPException(413, f"{len(records):,} records is over the limit of {max_records:,} per request")
    return records


# ---------------------------------------------------------------------------- metrics

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's multiprocess mode, set for workers > 1
# server-side latency, 0.5 ms to 10 s; requests and rows per forward pass, powers of 2
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = tuple(float(2**k) for k in range(15))  # 1 ... 16384
_ENDPOINTS = frozenset({"/predict", "/health", "/metadata", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


class ServingMetrics:
    """The server's Prometheus metrics (``prometheus_client``), in a registry of their own.

    With ``PROMETHEUS_MULTIPROC_DIR`` set (``serve`` sets it for several
    workers), each process writes its values to files there and
    :meth:`exposition` adds up the files of all processes; otherwise it reports
    this process.
    """

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram  # noqa: PLC0415

        self.registry = CollectorRegistry()
        self.multiprocess_dir = os.environ.get(MULTIPROCESS_ENV)
        self.requests = Counter(
            "mldcn_http_requests", "HTTP requests answered, by endpoint and status code",
            ["endpoint", "code"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "mldcn_http_request_duration_seconds", "time from a request's arrival to the end of its answer",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.batch_requests = Histogram(
            "mldcn_batch_requests", "requests scored together in one batch (forward pass)",
            buckets=SIZE_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.batch_rows = Histogram(
            "mldcn_batch_rows", "rows scored together in one batch", buckets=SIZE_BUCKETS, registry=self.registry
        )
        self.failures = Counter(
            "mldcn_forward_failures", "attempts to score a batch or a request that raised (each is logged)",
            registry=self.registry,
        )  # fmt: skip

    def observe_request(self, endpoint: str, code: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(code)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def observe_batch(self, requests: int, rows: int) -> None:
        self.batch_requests.observe(requests)
        self.batch_rows.observe(rows)

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format."""
        from prometheus_client import CollectorRegistry, generate_latest  # noqa: PLC0415
        from prometheus_client.multiprocess import MultiProcessCollector  # noqa: PLC0415

        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        everyone = CollectorRegistry()
        MultiProcessCollector(everyone, path=self.multiprocess_dir)
        return generate_latest(everyone)


class _CountRequests:
    """ASGI middleware: each HTTP request's status code and latency into :class:`ServingMetrics`."""

    def __init__(self, app, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # an exception without an answer: Starlette answers 500

        async def send_and_note(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            endpoint = scope["path"] if scope["path"] in _ENDPOINTS else "other"
            self.metrics.observe_request(endpoint, status, time.perf_counter() - start)


def create_app(service: PredictionService) -> FastAPI:
    """The FastAPI application serving ``service``, with its batcher and metrics."""
    import mldcn  # noqa: PLC0415

    artifact = service.artifact
    config = service.config
    metrics = ServingMetrics()
    batcher = Batcher(
        functools.partial(service.score_parts, on_failure=metrics.failures.inc),
        wait_s=config.batch_wait_ms / 1000,
        max_rows=config.max_batch_rows,
        runners=config.concurrency,
        observe=metrics.observe_batch,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await batcher.close()  # uvicorn has answered every request by now; nothing should be queued

    app = FastAPI(
        title="mldcn prediction service",
        version=mldcn.__version__,
        description=(
            f"Probabilities of the tasks {list(service.tasks)} from a {artifact.config.family} model "
            f"({artifact.path}), backend {service.backend.name}. POST raw records to /predict."
        ),
        lifespan=lifespan,
    )
    app.add_middleware(_CountRequests, metrics=metrics)
    errors = {
        400: {"model": ErrorResponse, "description": "malformed JSON, or nested deeper than the limit"},
        413: {"model": ErrorResponse, "description": "body or record count over the limit"},
        503: {"model": ErrorResponse, "description": "the model failed on this request (logged); try again"},
        422: {
            "model": ErrorResponse,
            "description": "not {records: [...]}, empty, a missing field, a wrong type, an infinity, "
            "a number past float32 or a lone surrogate",
        },
    }

    @app.get("/health", response_model=Health, summary="liveness")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/metadata", summary="model, features, FLOPs and serving settings")
    async def metadata() -> dict:
        return service.metadata()

    @app.get(
        "/metrics",
        summary="Prometheus metrics (all workers)",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
    )
    def prometheus_metrics() -> Response:  # a plain def: FastAPI runs it in a thread (it reads files)
        from prometheus_client import CONTENT_TYPE_LATEST  # noqa: PLC0415

        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    tasks = list(service.tasks)
    answer = {
        "description": f"each record's probability of each task ({', '.join(tasks)})",
        "content": {"application/json": {"schema": _response_schema(tasks)}},
    }

    @app.post(
        "/predict",
        response_model=PredictResponse,
        responses={200: answer, **errors},
        summary="the probability of each task for each record",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _request_schema(service.codec, config.max_records)}},
            }
        },
    )
    async def predict(request: Request) -> dict:
        body = await _read_body(request, config.max_body_bytes)
        records = _records(_parse(body, config.max_depth), config.max_records)
        try:
            if len(records) <= INLINE_CHECK_RECORDS:
                part = service.check(records)
            else:
                part = await anyio.to_thread.run_sync(service.check, records)
            probabilities = await batcher.submit(part, len(records))  # checked: only good requests join a batch
        except RecordError as error:  # a bad record; or, from its batch, a number its float32 arithmetic cannot take
            raise HTTPException(422, str(error)) from None
        except (ForwardError, BatchFailed) as error:
            raise HTTPException(503, str(error)) from None
        return {"tasks": tasks, "probabilities": [dict(zip(tasks, row)) for row in probabilities.tolist()]}

    return app


def _response_schema(tasks: list[str]) -> dict:
    """The OpenAPI schema of a /predict answer, naming this model's tasks."""
    record = {
        "type": "object",
        "properties": {task: {"type": "number", "minimum": 0, "maximum": 1} for task in tasks},
        "required": tasks,
    }
    return {
        "type": "object",
        "required": ["tasks", "probabilities"],
        "properties": {
            "tasks": {"type": "array", "items": {"type": "string", "enum": tasks}},
            "probabilities": {"type": "array", "items": record},
        },
        "example": {"tasks": tasks, "probabilities": [{task: 0.5 for task in tasks}]},
    }


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free port, see ``getsockname()``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on such sockets, and without it
    # Nagle's algorithm meets delayed ACKs and every small response waits ~40 ms
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(service: PredictionService, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning") -> None:
    """Serve until SIGTERM or SIGINT, then finish the requests in flight and return.

    Prints ``listening on http://HOST:PORT`` (the real port) first. With
    ``service.config.workers`` > 1, uvicorn's supervisor runs that many worker
    processes on the socket; each loads the artifact again (``service`` itself
    only checked that it loads) and the supervisor restarts a worker that dies.
    """
    import uvicorn  # noqa: PLC0415

    sock = bind(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    workers = service.config.workers
    print(
        f"mldcn serve: {service.artifact.config.family} ({service.backend.name} backend, "
        f"{workers} worker{'s' if workers > 1 else ''}) listening on http://{shown}:{bound}  "
        f"(docs: http://{shown}:{bound}/docs)",
        flush=True,
    )
    options = {"log_level": log_level, "access_log": False, "timeout_keep_alive": 30}
    try:
        if workers == 1:
            _serve_one(uvicorn.Config(create_app(service), **options), sock)
        else:
            _serve_workers(service, options, sock)
    finally:
        sock.close()
    sys.stdout.flush()


def _serve_one(config, sock: socket.socket) -> None:
    """Run one uvicorn server in this process; return (status 0) after a graceful shutdown.

    uvicorn handles SIGTERM and SIGINT while it serves (stop accepting, finish
    the requests in flight), then raises the signal again for the handler it
    found: that one does nothing once uvicorn has shut down, so the process
    exits normally instead of dying of the signal.
    """
    import uvicorn  # noqa: PLC0415

    server = uvicorn.Server(config)

    def after_uvicorn(signum, frame) -> None:
        if not server.should_exit:  # before uvicorn took the signal over: nothing is served yet
            raise SystemExit(0)

    previous = {sig: signal.signal(sig, after_uvicorn) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _worker_app(artifact_path: str, config: ServeConfig) -> FastAPI:
    """The app of one worker process, with its own copy of the model (uvicorn calls it in the worker)."""
    from mldcn.serve.artifact import load_artifact  # noqa: PLC0415

    return create_app(PredictionService(load_artifact(artifact_path), config))


def _serve_workers(service: PredictionService, options: dict, sock: socket.socket) -> None:
    """Run ``service.config.workers`` worker processes under uvicorn's supervisor until SIGTERM/SIGINT.

    The workers are spawned (fresh interpreters: no torch state is forked) and
    inherit the listening socket, so the kernel hands each new connection to one
    of them. On SIGTERM or SIGINT the supervisor sends each worker SIGTERM, each
    finishes its requests in flight, and the supervisor returns when all have
    exited. The metrics of all workers go to one temporary directory that
    ``/metrics`` adds up (unless ``PROMETHEUS_MULTIPROC_DIR`` names one already).
    """
    import uvicorn  # noqa: PLC0415
    from uvicorn.supervisors import Multiprocess  # noqa: PLC0415

    metrics_dir = None
    if MULTIPROCESS_ENV not in os.environ:
        metrics_dir = tempfile.mkdtemp(prefix="mldcn-metrics-")
        os.environ[MULTIPROCESS_ENV] = metrics_dir  # read by each worker's prometheus_client at import
    app = functools.partial(_worker_app, str(service.artifact.path), service.config)
    config = uvicorn.Config(
        app, factory=True, workers=service.config.workers,
        timeout_worker_healthcheck=60,  # a worker importing torch on a busy machine answers late
        **options,
    )  # fmt: skip
    try:
        Multiprocess(config, sockets=[sock]).run()
    finally:
        if metrics_dir is not None:
            del os.environ[MULTIPROCESS_ENV]
            shutil.rmtree(metrics_dir, ignore_errors=True)
