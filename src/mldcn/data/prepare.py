"""``mldcn prepare``: raw click logs → memory-mappable arrays plus a feature map.

Two streaming passes: the first fits vocabularies and numeric statistics on the
training rows only; the second encodes every split and appends it, chunk by
chunk, to raw little-endian arrays:

    <out>/feature_map.json          schema, features, statistics, row counts, report
    <out>/vocab/<field>.parquet     vocabulary of each categorical / multi-valued field
    <out>/<split>/categorical.bin   int32   [N, Fc]
    <out>/<split>/numeric.bin       float32 [N, Fn]
    <out>/<split>/labels.bin        float32 [N, T]       (one column per label / task)
    <out>/<split>/sequence.bin      int32   [N, Fs, L]   (with multi-valued fields)
    <out>/<split>/weights.bin       float32 [N]          (with the schema's weight column)

Memory is bounded by the chunk size plus the vocabularies, whatever the file size.
Splits: three given files; a seeded random split of one file (by a hash of the
line number, so it does not depend on chunking); or a split on a time column.
A rerun with the same inputs (path, size, modification time), schema and split
reuses the prepared directory.

The output appears only complete: everything is built in ``<out>/.prepare.tmp-<pid>``
and moved into place when whole, ``feature_map.json`` last. A run that fails
(a bad row, an interrupt) removes its temporary folder and leaves an earlier
prepared directory at ``<out>`` as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from mldcn.config import Config, ConfigError, to_dict
from mldcn.data.encode import FORMAT_VERSION, Encoder, Fitter, read_feature_map
from mldcn.data.readers import CHUNK_BYTES, DataError, OnBadRows, RawChunk, ReadStats, read_chunks
from mldcn.data.schema import DataSchema
from mldcn.files import process_alive, temporary_sibling

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class SplitConfig(Config):
    """How rows are assigned to train / valid / test.

    Attributes:
        kind: ``files`` (three input files), ``random`` (one input file, each row
            to valid with probability ``valid_fraction``, to test with
            ``test_fraction``, else train) or ``time`` (one input file; rows with
            ``time_column >= test_from`` to test, ``>= valid_from`` to valid, else
            train; compared as numbers when both bounds are numbers, else as text).
    """

    kind: Literal["files", "random", "time"] = "files"
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 2021
    time_column: str | None = None
    valid_from: str | None = None
    test_from: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kind == "random":
            if not (0 < self.valid_fraction and 0 < self.test_fraction and self.valid_fraction + self.test_fraction < 1):
                raise ConfigError("split fractions must be > 0 and sum to less than 1")
        if self.kind == "time" and not (self.time_column and self.valid_from and self.test_from):
            raise ConfigError("a time split needs time_column, valid_from and test_from")


class _SplitWriter:
    """Appends encoded chunks (:class:`~mldcn.batch.Batch`) of one split to its raw arrays."""

    def __init__(self, directory: Path, has_sequence: bool, num_tasks: int, has_weights: bool = False) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        names = ["categorical", "numeric", "labels"] + (["sequence"] if has_sequence else []) + (["weights"] if has_weights else [])
        self.files = {name: open(directory / f"{name}.bin", "wb") for name in names}
        self.rows = 0
        self.positives = np.zeros(num_tasks, dtype=np.int64)  # per task

    def write(self, batch) -> None:
        np.ascontiguousarray(batch.categorical.numpy(), dtype="<i4").tofile(self.files["categorical"])
        np.ascontiguousarray(batch.numeric.numpy(), dtype="<f4").tofile(self.files["numeric"])
        np.ascontiguousarray(batch.labels.numpy(), dtype="<f4").tofile(self.files["labels"])
        if batch.sequence is not None:
            np.ascontiguousarray(batch.sequence.numpy(), dtype="<i4").tofile(self.files["sequence"])
        if batch.weights is not None:
            np.ascontiguousarray(batch.weights.numpy(), dtype="<f4").tofile(self.files["weights"])
        self.rows += len(batch)
        self.positives += batch.labels.numpy().sum(axis=0).astype(np.int64)

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def _line_hash(lines: np.ndarray, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per line number (splitmix64 of seed and line)."""
    golden = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps modulo 2^64, as intended
        x = lines.astype(np.uint64) + np.uint64(seed) * golden + golden
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(2**53)


def _route(chunk: RawChunk, split: SplitConfig) -> np.ndarray:
    """The split index (0 train, 1 valid, 2 test) of every row of a one-file input."""
    if split.kind == "random":
        u = _line_hash(chunk.lines, split.seed)
        return np.where(u < split.valid_fraction, 1, np.where(u < split.valid_fraction + split.test_fraction, 2, 0))
    column = chunk.columns[split.time_column]
    numeric = all(_is_number(v) for v in (split.valid_from, split.test_from))
    if numeric:
        values = pc.cast(column, pa.float64())
        valid_from, test_from = float(split.valid_from), float(split.test_from)
    else:
        values = pc.cast(column, pa.string())
        valid_from, test_from = split.valid_from, split.test_from
    in_test = np.asarray(pc.fill_null(pc.greater_equal(values, test_from), False), dtype=bool)
    in_valid = np.asarray(pc.fill_null(pc.greater_equal(values, valid_from), False), dtype=bool)
    return np.where(in_test, 2, np.where(in_valid, 1, 0))


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _take(chunk: RawChunk, mask: np.ndarray) -> RawChunk:
    keep = pa.array(mask)
    return RawChunk({k: pc.filter(v, keep) for k, v in chunk.columns.items()}, chunk.lines[mask], chunk.labels[mask])


def _fingerprint(schema: DataSchema, split: SplitConfig, inputs: dict, on_bad_rows: str) -> str:
    files = {}
    for role, path in inputs.items():
        stat = Path(path).stat()
        files[role] = [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]
    blob = json.dumps(
        {"version": FORMAT_VERSION, "schema": to_dict(schema), "split": to_dict(split), "files": files, "bad": on_bad_rows},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _arrays_intact(out_dir: Path) -> bool:
    """Every split's arrays load: the sizes and values the feature map says (one read of each)."""
    from mldcn.data.prepared import load_split  # noqa: PLC0415  (prepared imports this module)

    try:
        for name in SPLITS:
            load_split(out_dir, name, mmap=True)
    except ValueError:
        return False
    return True


def prepare(
    schema: DataSchema,
    out_dir: str | Path,
    *,
    train: str | Path | None = None,
    valid: str | Path | None = None,
    test: str | Path | None = None,
    input: str | Path | None = None,
    split: SplitConfig | None = None,
    on_bad_rows: OnBadRows = "error",
    force: bool = False,
    chunk_bytes: int = CHUNK_BYTES,
    progress=None,
) -> dict:
    """Prepare a data set; return the report (also saved in ``feature_map.json``).

    Give ``train``, ``valid`` and ``test`` files, or one ``input`` file with a
    ``random`` or ``time`` ``split``.
    """
    split = split or SplitConfig(kind="files" if input is None else "random")
    if split.kind == "files":
        if input is not None or not (train and valid and test):
            raise ConfigError("give --train, --valid and --test files, or one --input with a random or time split")
        inputs = {"train": train, "valid": valid, "test": test}
    else:
        if input is None or train or valid or test:
            raise ConfigError(f"a {split.kind} split takes one --input file (not --train/--valid/--test)")
        inputs = {"input": input}
    for role, path in inputs.items():
        if not Path(path).exists():
            raise DataError(f"{path}: file not found ({role})")
    out_dir = Path(out_dir)
    fingerprint = _fingerprint(schema, split, inputs, on_bad_rows)
    if not force and (out_dir / "feature_map.json").exists():
        try:
            previous = read_feature_map(out_dir)
        except ValueError:
            previous = {}
        if previous.get("fingerprint") == fingerprint and _arrays_intact(out_dir):
            return {**previous["report"], "reused": True}
    created = not out_dir.exists()
    _remove_stale_builds(out_dir)
    building = temporary_sibling(out_dir / "prepare")  # <out>/.prepare.tmp-<pid>: same file system as <out>
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    echo = progress or (lambda message: None)
    try:
        encoder, report = _build(schema, building, inputs, split, on_bad_rows, chunk_bytes, echo)
        encoder.save(
            building,
            extra={
                "fingerprint": fingerprint,
                "split": to_dict(split),
                "inputs": {k: str(v) for k, v in inputs.items()},
                "rows": {name: entry["rows"] for name, entry in report["splits"].items()},
                "report": report,
            },
        )
        _move_into_place(building, out_dir)
    finally:
        shutil.rmtree(building, ignore_errors=True)
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # a first run that failed leaves nothing behind
    return report


def _remove_stale_builds(out_dir: Path) -> None:
    """Remove the temporary folders of earlier runs that were killed (their process is gone)."""
    for folder in out_dir.glob(".prepare.tmp-*"):
        pid = folder.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _move_into_place(built: Path, out_dir: Path) -> None:
    """Replace ``out_dir``'s prepared entries by the ``built`` ones (other files there stay).

    The old ``feature_map.json`` goes first and the new one comes last: without it
    the directory is not a prepared one, so a reader sees the old data, none, or
    the new data, never a mix. The old entries go into ``built`` (removed by the caller).
    """
    old = built / "old"
    old.mkdir()
    if (out_dir / "feature_map.json").exists():
        os.replace(out_dir / "feature_map.json", old / "feature_map.json")
    for name in ("vocab", *SPLITS):
        if (out_dir / name).exists() or (out_dir / name).is_symlink():
            os.replace(out_dir / name, old / name)
        os.replace(built / name, out_dir / name)
    os.replace(built / "feature_map.json", out_dir / "feature_map.json")


def _build(
    schema: DataSchema,
    directory: Path,
    inputs: dict,
    split: SplitConfig,
    on_bad_rows: OnBadRows,
    chunk_bytes: int,
    echo,
) -> tuple[Encoder, dict]:
    """Fit, then encode every split's arrays into ``directory``; (the fitted encoder, the report)."""
    extra = [split.time_column] if split.kind == "time" else []
    start = time.perf_counter()

    def chunks(path, stats=None) -> contextlib.closing[Iterator[RawChunk]]:
        """The file's chunks; the reader is closed when the ``with`` block ends, however it ends."""
        return contextlib.closing(read_chunks(path, schema, on_bad_rows, stats, chunk_bytes, extra_columns=extra))

    # pass 1: fit on the training rows only
    echo("fitting vocabularies and statistics on the training rows")
    fitter = Fitter(schema, seed=split.seed)
    with chunks(inputs["train"] if split.kind == "files" else inputs["input"]) as stream:
        for chunk in stream:
            if split.kind == "files":
                fitter.update(chunk.columns)
                continue
            mask = _route(chunk, split) == 0
            if mask.any():
                fitter.update(_take(chunk, mask).columns)
    try:
        encoder = fitter.finish()
    except ValueError:
        raise DataError("no training rows to fit the preprocessing on") from None
    fit_seconds = time.perf_counter() - start

    # pass 2: encode every split
    has_sequence = bool(schema.sequence)
    writers = {name: _SplitWriter(directory / name, has_sequence, len(schema.labels), schema.weight is not None) for name in SPLITS}
    stats_list = []
    try:
        for role, path in inputs.items():
            echo(f"encoding {path}")
            stats = ReadStats(str(path))
            stats_list.append(stats)
            with chunks(path, stats) as stream:
                for chunk in stream:
                    encoded = encoder.encode(chunk.columns, chunk.labels, chunk.weights)
                    if role != "input":
                        writers[role].write(encoded)
                        continue
                    route = torch.from_numpy(_route(chunk, split))
                    for index, name in enumerate(SPLITS):
                        mask = route == index
                        if mask.any():
                            writers[name].write(encoded.take(mask))
    finally:
        for writer in writers.values():
            writer.close()
    seconds = time.perf_counter() - start
    rows_read = sum(s.rows_read for s in stats_list)
    rows_written = sum(w.rows for w in writers.values())
    rows_skipped = sum(s.rows_skipped for s in stats_list)
    if rows_read != rows_written + rows_skipped:  # an invariant, not a user error
        raise RuntimeError(f"row accounting broken: read {rows_read} != written {rows_written} + skipped {rows_skipped}")
    for name, writer in writers.items():
        if writer.rows == 0:
            raise DataError(f"the {name} split is empty after reading {list(inputs.values())}")
    report = {
        "rows_read": rows_read,
        "rows_written": rows_written,
        "rows_skipped": rows_skipped,
        "splits": {
            name: {"rows": w.rows, "positives": dict(zip(encoder.features.task_names, w.positives.tolist()))}
            for name, w in writers.items()
        },
        "inputs": [s.to_dict() for s in stats_list],
        "fit_seconds": fit_seconds,
        "seconds": seconds,
        "rows_per_second": rows_read / seconds if seconds > 0 else float("nan"),
        "reused": False,
    }
    return encoder, report
