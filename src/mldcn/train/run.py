"""One training run from a resolved config: data → model → fit → test → files.

A run directory holds ``config.yaml`` (the resolved config: rerunning it
reproduces the run), ``run.json`` (the config and the data's fingerprint),
``metrics.jsonl`` (one line per epoch), ``best.pt`` (the best weights),
``last.pt`` (the training state) and ``result.json`` (test metrics per task,
cost, throughput). The served artifact ``model/`` is written by ``mldcn train``
(:mod:`mldcn.serve.artifact`), which sits above this package.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from mldcn.config import ConfigError, from_dict, save_yaml, to_dict
from mldcn.data.dataset import Dataset
from mldcn.data.source import DataConfig, load_data
from mldcn.files import write_text_atomic
from mldcn.models.config import ModelConfig, model_config_from_dict
from mldcn.models.flops import model_cost
from mldcn.models.ranking import RankingModel
from mldcn.models.registry import create_model
from mldcn.train import distributed, rundir
from mldcn.train.loop import (
    FitResult,
    TrainConfig,
    evaluate,
    fit,
    resolve_device,
    resolve_precision,
    seed_everything,
)


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs: data, model, training."""

    model: ModelConfig
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return {"data": to_dict(self.data), "model": self.model.to_dict(), "train": to_dict(self.train)}


def run_config_from_dict(data: dict) -> RunConfig:
    """Validate a run config mapping (``data``, ``model``, ``train``); unknown keys are errors."""
    unknown = sorted(set(data) - {"data", "model", "train"})
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {unknown}; valid keys are ['data', 'model', 'train']")
    if "model" not in data:
        raise ConfigError("the run config needs a 'model' (a preset name or a model mapping)")
    return RunConfig(
        model=model_config_from_dict(data["model"], "model"),
        data=from_dict(DataConfig, data.get("data"), "data"),
        train=from_dict(TrainConfig, data.get("train"), "train"),
    )


@dataclass
class RunResult:
    """The outcome of one run."""

    config: RunConfig
    model: RankingModel
    fit: FitResult
    test: dict
    cost: dict
    seconds: float
    run_dir: Path | None
    precision: str = "fp32"
    data: dict = field(default_factory=dict)  # the data set's facts (Dataset.info)

    def summary(self) -> dict:
        return {
            "family": self.config.model.family,
            "tasks": [t.to_dict() for t in self.model.embedding.features.tasks],
            "test": self.test,
            "best_valid": self.fit.best_valid,
            "best_valid_score": self.fit.best_score,
            "best_epoch": self.fit.best_epoch,
            "epochs": len(self.fit.history),
            "train_examples_per_second": self.fit.train_examples_per_second,
            "fit_seconds": self.seconds,
            "precision": self.precision,
            "cost": self.cost,
        }


def run(
    config: RunConfig,
    run_dir: str | Path | None = None,
    dataset: Dataset | None = None,
    resume: bool = False,
) -> RunResult:
    """Train and test one model; write the run directory if ``run_dir`` is given.

    Under ``torchrun`` the process group is joined here and every rank trains
    its shard (:func:`mldcn.train.loop.fit`); rank 0 writes the files. With
    ``resume`` training continues from ``run_dir/last.pt`` (sharded tables:
    ``last.dcp/``, on as many processes as wrote it), after checking that
    the directory was made from the same config and data (:mod:`mldcn.train.rundir`).
    The run directory is locked while the run writes it.
    """
    sharded = config.train.embedding_sharding != "none"
    ctx = distributed.init(resolve_device(config.train.device), group_of_one=sharded)
    dataset = dataset if dataset is not None else load_data(config.data)
    run_dir = Path(run_dir) if run_dir is not None else None
    writes = run_dir is not None and ctx.is_main
    with contextlib.ExitStack() as stack:
        error = None
        if writes:
            try:
                stack.enter_context(rundir.locked(run_dir))
                if resume:
                    rundir.check_resume(run_dir, config.to_dict(), dataset, ctx.world_size)
            except rundir.RunDirError as refused:
                error = refused
        if not distributed.agree(error is None, ctx):
            raise error or rundir.RunDirError(f"rank 0 could not use the run directory {run_dir}; see its error")
        if writes:
            save_yaml(config.to_dict(), run_dir / "config.yaml")
            rundir.write_record(run_dir, config.to_dict(), dataset)
        return _train_and_test(config, dataset, run_dir, writes, resume, ctx)


def _train_and_test(config: RunConfig, dataset: Dataset, run_dir, writes: bool, resume: bool, ctx) -> RunResult:
    seed_everything(config.train.seed)
    model = create_model(config.model, dataset.features)
    cost = model_cost(model)
    start = time.perf_counter()
    result = fit(model, dataset.train, dataset.valid, config.train, run_dir, resume=resume)
    seconds = time.perf_counter() - start
    if config.train.embedding_sharding != "none":
        from mldcn.train.sharding import gather_embedding  # noqa: PLC0415  (optional extra)

        model.embedding = gather_embedding(model.embedding)  # every rank: plain tables again
    test = evaluate(model, dataset.test, config.train.eval_batch_size, config.train.precision, config.train.group_field)
    precision = resolve_precision(config.train.precision, next(model.parameters()).device)
    outcome = RunResult(config, model, result, test, cost.to_dict(), seconds, run_dir, precision, dataset.info)
    if writes:
        summary = {**outcome.summary(), "data": dataset.info, "processes": ctx.world_size}
        write_text_atomic(run_dir / "result.json", json.dumps(summary, indent=2))
    return outcome
