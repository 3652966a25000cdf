"""Run many trainings on one data set, resumably.

Each run has a unique key; its outcome is appended to ``results.jsonl`` as soon
as it finishes, with its test predictions in ``predictions/``. A rerun of the
same study skips every key already in ``results.jsonl``, so an interrupted
sweep continues where it stopped.

Several workers on one machine may share a study's folder (start the same
command again, e.g. with ``--set train.threads=1`` each): a worker claims a run
with an exclusive ``runs/<key>/.claim`` file holding its process id, skips runs
another live worker holds, takes over claims of dead processes, and waits for
the others' runs before it returns.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mldcn.data.dataset import Dataset
from mldcn.data.source import DataConfig
from mldcn.files import process_alive
from mldcn.models.config import ModelConfig
from mldcn.train.loop import TrainConfig, predict
from mldcn.train.run import RunConfig, run


@dataclass(frozen=True)
class RunSpec:
    """One training run of a study: a unique key, labels for the tables, the configs."""

    key: str
    model: ModelConfig
    train: TrainConfig
    labels: dict = field(default_factory=dict)


def safe_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", key)


def load_results(out_dir: str | Path) -> dict[str, dict]:
    """The finished runs of a study, by key."""
    path = Path(out_dir) / "results.jsonl"
    if not path.exists():
        return {}
    results = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            results[record["key"]] = record
    return results


def run_study(
    specs: Iterable[RunSpec],
    dataset: Dataset,
    data_config: DataConfig,
    out_dir: str | Path,
    echo: Callable[[str], None] = print,
    poll_seconds: float = 10.0,
) -> dict[str, dict]:
    """Run every spec not finished yet (by this or another worker); return all results by key."""
    out_dir = Path(out_dir)
    (out_dir / "predictions").mkdir(parents=True, exist_ok=True)
    np.save(out_dir / "predictions" / "labels.npy", dataset.test.rows(0, len(dataset.test)).labels.numpy())  # [N, T], for DeLong's test
    specs = list(specs)
    results = load_results(out_dir)
    todo = sum(s.key not in results for s in specs)
    if todo < len(specs):
        echo(f"{len(specs) - todo} of {len(specs)} runs already finished; running {todo}")
    index = 0
    while True:
        results.update(load_results(out_dir))  # other workers' runs
        pending = [s for s in specs if s.key not in results]
        if not pending:
            return results
        spec = next((s for s in pending if _claim(out_dir / "runs" / safe_name(s.key) / ".claim")), None)
        if spec is None:  # every pending run is held by another live worker
            time.sleep(poll_seconds)
            continue
        claim = out_dir / "runs" / safe_name(spec.key) / ".claim"
        try:
            index += 1
            record = _run_one(spec, dataset, data_config, out_dir, echo, f"{index}/{todo}")
        finally:
            claim.unlink(missing_ok=True)
        results[spec.key] = record


def _claim(path: Path) -> bool:
    """Take the exclusive claim on a run; False while another live process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = int(path.read_text() or 0)
            except (OSError, ValueError):
                holder = 0
            if holder and holder != os.getpid() and process_alive(holder):
                return False
            path.unlink(missing_ok=True)  # left by a dead worker: take it over
            continue
        with os.fdopen(descriptor, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def _run_one(spec: RunSpec, dataset: Dataset, data_config: DataConfig, out_dir: Path, echo, position: str) -> dict:
    start = time.perf_counter()
    name = safe_name(spec.key)
    # a sweep keeps metrics and predictions, not hundreds of artifacts
    outcome = run(RunConfig(model=spec.model, data=data_config, train=spec.train), out_dir / "runs" / name, dataset=dataset)
    probabilities = predict(outcome.model, dataset.test, spec.train.eval_batch_size)  # [N, T]
    np.save(out_dir / "predictions" / f"{name}.npy", probabilities.astype(np.float32))

    def mean(metrics: dict, name: str) -> float:
        return float(np.mean([m[name] for m in metrics.values()])) if metrics else float("nan")

    record = {
        "key": spec.key,
        **spec.labels,
        # with several tasks the scores are means over the tasks; each task's are in test / valid
        "test_auc": mean(outcome.test, "auc"),
        "test_logloss": mean(outcome.test, "logloss"),
        "test_ne": mean(outcome.test, "ne"),
        "valid_auc": mean(outcome.fit.best_valid, "auc"),
        "valid_logloss": mean(outcome.fit.best_valid, "logloss"),
        "test": outcome.test,
        "valid": outcome.fit.best_valid,
        "best_epoch": outcome.fit.best_epoch,
        "epochs": len(outcome.fit.history),
        "stopped_by_time": outcome.fit.stopped_by_time,
        "fit_seconds": outcome.seconds,
        "train_examples_per_second": outcome.fit.train_examples_per_second,
        "precision": outcome.precision,
        "predictions": f"predictions/{name}.npy",
        **outcome.cost,
    }
    if spec.train.examples is not None:  # one pass: the learning curve on the held-out split
        record["curve"] = [
            {"examples": h["examples"], "valid_auc": mean(h["valid"], "auc"), "valid_logloss": mean(h["valid"], "logloss")}
            for h in outcome.fit.history
        ]
    with open(out_dir / "results.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")  # one append per run: workers never interleave lines
    trained = f"{record['epochs']} epochs" if "curve" not in record else f"one pass of {record['curve'][-1]['examples']:,} examples"
    echo(
        f"[{position}] {spec.key}: test AUC {record['test_auc']:.4f} "
        f"logloss {record['test_logloss']:.4f} ({trained}, {time.perf_counter() - start:.0f} s)"
    )
    return record


@torch.inference_mode()
def forward_latency_us(model, dataset: Dataset, batch_size: int, repeats: int = 30) -> float:
    """Median forward latency per example (µs) at ``batch_size``, fp32, eval mode."""
    model.eval()
    batch = dataset.test.rows(0, batch_size)
    inputs = batch.inputs()
    for _ in range(3):
        model(*inputs)
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(*inputs)
        timings.append(time.perf_counter() - start)
    return float(np.median(timings)) / len(batch) * 1e6
