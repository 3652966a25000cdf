"""The serving commands of ``mldcn``: ``predict``, ``export``, ``serve``.

    mldcn predict MODEL --input rows.csv --out probabilities.csv
    mldcn predict MODEL --prepared data/frappe_x1 --split test --out test.parquet
    mldcn export  MODEL --format onnx            (writes MODEL/model.onnx; --format pt2 for torch.export)
    mldcn serve   MODEL --backend onnx --port 8000 [--batch-wait-ms 2 --workers 2]

MODEL is a model artifact directory, or a run directory of ``mldcn train``
(its artifact is ``RUN/model``). Errors are raised as ``ValueError``/``OSError``
for ``mldcn.cli.main`` to print without a traceback (exit status 2).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

PARITY_TOLERANCE = 1e-5


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``predict``, ``export`` and ``serve`` on the ``mldcn`` sub-command parser."""
    _add_predict(sub)
    _add_export(sub)
    _add_serve(sub)


def _model_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="model artifact directory, or a `mldcn train` run directory")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _milliseconds(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 10_000:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be between 0 and 10000 ms, got {text}")
    return value


# ---------------------------------------------------------------------------- predict


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="score raw rows with a trained model (CSV or Parquet out)",
        description="Read raw rows (any format the data readers take; the label column may be absent), "
        "apply the training preprocessing (unknown categories map to the OOV id) and write one "
        "click probability per row. Streams: memory does not grow with the file.",
    )
    _model_argument(p)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="raw file to score (the training schema's format; .parquet is read as Parquet)")
    source.add_argument("--prepared", help="a prepared data directory (`mldcn prepare`) to score a split of")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"], help="split of --prepared (default: test)")
    p.add_argument("--out", required=True, help="output file: .parquet/.pq for Parquet, else CSV")
    p.add_argument("--input-format", choices=["csv", "libfm", "parquet"], help="override the input format")
    p.add_argument("--keep", action="append", default=[], metavar="COLUMN", help="copy this input column to the output (repeatable)")
    p.add_argument("--line-numbers", action="store_true", help="add each row's input line number (column `line`)")
    p.add_argument("--on-bad-rows", choices=["error", "skip"], default="error")
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch")
    p.add_argument("--onnx", help="ONNX file for --backend onnx (default: MODEL/model.onnx or an in-memory export)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="torch backend: bf16 autocast (default fp32)")
    p.add_argument("--batch-size", type=_positive, default=8192, help="rows per forward pass")
    p.add_argument("--threads", type=_positive, help="torch / ONNX Runtime threads")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from mldcn.serve.artifact import load_artifact
    from mldcn.serve.predict import make_backend, predict_file, predict_prepared

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.prepared and (args.keep or args.line_numbers or args.input_format):
        raise ValueError("--keep, --line-numbers and --input-format apply to --input, not --prepared")
    artifact = load_artifact(args.model)
    backend = make_backend(artifact, args.backend, args.precision, args.onnx, args.threads)
    if args.prepared:
        report = predict_prepared(artifact, args.prepared, args.split, args.out, backend=backend, batch_size=args.batch_size)
    else:
        report = predict_file(
            artifact,
            args.input,
            args.out,
            backend=backend,
            batch_size=args.batch_size,
            on_bad_rows=args.on_bad_rows,
            keep_columns=tuple(args.keep),
            line_numbers=args.line_numbers,
            input_format=args.input_format,
        )
    print(
        f"{report.input}: {report.rows_read:,} rows read = {report.rows_written:,} predicted "
        f"+ {report.rows_skipped:,} skipped -> {report.output}"
    )
    for bad in report.skipped_examples[:5]:
        print(f"  skipped line {bad['line']}: {bad['reason']}")
    if report.rows_skipped > 5:
        print(f"  ... and {report.rows_skipped - 5:,} more")
    print(f"{report.rows_read:,} rows in {report.seconds:.2f} s ({report.rows_per_second:,.0f} rows/s, {report.backend} backend)")
    return 0


# ---------------------------------------------------------------------------- export


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a trained model to ONNX or torch.export",
        description="Export the model (logits → sigmoid, dynamic batch) and check it against eager "
        f"PyTorch on random inputs (max abs difference of probabilities <= {PARITY_TOLERANCE:g}).",
    )
    _model_argument(p)
    p.add_argument("--format", choices=["onnx", "pt2"], default="onnx", help="onnx (ONNX Runtime) or pt2 (torch.export)")
    p.add_argument("--out", help="output file (default: MODEL/model.onnx or MODEL/model.pt2)")
    p.add_argument("--no-check", action="store_true", help="skip the parity check against eager PyTorch")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from mldcn.files import atomic_path
    from mldcn.serve.artifact import load_artifact
    from mldcn.serve.export import export_model, parity

    artifact = load_artifact(args.model)
    out = Path(args.out) if args.out else artifact.path / f"model.{args.format}"
    start = time.perf_counter()
    with atomic_path(out) as tmp:  # the export appears only complete and, unless --no-check, checked
        export_model(artifact.model, args.format, tmp, artifact.weights_sha256)
        seconds = time.perf_counter() - start
        if not args.no_check:
            difference = parity(artifact.model, args.format, tmp)
            if difference > PARITY_TOLERANCE:
                raise ValueError(
                    f"parity with eager PyTorch failed: max |Δ probability| = {difference:.2e} > "
                    f"{PARITY_TOLERANCE:g}; nothing written to {out}"
                )
    print(f"exported {artifact.config.family} as {args.format} -> {out} ({seconds:.1f} s)")
    if not args.no_check:
        print(f"parity with eager PyTorch: max |Δ probability| = {difference:.2e} (ok, tolerance {PARITY_TOLERANCE:g})")
    return 0


# ---------------------------------------------------------------------------- serve


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a trained model over HTTP (FastAPI + uvicorn)",
        description="POST /predict with {\"records\": [...raw rows...]} returns one probability per record; "
        "GET /health, GET /metadata, GET /metrics (Prometheus), OpenAPI docs at /docs. "
        "SIGTERM or SIGINT: finish the requests in flight, then exit 0. Needs the `serve` extra.",
    )
    _model_argument(p)
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch")
    p.add_argument("--onnx", help="ONNX file for --backend onnx (default: MODEL/model.onnx or an export at start-up)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="torch backend: bf16 autocast")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free port; the real one is printed)")
    p.add_argument("--threads", type=_positive, default=1, help="intra-op threads per forward pass (default 1)")
    p.add_argument("--concurrency", type=_positive, default=2, help="forward passes at the same time, per worker (default 2)")
    p.add_argument(
        "--batch-wait-ms", type=_milliseconds, default=0.0, metavar="MS",
        help="dynamic batching: requests arriving within MS milliseconds share one forward pass "
        "(default 0: each request alone; try 2 under concurrent load)",
    )  # fmt: skip
    p.add_argument("--max-batch-rows", type=_positive, default=256, help="rows per batched forward pass at most (default 256)")
    p.add_argument("--workers", type=_positive, default=1, help="server processes, each with its own model (default 1)")
    p.add_argument("--max-body-bytes", type=_positive, default=8 << 20, help="larger bodies get 413 (default 8 MiB)")
    p.add_argument("--max-records", type=_positive, default=10_000, help="more records per request get 413")
    p.add_argument("--max-depth", type=_positive, default=32, help="JSON nested deeper gets 400 (default 32, at most 512)")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from mldcn.serve.server import PredictionService, ServeConfig, serve
    except ImportError as error:
        raise OSError(f"serving needs the `serve` extra (pip install 'mldcn[serve]'): {error}") from None
    from mldcn.serve.artifact import load_artifact

    config = ServeConfig(
        backend=args.backend,
        precision=args.precision,
        onnx_path=args.onnx,
        threads=args.threads,
        concurrency=args.concurrency,
        batch_wait_ms=args.batch_wait_ms,
        max_batch_rows=args.max_batch_rows,
        workers=args.workers,
        max_body_bytes=args.max_body_bytes,
        max_records=args.max_records,
        max_depth=args.max_depth,
    )
    service = PredictionService(load_artifact(args.model), config)
    serve(service, args.host, args.port, args.log_level)
    return 0
