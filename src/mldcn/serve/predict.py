"""Batch prediction: raw rows in, click probabilities out, with the training preprocessing.

``predict_file`` streams: the data readers yield validated chunks (bounded by the
chunk size, whatever the file size), the artifact's codec encodes them (unknown
categories → the OOV id), the backend scores them in batches and the writer
appends the probabilities (CSV or Parquet) chunk by chunk, one column
``probability_<task>`` per task. Rows read always equal rows written plus rows
skipped (``--on-bad-rows skip``).

A backend is a callable ``Batch → probabilities float32 [B, T]``:
:class:`TorchBackend` (eager PyTorch, fp32 or bf16 autocast) or
:class:`OnnxBackend` (ONNX Runtime on the exported graph).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import torch

from mldcn.batch import Batch
from mldcn.data.readers import CHUNK_BYTES, OnBadRows, ReadStats, read_chunks
from mldcn.features import FeatureSpec
from mldcn.files import atomic_path
from mldcn.models.ranking import RankingModel
from mldcn.serve.artifact import Artifact, ArtifactError
from mldcn.serve.export import WEIGHTS_KEY, input_names, onnx_model_proto, onnx_session
from mldcn.serve.inputs import IdInputs, input_codec
from mldcn.train.loop import autocast

BackendName = Literal["torch", "onnx"]
Precision = Literal["fp32", "bf16"]
PROBABILITY = "probability"


def probability_column(task: str) -> str:
    """The output column of a task's probabilities."""
    return f"{PROBABILITY}_{task}"


class Backend(Protocol):
    """Scores rows: a :class:`~mldcn.batch.Batch` of n rows → probabilities float32 ``[n, T]``."""

    name: str

    def __call__(self, batch: Batch) -> np.ndarray: ...


def _tensors(batch: Batch, features: FeatureSpec) -> dict[str, np.ndarray]:
    """The exported graph's inputs of a batch (int64 ids, float32 values), as numpy arrays."""
    arrays = {
        "categorical": batch.categorical.numpy().astype(np.int64, copy=False),
        "numeric": batch.numeric.numpy().astype(np.float32, copy=False),
        "sequence": None if batch.sequence is None else batch.sequence.numpy().astype(np.int64, copy=False),
    }
    return {name: np.ascontiguousarray(arrays[name]) for name in input_names(features)}


class TorchBackend:
    """Eager PyTorch under ``torch.inference_mode``; ``bf16`` runs under bfloat16 autocast."""

    name = "torch"

    def __init__(self, model: RankingModel, precision: Precision = "fp32") -> None:
        self.model = model.eval()
        self.precision = precision
        self.features = model.embedding.features
        self.device = next(model.parameters()).device

    def __call__(self, batch: Batch) -> np.ndarray:
        with torch.inference_mode(), autocast(self.device, self.precision):
            logits = self.model(batch.categorical.long(), batch.numeric.float(), None if batch.sequence is None else batch.sequence.long())
        return torch.sigmoid(logits.float()).numpy()  # [B, T]


class OnnxBackend:
    """ONNX Runtime on the exported :class:`~mldcn.serve.export.ProbabilityModel`."""

    name = "onnx"

    def __init__(self, session, features: FeatureSpec) -> None:
        self.session = session
        self.features = features

    def __call__(self, batch: Batch) -> np.ndarray:
        return self.session.run([PROBABILITY], _tensors(batch, self.features))[0]  # [B, T]


def make_backend(
    artifact: Artifact,
    backend: BackendName = "torch",
    precision: Precision = "fp32",
    onnx_path: str | Path | None = None,
    threads: int | None = None,
) -> Backend:
    """The backend for ``artifact``.

    ``onnx`` uses ``onnx_path``, else ``<artifact>/model.onnx`` if ``mldcn export``
    wrote one, else exports the model in memory. An ONNX file exported from other
    weights than the artifact's is refused.
    """
    if backend == "torch":
        return TorchBackend(artifact.model, precision)
    if backend != "onnx":
        raise ValueError(f"unknown backend {backend!r}; choose torch or onnx")
    if precision != "fp32":
        raise ValueError("the onnx backend runs the fp32 export; use --precision fp32 (or --backend torch)")
    path = Path(onnx_path) if onnx_path is not None else artifact.path / "model.onnx"
    if path.exists():
        session = onnx_session(path, threads)
        recorded = session.get_modelmeta().custom_metadata_map.get(WEIGHTS_KEY)
        if recorded is not None and recorded != artifact.weights_sha256:
            raise ArtifactError(f"{path}: exported from other weights than {artifact.path}; run `mldcn export` again")
    elif onnx_path is not None:
        raise ArtifactError(f"{path}: no such ONNX file")
    else:
        session = onnx_session(onnx_model_proto(artifact.model, artifact.weights_sha256).SerializeToString(), threads)
    return OnnxBackend(session, artifact.features)


def score(backend: Backend, rows: Batch, batch_size: int, num_tasks: int) -> np.ndarray:
    """Probabilities ``[n, T]`` of every row of ``rows``, in batches of ``batch_size``."""
    parts = [backend(batch) for batch in rows.batches(batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, num_tasks), dtype=np.float32)


# ---------------------------------------------------------------------------- output


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


class _Writer:
    """Appends tables to a CSV or Parquet file; a context manager that closes it on exit.

    Used inside :func:`mldcn.files.atomic_path` (``with atomic_path(out) as tmp,
    _Writer(tmp, ...) as writer``): the file is closed first, then renamed onto the
    output when the block ended without an error, or removed when it did not (a
    bad row, an interrupt). A run that writes no rows (every row skipped) still
    writes the header.
    """

    def __init__(self, path: Path, parquet: bool, schema: pa.Schema) -> None:
        self.path = path
        self.parquet = parquet
        self.schema = schema  # of an output without rows
        self.writer = None
        self.rows = 0

    def __enter__(self) -> "_Writer":
        return self

    def write(self, table: pa.Table) -> None:
        if self.writer is None:
            if self.parquet:
                self.writer = pq.ParquetWriter(str(self.path), table.schema)
            else:
                self.writer = pcsv.CSVWriter(str(self.path), table.schema)
        self.writer.write_table(table)
        self.rows += table.num_rows

    def __exit__(self, kind, error, traceback) -> None:
        if error is None and self.writer is None:
            self.write(self.schema.empty_table())
        if self.writer is not None:
            self.writer.close()


@dataclass
class PredictReport:
    """Row accounting of one prediction: ``rows_read == rows_written + rows_skipped``."""

    input: str
    output: str
    rows_read: int = 0
    rows_written: int = 0
    rows_skipped: int = 0
    skipped_examples: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    backend: str = "torch"

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "rows_per_second": self.rows_per_second}


def _input_schema(artifact: Artifact, path: Path, input_format: str | None):
    """The codec and the schema ``path`` is read with: the training schema, or Parquet by suffix."""
    codec = input_codec(artifact.encoder, artifact.features)
    if input_format is None and path.suffix.lower() in (".parquet", ".pq"):
        input_format = "parquet"
    if isinstance(codec, IdInputs):
        return codec, codec.file_schema(input_format or "csv")
    schema = codec.schema
    if input_format is not None and input_format != schema.format:
        schema = dataclasses.replace(schema, format=input_format)
    return codec, schema


def predict_file(
    artifact: Artifact,
    input: str | Path,
    output: str | Path,
    *,
    backend: Backend | None = None,
    batch_size: int = 8192,
    on_bad_rows: OnBadRows = "error",
    keep_columns: tuple[str, ...] = (),
    line_numbers: bool = False,
    input_format: str | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> PredictReport:
    """Score every row of ``input`` and write the probabilities to ``output``.

    Args:
        artifact: the model and its preprocessing.
        input: a raw file in the artifact schema's format (CSV/TSV, .gz ok; libfm);
            ``.parquet`` files are read as Parquet. The label column may be absent.
        output: ``.parquet``/``.pq`` → Parquet, anything else → CSV. Columns:
            ``keep_columns`` (copied from the input), ``line`` (with
            ``line_numbers``), ``probability``.
        backend: default: eager PyTorch, fp32.
        batch_size: rows per forward pass.
        on_bad_rows: ``error`` (stop at the first, naming file, line and field)
            or ``skip`` (count and drop them; use ``line_numbers`` to align).
        input_format: override the format (``csv``, ``libfm``, ``parquet``).
    """
    input, output = Path(input), Path(output)
    if input.resolve() == output.resolve():
        raise ValueError(f"{output}: the output would overwrite the input")
    backend = backend or TorchBackend(artifact.model)
    codec, schema = _input_schema(artifact, input, input_format)
    stats = ReadStats(str(input))
    report = PredictReport(str(input), str(output), backend=backend.name)
    tasks = artifact.features.task_names
    fields = [pa.field(n, pa.string()) for n in keep_columns]
    fields += [pa.field("line", pa.int64())] if line_numbers else []
    empty = pa.schema([*fields, *(pa.field(probability_column(t), pa.float32()) for t in tasks)])
    start = time.perf_counter()
    with atomic_path(output) as tmp, _Writer(tmp, _is_parquet(output), empty) as writer:
        for chunk in read_chunks(
            input, schema, on_bad_rows, stats, chunk_bytes, extra_columns=keep_columns, require_label=False
        ):
            probabilities = score(backend, codec.encode_columns(chunk.columns, chunk.lines), batch_size, len(tasks))
            columns = {name: chunk.columns[name] for name in keep_columns}
            if line_numbers:
                columns["line"] = pa.array(chunk.lines)
            for t, task in enumerate(tasks):
                columns[probability_column(task)] = pa.array(probabilities[:, t], pa.float32())
            writer.write(pa.table(columns))
    report.seconds = time.perf_counter() - start
    report.rows_read, report.rows_skipped = stats.rows_read, stats.rows_skipped
    report.rows_written = writer.rows
    report.skipped_examples = [{"line": b.line, "reason": b.reason} for b in stats.examples]
    if report.rows_read != report.rows_written + report.rows_skipped:  # an invariant, not a user error
        raise RuntimeError(
            f"row accounting broken: read {report.rows_read} != written {report.rows_written} + skipped {report.rows_skipped}"
        )
    return report


def predict_prepared(
    artifact: Artifact,
    directory: str | Path,
    split: str,
    output: str | Path,
    *,
    backend: Backend | None = None,
    batch_size: int = 8192,
) -> PredictReport:
    """Score a split of a prepared directory (``mldcn prepare``); the output has, per task of the
    model, ``label_<task>`` and ``probability_<task>``.

    The directory's fields must be the artifact's (same vocabularies), and its tasks
    include the model's (a model may learn some of the data's tasks).
    """
    from mldcn.data.encode import read_feature_map  # noqa: PLC0415
    from mldcn.data.prepared import load_split  # noqa: PLC0415

    directory, output = Path(directory), Path(output)
    features = FeatureSpec.from_dict(read_feature_map(directory)["features"])
    tasks = artifact.features.task_names
    if not features.same_inputs(artifact.features) or not set(tasks) <= set(features.task_names):
        raise ArtifactError(f"{directory}: its features differ from the model's in {artifact.path}")
    data = load_split(directory, split, "stream")
    columns = [features.task_names.index(t) for t in tasks]
    backend = backend or TorchBackend(artifact.model)
    report = PredictReport(f"{directory}:{split}", str(output), backend=backend.name)
    names = [f"label_{t}" for t in tasks] + [probability_column(t) for t in tasks]
    out_schema = pa.schema([pa.field(name, pa.float32()) for name in names])
    start = time.perf_counter()
    with atomic_path(output) as tmp, _Writer(tmp, _is_parquet(output), out_schema) as writer:
        rows_per_chunk = max(batch_size, 1 << 16)
        for begin in range(0, len(data), rows_per_chunk):
            part = data.rows(begin, begin + rows_per_chunk)
            probabilities = score(backend, part.without_labels(), batch_size, len(tasks))
            values = np.hstack([part.labels.numpy()[:, columns], probabilities])  # [n, 2T]
            writer.write(pa.table({name: values[:, j] for j, name in enumerate(names)}, schema=out_schema))
    report.seconds = time.perf_counter() - start
    report.rows_read = len(data)
    report.rows_written = writer.rows
    if report.rows_read != report.rows_written:
        raise RuntimeError(f"row accounting broken: read {report.rows_read} != written {report.rows_written}")
    return report


def read_probabilities(path: str | Path) -> np.ndarray:
    """The ``probability_<task>`` columns of a prediction file (CSV or Parquet) as float32 ``[N, T]``."""
    path = Path(path)
    table = pq.read_table(path) if _is_parquet(path) else pcsv.read_csv(path)
    names = [n for n in table.column_names if n.startswith(PROBABILITY + "_")]
    return np.stack([table[n].to_numpy().astype(np.float32) for n in names], axis=1)


__all__ = [
    "Backend",
    "OnnxBackend",
    "PredictReport",
    "TorchBackend",
    "make_backend",
    "predict_file",
    "probability_column",
    "predict_prepared",
    "read_probabilities",
    "score",
]
