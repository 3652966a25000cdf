"""The HTTP prediction service: FastAPI on uvicorn (the ``serve`` extra).

    POST /predict    {"records": [{field: value, ...}, ...]} → {"probabilities": [p, ...]}
    GET  /health     {"status": "ok"}
    GET  /metadata   model, features, input fields, FLOPs and parameters, backend
    GET  /docs       OpenAPI docs (the schema at /openapi.json)

A record holds the raw columns of the training schema (the values of one row of
the raw file; the label is not needed, extra keys are ignored), or, for a model
trained on encoded ids, one id or value per model field (see
:mod:`mldcn.serve.inputs`). Bad requests get a 4xx whose ``detail`` names the
problem, and the server goes on serving:

    400  malformed JSON
    413  body over ``max_body_bytes``, or more than ``max_records`` records
    422  not ``{"records": [...]}``, an empty list, a missing field or a value of
         the wrong type (naming the record index and the field)

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

from mldcn.config import Config
from mldcn.serve.artifact import Artifact
from mldcn.serve.inputs import RecordError, input_codec, json_kind
from mldcn.serve.predict import Backend, make_backend, score


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
        batch_size: rows per forward pass within one request.
    """

    backend: Literal["torch", "onnx"] = "torch"
    precision: Literal["fp32", "bf16"] = "fp32"
    onnx_path: str | None = None
    threads: int | None = 1
    concurrency: int = 2
    max_body_bytes: int = 8 << 20
    max_records: int = 10_000
    batch_size: int = 8192

    _positive = ("threads", "concurrency", "max_body_bytes", "max_records", "batch_size")


class PredictResponse(BaseModel):
    probabilities: list[float] = Field(description="click probability of each record, in request order")


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

    def predict(self, records: list) -> np.ndarray:
        """Probabilities float32 ``[len(records)]``; :class:`RecordError` on a bad record."""
        return score(self.backend, self.codec.encode_records(records), self.config.batch_size)

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
            f"Click probabilities from a {artifact.config.family} model ({artifact.path}), "
            f"backend {service.backend.name}. POST raw records to /predict."
        ),
    )
    errors = {
        400: {"model": ErrorResponse, "description": "malformed JSON"},
        413: {"model": ErrorResponse, "description": "body or record count over the limit"},
        422: {"model": ErrorResponse, "description": "not {records: [...]}, empty, a missing field or a wrong type"},
    }

    @app.get("/health", response_model=Health, summary="liveness")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/metadata", summary="model, features, FLOPs and serving settings")
    async def metadata() -> dict:
        return service.metadata()

    @app.post(
        "/predict",
        response_model=PredictResponse,
        responses=errors,
        summary="click probability of each record",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _request_schema(service.codec, config.max_records)}},
            }
        },
    )
    async def predict(request: Request) -> dict:
        body = await _read_body(request, config.max_body_bytes)
        try:
            data = json.loads(body)
        except UnicodeDecodeError:
            raise HTTPException(400, "malformed JSON: the body is not UTF-8 text") from None
        except json.JSONDecodeError as error:
            raise HTTPException(400, f"malformed JSON: {error}") from None
        records = _records(data, config.max_records)
        try:
            probabilities = await anyio.to_thread.run_sync(service.predict, records, limiter=service.limiter)
        except RecordError as error:
            raise HTTPException(422, str(error)) from None
        return {"probabilities": probabilities.tolist()}

    return app


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
