"""Run many trainings on one data set, resumably.

Each run has a unique key; its outcome is appended to ``results.jsonl`` as soon
as it finishes, with its test predictions in ``predictions/``. A rerun of the
same study skips every key already in ``results.jsonl``, so an interrupted
sweep continues where it stopped.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mldcn.data.dataset import Dataset
from mldcn.models.config import ModelConfig
from mldcn.train.loop import TrainConfig, predict
from mldcn.train.run import DataConfig, RunConfig, run


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
) -> dict[str, dict]:
    """Run every spec not finished yet; return all results of the study by key."""
    out_dir = Path(out_dir)
    (out_dir / "predictions").mkdir(parents=True, exist_ok=True)
    np.save(out_dir / "predictions" / "labels.npy", dataset.test.label.numpy())  # for DeLong's test
    results = load_results(out_dir)
    specs = list(specs)
    todo = [s for s in specs if s.key not in results]
    if len(todo) < len(specs):
        echo(f"{len(specs) - len(todo)} of {len(specs)} runs already finished; running {len(todo)}")
    for index, spec in enumerate(todo, 1):
        start = time.perf_counter()
        name = safe_name(spec.key)
        outcome = run(
            RunConfig(model=spec.model, data=data_config, train=spec.train),
            out_dir / "runs" / name,
            dataset=dataset,
            save_model=False,  # a sweep keeps metrics and predictions, not hundreds of artifacts
        )
        probabilities = predict(outcome.model, dataset.test, spec.train.eval_batch_size)
        np.save(out_dir / "predictions" / f"{name}.npy", probabilities.astype(np.float32))
        record = {
            "key": spec.key,
            **spec.labels,
            "test_auc": outcome.test["auc"],
            "test_logloss": outcome.test["logloss"],
            "test_ne": outcome.test["ne"],
            "valid_auc": outcome.fit.best_valid.get("auc", float("nan")),
            "valid_logloss": outcome.fit.best_valid.get("logloss", float("nan")),
            "best_epoch": outcome.fit.best_epoch,
            "epochs": len(outcome.fit.history),
            "stopped_by_time": outcome.fit.stopped_by_time,
            "fit_seconds": outcome.seconds,
            "train_examples_per_second": outcome.fit.train_examples_per_second,
            "precision": outcome.precision,
            "predictions": f"predictions/{name}.npy",
            **outcome.cost,
        }
        with open(out_dir / "results.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        results[spec.key] = record
        echo(
            f"[{index}/{len(todo)}] {spec.key}: test AUC {record['test_auc']:.4f} "
            f"logloss {record['test_logloss']:.4f} ({record['epochs']} epochs, {time.perf_counter() - start:.0f} s)"
        )
    return results


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
