"""What a run directory was made from, and who is writing it.

``run.json`` records the resolved config (the model's included) and a
fingerprint of the data (feature spec and tasks, schema, rows and positive rate
of every split). ``--resume`` compares the new run with
the record and refuses a mismatch, naming the keys that differ, so a run
directory never pairs the weights of one run with the data or model of another.
A few keys may change on resume because they change how long or how visibly a
run trains, not what it trains on (:data:`RESUMABLE_KEYS`). A run whose tables
are sharded resumes only with the sharding and the number of processes its
checkpoint records (:func:`mldcn.train.checkpoint.resume_problem`).

``.lock`` keeps a second training out of a directory while one writes it: the
writer holds an exclusive ``flock`` on it for the whole run and writes its
process id and host into it. The kernel drops the lock when its holder exits,
however it exits, so the lock of a killed training is taken over by the next.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from mldcn.config import ConfigError
from mldcn.data.dataset import Dataset, positive_rates
from mldcn.files import write_text_atomic

RECORD_FILE = "run.json"
LOCK_FILE = ".lock"
#: config keys a resumed run may change: how long, how visibly and with how many threads it trains
RESUMABLE_KEYS = frozenset({"train.epochs", "train.max_minutes", "train.progress", "train.threads", "data.path"})


class RunDirError(ConfigError):
    """A run directory cannot be used as asked (locked, or resumed with other inputs)."""


# ---------------------------------------------------------------------------- the record


def data_fingerprint(dataset: Dataset) -> dict:
    """What identifies the data a run trains and is tested on (not where it lies)."""
    splits = {name: getattr(dataset, name) for name in ("train", "valid", "test")}
    rates = positive_rates(splits, dataset.features)
    facts = {
        "features": dataset.features.to_dict(),
        "rows": {name: len(split) for name, split in splits.items()},
        "label_mean": {name: [round(rate, 12) for rate in rates[name].values()] for name in splits},
        "schema": dataset.info.get("schema"),
    }
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()
    return {"sha256": digest, "rows": facts["rows"], "name": dataset.name, "path": dataset.info.get("source")}


def write_record(run_dir: Path, config: dict, dataset: Dataset) -> None:
    """``run.json``: the resolved config and the data fingerprint of this run."""
    import mldcn  # noqa: PLC0415  (the package imports this module's parents)

    record = {
        "mldcn_version": mldcn.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": config,
        "data": data_fingerprint(dataset),
    }
    write_text_atomic(run_dir / RECORD_FILE, json.dumps(record, indent=2))


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        flat = {}
        for key, child in value.items():
            flat.update(_flatten(child, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def config_differences(old: dict, new: dict) -> list[str]:
    """``key: old → new`` for every key that differs, but those a resume may change."""
    a, b = _flatten(old), _flatten(new)
    keys = sorted(k for k in set(a) | set(b) if k not in RESUMABLE_KEYS and a.get(k, "<absent>") != b.get(k, "<absent>"))
    return [f"{k}: {a.get(k, '<absent>')!r} → {b.get(k, '<absent>')!r}" for k in keys]


def _as_resolved_now(recorded: dict) -> dict:
    """A recorded config resolved as this version resolves configs: an option added since
    the run was made takes its default, which is the behaviour the run had. A record this
    version cannot resolve is compared as it is."""
    from mldcn.train.run import run_config_from_dict  # noqa: PLC0415  (run imports this module)

    try:
        return run_config_from_dict(recorded).to_dict()
    except (ConfigError, TypeError, ValueError):
        return recorded


def check_resume(run_dir: Path, config: dict, dataset: Dataset, world_size: int = 1) -> None:
    """Refuse to resume ``run_dir`` with another config or other data, or a sharded run's
    checkpoint with another sharding or number of processes (``world_size``); the message
    names what differs."""
    from mldcn.train import checkpoint  # noqa: PLC0415  (torch and the optimisers: only when resuming)

    sharding = config.get("train", {}).get("embedding_sharding", "none")
    try:
        problem = checkpoint.resume_problem(run_dir, sharding, world_size)
    except ConfigError as error:
        raise RunDirError(str(error)) from None
    if problem:
        raise RunDirError(f"cannot resume: {problem}")
    record_file = run_dir / RECORD_FILE
    if not record_file.exists():
        raise RunDirError(
            f"{record_file}: missing, so this run cannot be checked before it is resumed "
            "(made by an older mldcn, or not by `mldcn train`); start it afresh without --resume"
        )
    try:
        record = json.loads(record_file.read_text())
        recorded_config, recorded_data = record["config"], record["data"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise RunDirError(f"{record_file}: not a run record mldcn can read ({error}); start afresh without --resume") from None
    problems = config_differences(_as_resolved_now(recorded_config), config)
    data = data_fingerprint(dataset)
    if data["sha256"] != recorded_data.get("sha256"):
        rows = ", ".join(f"{k} {recorded_data.get('rows', {}).get(k, '?'):,} → {v:,}" for k, v in data["rows"].items())
        before = f"{recorded_data.get('name')} at {recorded_data.get('path')}"
        after = f"{data['name']} at {data['path']}"
        where = f"{before} → {after}; " if before != after else ""
        problems.append(f"data: not the data the run was trained on ({where}rows {rows})")
    if problems:
        raise RunDirError(
            f"cannot resume {run_dir}: it was made from other inputs; differing: "
            + "; ".join(problems)
            + ". Resume with the run's own config (`--config "
            + str(run_dir / "config.yaml")
            + " --resume`), or start a new run with another --out"
        )


# ---------------------------------------------------------------------------- the lock


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock while the block runs; :class:`RunDirError` if another process holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 256, 0).decode(errors="replace").strip() or "an unknown process"
            raise RunDirError(
                f"{run_dir}: another training is writing this run directory ({holder}); "
                "wait for it to finish or choose another --out"
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(descriptor)  # closing the descriptor releases the lock
