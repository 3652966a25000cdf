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
Splits: three given inputs; a seeded random split of one input (by a hash of the
file's position and the line number, so it does not depend on chunking); or a
split on a time column. An input is a file, several files, a glob or a
directory (:func:`expand_inputs`). A rerun with the same inputs (path, size,
modification time), schema and split reuses the prepared directory.

Parallel preparation (``workers > 1``): the inputs are cut into units of work
(:func:`plan_units`: each file, and each ``part_bytes`` byte range of whole
lines of a large uncompressed CSV/TSV/libfm file, or run of row groups of a
large Parquet file), a function of the files alone, never of the number of
workers. Worker processes (fresh interpreters, see ``_WORKER``) count each range's line ends (so that each
knows its first line number exactly), fit a :class:`~mldcn.data.encode.Fitter`
per unit, and encode each unit into its own part files; this process merges the
fitters in unit order and appends the parts in unit order. ``workers=1`` runs
the same units in this process. So the arrays and the feature map are the same,
byte for byte, for any number of workers; the first bad row in input order is
the error reported, as with one worker.

The output appears only complete: everything is built in ``<out>/.prepare.tmp-<pid>``
and moved into place when whole, ``feature_map.json`` last. A run that fails
(a bad row, an interrupt) removes its temporary folder and leaves an earlier
prepared directory at ``<out>`` as it was.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mldcn.config import Config, ConfigError, to_dict
from mldcn.data.encode import FORMAT_VERSION, Encoder, Fitter, read_feature_map, row_keys
from mldcn.data.readers import (
    CHUNK_BYTES,
    DataError,
    FilePart,
    OnBadRows,
    RawChunk,
    ReadStats,
    count_line_ends,
    parquet_part_rows,
    plan_parts,
    read_chunks,
)
from mldcn.data.schema import DataSchema
from mldcn.files import process_alive, temporary_sibling

SPLITS = ("train", "valid", "test")
PART_BYTES = 32 << 20  # a file larger than this is cut into units of about this size (small: the workers finish together)
_FILE_BITS = 40  # the random split and the bucket sample hash (file position << 40) + line: lines < 2^40
_SAMPLE_SALT = 0x6A09E667F3BCC908  # the bucket sample's keys: another hash stream than the split's

PathLike = Union[str, Path]
Inputs = Union[PathLike, Sequence[PathLike]]


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
    """Appends encoded chunks (numpy arrays by name, see :meth:`Encoder.encode_arrays`) of one split to its raw arrays."""

    def __init__(self, directory: Path, has_sequence: bool, num_tasks: int, has_weights: bool = False) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        names = ["categorical", "numeric", "labels"] + (["sequence"] if has_sequence else []) + (["weights"] if has_weights else [])
        self.files = {name: open(directory / f"{name}.bin", "wb") for name in names}
        self.rows = 0
        self.positives = np.zeros(num_tasks, dtype=np.int64)  # per task

    def write(self, arrays: dict[str, np.ndarray | None]) -> None:
        for name, dtype in (("categorical", "<i4"), ("numeric", "<f4"), ("labels", "<f4"), ("sequence", "<i4"), ("weights", "<f4")):
            if arrays.get(name) is not None:
                np.ascontiguousarray(arrays[name], dtype=dtype).tofile(self.files[name])
        self.rows += len(arrays["labels"])
        self.positives += arrays["labels"].sum(axis=0).astype(np.int64)

    def append(self, part: Path, rows: int, positives: np.ndarray) -> None:
        """Append the arrays another writer wrote into ``part`` (a unit's output) and remove them."""
        for name, file in self.files.items():
            with open(part / f"{name}.bin", "rb") as source:
                _copy(source, file)
        self.rows += rows
        self.positives += positives
        shutil.rmtree(part)

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def _copy(source, target) -> None:
    """Append all of file ``source`` to file ``target`` (in the kernel where it can)."""
    target.flush()
    size = os.fstat(source.fileno()).st_size
    try:
        while size > 0:
            copied = os.copy_file_range(source.fileno(), target.fileno(), size)
            if copied == 0:
                break
            size -= copied
    except (AttributeError, OSError):  # no copy_file_range here, or not between these files
        source.seek(os.fstat(source.fileno()).st_size - size)
        shutil.copyfileobj(source, target, 16 << 20)
    target.seek(0, os.SEEK_END)  # the file object learns the position the kernel copy moved


def _positions(lines: np.ndarray, file_index: int) -> np.ndarray:
    """A row's place in the input, unique over its files: (file position << 40) + line."""
    return lines.astype(np.uint64) + np.uint64(file_index << _FILE_BITS)


def _line_hash(lines: np.ndarray, seed: int, file_index: int = 0) -> np.ndarray:
    """A uniform number in [0, 1) per line of the ``file_index``-th input file (splitmix64)."""
    return (row_keys(_positions(lines, file_index), seed) >> np.uint64(11)).astype(np.float64) / float(2**53)


def _route(chunk: RawChunk, split: SplitConfig, file_index: int = 0) -> np.ndarray:
    """The split index (0 train, 1 valid, 2 test) of every row of a random- or time-split input."""
    if split.kind == "random":
        u = _line_hash(chunk.lines, split.seed, file_index)
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


def _fingerprint(schema: DataSchema, split: SplitConfig, inputs: dict[str, list[Path]], on_bad_rows: str) -> str:
    files = {}
    for role, paths in inputs.items():
        entries = []
        for path in paths:
            stat = path.stat()
            entries.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
        files[role] = entries[0] if len(entries) == 1 else entries  # one file: as before several were allowed
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
            load_split(out_dir, name, "stream")
    except ValueError:
        return False
    return True


def expand_inputs(role: str, spec: Inputs, schema: DataSchema) -> list[Path]:
    """The files an input names: a file; a directory (its files, sorted by name, except
    hidden ones and those starting with ``_`` such as Spark's ``_SUCCESS``); a glob
    (``day_*.tsv``: the matching files, sorted by name); or a list of these, in order."""
    items = [spec] if isinstance(spec, (str, Path)) else list(spec)
    if not items:
        raise ConfigError(f"no {role} file given")
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(f for f in path.iterdir() if f.is_file() and not f.name.startswith((".", "_")))
            if not found:
                raise DataError(f"{path}: the directory holds no data files ({role})")
            files += found
        elif path.exists():
            files.append(path)
        elif glob.has_magic(str(item)):
            found = sorted(Path(f) for f in glob.glob(str(item)) if Path(f).is_file())
            if not found:
                raise DataError(f"{item}: no file matches ({role})")
            files += found
        else:
            raise DataError(f"{path}: file not found ({role})")
    return files


def prepare(
    schema: DataSchema,
    out_dir: str | Path,
    *,
    train: Inputs | None = None,
    valid: Inputs | None = None,
    test: Inputs | None = None,
    input: Inputs | None = None,
    split: SplitConfig | None = None,
    on_bad_rows: OnBadRows = "error",
    force: bool = False,
    chunk_bytes: int = CHUNK_BYTES,
    workers: int = 1,
    part_bytes: int = PART_BYTES,
    progress=None,
) -> dict:
    """Prepare a data set; return the report (also saved in ``feature_map.json``).

    Give ``train``, ``valid`` and ``test`` inputs, or one ``input`` with a
    ``random`` or ``time`` ``split``; each is a file, a list of files, a glob or a
    directory (:func:`expand_inputs`). ``workers`` processes read, fit and encode
    in parallel over units of at most about ``part_bytes`` (:func:`plan_units`);
    the output does not depend on ``workers``.
    """
    split = split or SplitConfig(kind="files" if input is None else "random")
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    if part_bytes < 1:
        raise ConfigError(f"part_bytes must be >= 1, got {part_bytes}")
    if split.kind == "files":
        if input is not None or not (train and valid and test):
            raise ConfigError("give --train, --valid and --test files, or one --input with a random or time split")
        given = {"train": train, "valid": valid, "test": test}
    else:
        if input is None or train or valid or test:
            raise ConfigError(f"a {split.kind} split takes one --input (not --train/--valid/--test)")
        given = {"input": input}
    inputs = {role: expand_inputs(role, spec, schema) for role, spec in given.items()}
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
    job = _Job(schema, split, on_bad_rows, chunk_bytes, [split.time_column] if split.kind == "time" else [])
    try:
        with _Runner(workers) as runner:
            encoder, report = _build(job, building, inputs, part_bytes, runner, echo)
        encoder.save(
            building,
            extra={
                "fingerprint": fingerprint,
                "split": to_dict(split),
                "inputs": {k: str(v[0]) if len(v) == 1 else [str(f) for f in v] for k, v in inputs.items()},
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


# ---------------------------------------------------------------------------- units of work


@dataclass(frozen=True)
class _Job:
    """What every unit's work needs besides the unit (sent to the workers with each unit)."""

    schema: DataSchema
    split: SplitConfig
    on_bad_rows: OnBadRows
    chunk_bytes: int
    extra_columns: list[str]


@dataclass(frozen=True)
class Unit:
    """One unit of work: a whole input file, or a part of one (``part``).

    ``index`` is its place in the run (the output is written in this order);
    ``file_index`` the file's place in its role's list (it keys the random split);
    ``lines`` the first and last line (Parquet: row) of a part, for the report.
    """

    index: int
    role: str
    file_index: int
    path: Path
    part: FilePart | None = None
    lines: tuple[int, int] | None = None

    def describe(self, schema: DataSchema) -> dict:
        """Where the part is, for the report: its lines (Parquet: rows) and bytes (row groups)."""
        kind = "row_groups" if schema.format == "parquet" else "bytes"
        return {"lines": list(self.lines), kind: [self.part.start, self.part.stop]} if self.part else {}


def plan_units(schema: DataSchema, inputs: dict[str, list[Path]], part_bytes: int, runner: "_Runner") -> list[Unit]:
    """Cut every input file into units (:func:`~mldcn.data.readers.plan_parts`) and give
    each byte range its first line number, from the line ends of the ranges before it
    (counted by ``runner``'s workers: one read of the file, in parallel)."""
    cuts = {(role, i): plan_parts(path, schema, part_bytes) for role, paths in inputs.items() for i, path in enumerate(paths)}
    parquet = schema.format == "parquet"
    count_tasks = [
        (inputs[role][i], start, stop) for (role, i), ranges in cuts.items() if ranges and not parquet for start, stop in ranges
    ]
    counts = iter(runner.map("count", count_tasks))
    units: list[Unit] = []
    for (role, i), ranges in cuts.items():
        path = inputs[role][i]
        if ranges is None:
            units.append(Unit(len(units), role, i, path))
            continue
        first = 2 if schema.header and schema.format == "csv" else 1
        for start, stop in ranges:
            if parquet:
                lines, ended = parquet_part_rows(path, start, stop), True
            else:
                lines, ended = next(counts)
                lines += 0 if ended else 1  # the file's last line has no line end
            units.append(Unit(len(units), role, i, path, FilePart(start, stop, first), (first, first + lines - 1)))
            first += lines
    return units


def _count_task(task: tuple[Path, int, int]) -> tuple[int, bool]:
    return count_line_ends(*task)


def _chunks(job: _Job, unit: Unit, stats: ReadStats | None = None) -> contextlib.closing[Iterator[RawChunk]]:
    """The unit's chunks; the reader is closed when the ``with`` block ends, however it ends."""
    return contextlib.closing(
        read_chunks(unit.path, job.schema, job.on_bad_rows, stats, job.chunk_bytes, extra_columns=job.extra_columns, part=unit.part)
    )


def _fit_task(task: tuple[_Job, Unit]) -> Fitter:
    """Pass 1 on one unit: a fitter of its training rows."""
    job, unit = task
    split = job.split
    fitter = Fitter(job.schema, seed=split.seed)
    with _chunks(job, unit) as stream:
        for chunk in stream:
            if split.kind != "files":
                chunk = _take(chunk, _route(chunk, split, unit.file_index) == 0)
                if not len(chunk):
                    continue
            keys = row_keys(_positions(chunk.lines, unit.file_index), (split.seed ^ _SAMPLE_SALT) % 2**64)
            fitter.update(chunk.columns, keys)
    return fitter


def _encode_unit(job: _Job, unit: Unit, encoder: Encoder, writers: dict[str, "_SplitWriter"]) -> ReadStats:
    """Pass 2 on one unit: encode its rows and append them to the ``writers`` of their splits."""
    stats = ReadStats(str(unit.path))
    with _chunks(job, unit, stats) as stream:
        for chunk in stream:
            encoded = {**encoder.encode_arrays(chunk.columns), "labels": chunk.labels, "weights": chunk.weights}
            if unit.role != "input":
                writers[unit.role].write(encoded)
                continue
            route = _route(chunk, job.split, unit.file_index)
            for index, name in enumerate(SPLITS):
                mask = route == index
                if mask.any():
                    writers[name].write({k: None if v is None else v[mask] for k, v in encoded.items()})
    return stats


_ENCODERS: dict[str, Encoder] = {}  # in a worker: the encoder of each build directory, loaded once


def _encode_task(task: tuple[_Job, Unit, Path]) -> tuple[ReadStats, dict[str, tuple[int, np.ndarray]]]:
    """Pass 2 on one unit in a worker: its arrays go to ``<build>/parts/<unit>/<split>/``."""
    job, unit, building = task
    if str(building) not in _ENCODERS:
        _ENCODERS.clear()
        _ENCODERS[str(building)] = Encoder.load(building)
    parts = building / "parts" / str(unit.index)
    writers = _writers(job.schema, parts)
    try:
        stats = _encode_unit(job, unit, _ENCODERS[str(building)], writers)
    finally:
        for writer in writers.values():
            writer.close()
    return stats, {name: (w.rows, w.positives) for name, w in writers.items()}


_TASKS = {"count": _count_task, "fit": _fit_task, "encode": _encode_task}  # what a worker runs, by name


def _writers(schema: DataSchema, directory: Path) -> dict[str, "_SplitWriter"]:
    has_sequence = bool(schema.sequence)
    return {name: _SplitWriter(directory / name, has_sequence, len(schema.labels), schema.weight is not None) for name in SPLITS}


# ---------------------------------------------------------------------------- running units

# A worker is a fresh interpreter (nothing of this process's memory is copied into it). It
# registers the mldcn package without running its __init__, which imports the models and
# torch (~250 MiB a process); a worker needs only the readers and the encoder (Arrow, numpy).
_WORKER = """
import sys, types
package = types.ModuleType("mldcn")
package.__path__ = [sys.argv[1]]
sys.modules["mldcn"] = package
from mldcn.data.prepare import _serve
_serve()
"""


class RemoteTraceback(Exception):
    """Where an unexpected error in a preparation worker happened (its traceback, as text)."""


def _serve() -> None:
    """A worker's loop: run the tasks read from stdin, send each result (or error) to stdout."""
    import traceback  # noqa: PLC0415
    from multiprocessing.connection import Connection  # noqa: PLC0415

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle: it stops the workers
    pa.set_cpu_count(1)  # one process per core: no Arrow thread pool on top
    tasks, results = Connection(os.dup(0), writable=False), Connection(os.dup(1), readable=False)
    os.dup2(2, 1)  # a stray print must not corrupt the results
    while True:
        try:
            name, task = tasks.recv()
        except EOFError:
            return
        try:
            answer = (True, _TASKS[name](task), None)
        except Exception as error:  # noqa: BLE001  (sent to the main process, which raises it)
            answer = (False, error, traceback.format_exc())
        try:
            results.send(answer)
        except Exception:  # noqa: BLE001  (an error that cannot be pickled)
            results.send((False, RuntimeError(f"{type(answer[1]).__name__}: {answer[1]}"), traceback.format_exc()))


@dataclass
class _Worker:
    process: subprocess.Popen
    tasks: object  # multiprocessing.connection.Connection
    results: object
    pending: deque = field(default_factory=deque)  # the indices of the tasks sent, in order


class _Runner:
    """Runs tasks in this process (``workers=1``) or in ``workers`` worker processes.

    :meth:`map` yields the results in task order, with at most two tasks per
    worker ahead of the result to yield next (so memory holds at most that many
    results); the first task in order that fails raises its error here, as the
    same exception (a :class:`DataError` stays a DataError, with its file and
    line), and :meth:`close` after an error stops the workers at once.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool: list[_Worker] = []

    def __enter__(self) -> "_Runner":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.close(abort=error is not None)

    def _start(self) -> None:
        from multiprocessing.connection import Connection  # noqa: PLC0415

        package = str(Path(__file__).resolve().parents[1])
        for _ in range(self.workers):
            process = subprocess.Popen([sys.executable, "-c", _WORKER, package], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            tasks, results = Connection(os.dup(process.stdin.fileno())), Connection(os.dup(process.stdout.fileno()))
            process.stdin.close()
            process.stdout.close()
            self.pool.append(_Worker(process, tasks, results))

    def map(self, name: str, tasks: Sequence) -> Iterator:
        """The results of task function ``name`` (``count``, ``fit`` or ``encode``) on each task, in order."""
        if self.workers == 1:
            yield from map(_TASKS[name], tasks)
            return
        from multiprocessing.connection import wait  # noqa: PLC0415

        if not self.pool:
            self._start()
        answers: dict[int, tuple] = {}
        sent = 0
        for index in range(len(tasks)):
            while index not in answers:
                for worker in self.pool:  # keep every worker busy, within the window
                    while len(worker.pending) < 2 and sent < min(len(tasks), index + 2 * self.workers):
                        worker.tasks.send((name, tasks[sent]))
                        worker.pending.append(sent)
                        sent += 1
                busy = {worker.results: worker for worker in self.pool if worker.pending}
                for connection in wait(list(busy)):
                    worker = busy[connection]
                    try:
                        answer = connection.recv()
                    except EOFError:
                        code = worker.process.wait()
                        raise ChildProcessError(
                            f"a preparation worker stopped unexpectedly (exit status {code}; killed, perhaps out "
                            "of memory: try fewer --workers); nothing was written"
                        ) from None
                    answers[worker.pending.popleft()] = answer
            ok, value, where = answers.pop(index)
            if not ok:
                if isinstance(value, (DataError, ConfigError)):
                    raise value  # its message names the file, the line and the field
                raise value from RemoteTraceback(where)
            yield value

    def close(self, abort: bool = False) -> None:
        for worker in self.pool:
            if abort:  # stop the running tasks now: their results are not wanted
                worker.process.kill()
            worker.tasks.close()  # a worker that is waiting for a task then exits
            worker.results.close()
        for worker in self.pool:
            worker.process.wait()
        self.pool = []


# ---------------------------------------------------------------------------- the two passes


def _build(
    job: _Job,
    directory: Path,
    inputs: dict[str, list[Path]],
    part_bytes: int,
    runner: _Runner,
    echo,
) -> tuple[Encoder, dict]:
    """Fit, then encode every split's arrays into ``directory``; (the fitted encoder, the report)."""
    schema, split = job.schema, job.split
    start = time.perf_counter()
    units = plan_units(schema, inputs, part_bytes, runner)
    if runner.workers > 1:
        echo(f"{len(units)} unit{'s' if len(units) > 1 else ''} of work on {runner.workers} workers")

    # pass 1: fit on the training rows only; fitters merge in unit order
    echo("fitting vocabularies and statistics on the training rows")
    fit_units = [u for u in units if u.role in ("train", "input")]
    fitter = Fitter(schema, seed=split.seed)
    for part in runner.map("fit", [(job, u) for u in fit_units]):
        fitter.merge(part)
    try:
        encoder = fitter.finish()
    except ValueError:
        raise DataError("no training rows to fit the preprocessing on") from None
    del fitter
    fit_seconds = time.perf_counter() - start

    # pass 2: encode every split, unit by unit, appended in unit order
    writers = _writers(schema, directory)
    unit_stats: list[ReadStats] = []
    try:
        if runner.workers == 1:
            results = ((_encode_unit(job, u, encoder, writers), None) for u in units)
        else:
            encoder.save(directory)  # the workers load it from here, once each
            results = runner.map("encode", [(job, u, directory) for u in units])
        first_of_file = {(u.role, u.file_index): u.index for u in reversed(units)}
        results = iter(results)
        for unit in units:
            if first_of_file[(unit.role, unit.file_index)] == unit.index:
                echo(f"encoding {unit.path}")
            stats, parts = next(results)
            unit_stats.append(stats)
            for name, (rows, positives) in (parts or {}).items():
                writers[name].append(directory / "parts" / str(unit.index) / name, rows, positives)
    finally:
        for writer in writers.values():
            writer.close()
        shutil.rmtree(directory / "parts", ignore_errors=True)
    seconds = time.perf_counter() - start

    # the report: per file, with its units where it was cut
    files: dict[tuple[str, int], ReadStats] = {}
    file_parts: dict[tuple[str, int], list[dict]] = {}
    for unit, stats in zip(units, unit_stats):
        key = (unit.role, unit.file_index)
        files.setdefault(key, ReadStats(str(unit.path))).merge(stats)
        if unit.part is not None:
            entry = {**unit.describe(schema), "rows_read": stats.rows_read, "rows_kept": stats.rows_kept, "rows_skipped": stats.rows_skipped}
            file_parts.setdefault(key, []).append(entry)
    rows_read = sum(s.rows_read for s in files.values())
    rows_written = sum(w.rows for w in writers.values())
    rows_skipped = sum(s.rows_skipped for s in files.values())
    if rows_read != rows_written + rows_skipped:  # an invariant, not a user error
        raise RuntimeError(f"row accounting broken: read {rows_read} != written {rows_written} + skipped {rows_skipped}")
    for name, writer in writers.items():
        if writer.rows == 0:
            raise DataError(f"the {name} split is empty after reading {_listing(inputs)}")
    report = {
        "rows_read": rows_read,
        "rows_written": rows_written,
        "rows_skipped": rows_skipped,
        "splits": {
            name: {"rows": w.rows, "positives": dict(zip(encoder.features.task_names, w.positives.tolist()))}
            for name, w in writers.items()
        },
        "inputs": [{**s.to_dict(), **({"parts": file_parts[key]} if key in file_parts else {})} for key, s in files.items()],
        "fit_seconds": fit_seconds,
        "seconds": seconds,
        "rows_per_second": rows_read / seconds if seconds > 0 else float("nan"),
        "reused": False,
    }
    return encoder, report


def _listing(inputs: dict[str, list[Path]]) -> list[str]:
    return [str(path) for paths in inputs.values() for path in paths]
