"""One training run from a resolved config: data → model → fit → test → files.

A run directory holds ``config.yaml`` (the resolved config: rerunning it
reproduces the run), ``metrics.jsonl`` (one line per epoch), ``best.pt`` (the
best weights), ``result.json`` (test metrics, cost, throughput) and ``model/``
(the model artifact: ``mldcn predict``, ``mldcn export`` and ``mldcn serve`` take it).
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mldcn.config import Config, ConfigError, from_dict, save_yaml, to_dict
from mldcn.data.dataset import Dataset
from mldcn.data.synthetic import SyntheticConfig, make_synthetic
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
class DataConfig(Config):
    """Where the data comes from.

    Attributes:
        source: ``synthetic`` (the embedded generator) or ``prepared`` (a directory
            written by ``mldcn prepare``).
        path: the prepared directory (``source: prepared``).
        synthetic: generator settings (``source: synthetic``).
    """

    source: Literal["synthetic", "prepared"] = "synthetic"
    path: str | None = None
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.source == "prepared" and not self.path:
            raise ConfigError("data.path is required when data.source is 'prepared'")


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


def load_data(config: DataConfig) -> Dataset:
    if config.source == "synthetic":
        return make_synthetic(config.synthetic)
    from mldcn.data.prepared import load_prepared  # noqa: PLC0415  (issue: real data)

    return load_prepared(config.path)


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

    def summary(self) -> dict:
        return {
            "family": self.config.model.family,
            "test": self.test,
            "best_valid": self.fit.best_valid,
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
    save_model: bool = True,
) -> RunResult:
    """Train and test one model; write the run directory if ``run_dir`` is given.

    Under ``torchrun`` the process group is joined here and every rank trains
    its shard (:func:`mldcn.train.loop.fit`); rank 0 writes the files. With
    ``resume`` training continues from ``run_dir/last.pt``, after checking that
    the directory was made from the same config and data (:mod:`mldcn.train.rundir`).
    ``save_model`` writes the served artifact to ``run_dir/model``. The run
    directory is locked while the run writes it.
    """
    sharded = config.train.embedding_sharding != "none"
    if sharded and resume:
        raise ConfigError("--resume is not supported with sharded embedding tables yet: start the run afresh")
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
                    rundir.check_resume(run_dir, config.to_dict(), dataset)
            except rundir.RunDirError as refused:
                error = refused
        if not distributed.agree(error is None, ctx):
            raise error or rundir.RunDirError(f"rank 0 could not use the run directory {run_dir}; see its error")
        if writes:
            save_yaml(config.to_dict(), run_dir / "config.yaml")
            rundir.write_record(run_dir, config.to_dict(), dataset)
        return _train_and_test(config, dataset, run_dir, writes, resume, save_model, ctx)


def _train_and_test(config: RunConfig, dataset: Dataset, run_dir, writes: bool, resume: bool, save_model: bool, ctx) -> RunResult:
    seed_everything(config.train.seed)
    model = create_model(config.model, dataset.features)
    cost = model_cost(model)
    start = time.perf_counter()
    result = fit(model, dataset.train, dataset.valid, config.train, run_dir, resume=resume)
    seconds = time.perf_counter() - start
    if config.train.embedding_sharding != "none":
        from mldcn.train.sharding import gather_embedding  # noqa: PLC0415  (optional extra)

        model.embedding = gather_embedding(model.embedding)  # every rank: plain tables again
    test = evaluate(model, dataset.test, config.train.eval_batch_size, config.train.precision)
    precision = resolve_precision(config.train.precision, next(model.parameters()).device)
    outcome = RunResult(config, model, result, test, cost.to_dict(), seconds, run_dir, precision)
    if writes:
        summary = {**outcome.summary(), "data": dataset.info, "processes": ctx.world_size}
        write_text_atomic(run_dir / "result.json", json.dumps(summary, indent=2))
        if save_model:
            _save_model_artifact(config, model, run_dir / "model", {"test": test, "data": dataset.info})
    return outcome


def _save_model_artifact(config: RunConfig, model: RankingModel, directory: Path, extra: dict) -> None:
    """The served model (``mldcn predict/export/serve``): weights, config, features and, for
    prepared data, the fitted preprocessing; synthetic-data models take encoded ids."""
    from mldcn.data.encode import Encoder  # noqa: PLC0415
    from mldcn.serve.artifact import save_artifact  # noqa: PLC0415

    encoder = Encoder.load(config.data.path) if config.data.source == "prepared" else None
    save_artifact(directory, model, encoder, extra=extra)
