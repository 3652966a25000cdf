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

Encoding and the model's forward pass run in worker threads, at most
``concurrency`` at a time, never on the event loop, so slow batches do not
stall other requests' I/O. The backend (eager PyTorch or ONNX Runtime) is
chosen at start-up.
"""

from __future__ import annotations

import json
import socket
import sys
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import numpy as np
from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel, Field

from mldcn.config import Config, ConfigError
from mldcn.serve.artifact import Artifact
from mldcn.serve.inputs import RecordError, input_codec, json_kind, quoted
from mldcn.serve.predict import Backend, make_backend, score


# json.loads recurses once per level and raises RecursionError near Python's recursion
# limit (1000): a deeper max_depth could not be told apart from that failure
DEPTH_CEILING = 512


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

    _positive = ("threads", "concurrency", "max_body_bytes", "max_records", "max_depth", "batch_size")

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


class PredictionService:
    """The model, its input codec and backend: records → probabilities (thread-safe)."""

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
        self.limiter = anyio.CapacityLimiter(config.concurrency)

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.artifact.features.task_names

    def predict(self, records: list) -> np.ndarray:
        """Probabilities float32 ``[len(records), T]``; :class:`RecordError` on a bad record.

        A record of finite inputs can still overflow the model's float32 arithmetic
        (1e20 in the numeric field of the tests' synthetic model of ids): its NaN
        probability is refused too, rather than answered as JSON ``null``.
        """
        probabilities = score(self.backend, self.codec.encode_records(records), self.config.batch_size, len(self.tasks))
        nan = np.flatnonzero(np.isnan(probabilities).any(axis=1))
        if nan.size:
            problem = "the model's probability is NaN (a number in the record is too large for its float32 arithmetic)"
            raise RecordError(int(nan[0]), None, problem)
        return probabilities

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


def create_app(service: PredictionService) -> FastAPI:
    """The FastAPI application serving ``service``."""
    import mldcn  # noqa: PLC0415

    artifact = service.artifact
    config = service.config
    app = FastAPI(
        title="mldcn prediction service",
        version=mldcn.__version__,
        description=(
            f"Probabilities of the tasks {list(service.tasks)} from a {artifact.config.family} model "
            f"({artifact.path}), backend {service.backend.name}. POST raw records to /predict."
        ),
    )
    errors = {
        400: {"model": ErrorResponse, "description": "malformed JSON, or nested deeper than the limit"},
        413: {"model": ErrorResponse, "description": "body or record count over the limit"},
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
            probabilities = await anyio.to_thread.run_sync(service.predict, records, limiter=service.limiter)
        except RecordError as error:
            raise HTTPException(422, str(error)) from None
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
    """Serve until interrupted. Prints ``listening on http://HOST:PORT`` (the real port) first."""
    import uvicorn  # noqa: PLC0415

    sock = bind(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(
        f"mldcn serve: {service.artifact.config.family} ({service.backend.name} backend) "
        f"listening on http://{shown}:{bound}  (docs: http://{shown}:{bound}/docs)",
        flush=True,
    )
    config = uvicorn.Config(create_app(service), log_level=log_level, access_log=False, timeout_keep_alive=30)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    sys.stdout.flush()
