"""The training loop: explicit, no framework.

``fit`` is the recipe, over small parts: how the weights are optimised
(:mod:`~mldcn.train.optim`: dense, sparse or sharded tables), the training state
with its plateau schedule and early stopping (:mod:`~mldcn.train.state`),
checkpoints (:mod:`~mldcn.train.checkpoint`) and the metrics log
(:mod:`~mldcn.train.log`). Each epoch trains on the weighted sum of the tasks'
BCE-with-logits losses, evaluates every task on the validation split, decays the
learning rate on a plateau and stops early after ``patience`` epochs without
improvement, restoring the best weights. This is the BARS / FuxiCTR recipe
(DESIGN.md): Adam 1e-3, batch 4096, gradient-norm clipping at 10, embedding
regularisation ``λ/2 · ||E||²`` added to the loss, lr × 0.1 on plateau, patience 2.
"""

from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from mldcn.batch import Batch
from mldcn.config import Config, ConfigError
from mldcn.data.dataset import Split
from mldcn.features import FeatureSpec
from mldcn.metrics import binary_metrics, group_auc
from mldcn.models.ranking import RankingModel
from mldcn.train import checkpoint
from mldcn.train.distributed import DistContext, all_reduce_sum, gather_strided
from mldcn.train.distributed import context as distributed_context
from mldcn.train.log import MetricsLog
from mldcn.train.optim import SPARSE, Optimisation, build_optimizers, set_up
from mldcn.train.state import FitResult, TrainingState

__all__ = ["FitResult", "TrainConfig", "build_optimizers", "evaluate", "fit", "predict", "seed_everything"]


@dataclass(frozen=True)
class TrainConfig(Config):
    """How to train. Defaults follow the BARS recipe.

    Attributes:
        epochs: maximum number of epochs.
        batch_size: training batch size.
        eval_batch_size: batch size for validation and prediction (a pure forward pass).
        optimizer: ``adam`` or ``adamw`` for the dense weights.
        lr: learning rate of the dense optimiser.
        weight_decay: weight decay of the dense optimiser (decoupled for ``adamw``).
        embedding_optimizer: ``same`` (tables join the dense optimiser), ``adam``
            (a separate dense Adam), ``adagrad``, ``rowwise_adagrad`` (one accumulator
            per table row, :mod:`mldcn.train.rowwise`) or ``sparse_adam`` (sparse gradients:
            only the rows looked up in a batch are touched).
        embedding_lr: learning rate of a separate embedding optimiser (default: ``lr``).
        embedding_l2: λ of ``λ/2 · ||E||²`` over the whole tables, added to the loss
            (FuxiCTR's ``embedding_regularizer``; not decoupled weight decay).
        grad_clip_norm: clip the global gradient norm to this (None = off).
        monitor: validation metric for early stopping and the plateau schedule
            (``auc`` and ``gauc`` are maximised, ``logloss`` minimised).
        monitor_task: the task whose metric is monitored; None (default): the
            mean over the tasks (with one task, that task).
        group_field: a categorical field (e.g. the user id) whose values group the
            rows for gAUC, the impression-weighted mean of per-group AUCs, reported
            beside AUC for every task (None: no gAUC).
        patience: stop after this many evaluations without improvement.
        lr_decay: multiply the learning rates by this on each plateau (1 = off).
        max_minutes: stop after the epoch that passes this much training time
            (None = no limit); the best weights so far are kept.
        min_lr: floor of the decayed learning rate.
        seed: seeds shuffling, dropout and (in the CLI) the initial weights.
        compile: train through ``torch.compile`` (the first epoch pays the compilation).
        embedding_sharding: ``none``; ``table``, ``column`` or (GPUs only) ``row``:
            shard the embedding tables across the processes with TorchRec (an optional extra; see
            :mod:`mldcn.train.sharding`); the tables then use a fused optimiser
            (``embedding_optimizer``: adagrad by default, rowwise_adagrad, or adam).
        threads: torch intra-op threads (None = torch's default).
        device: ``cpu``, ``cuda`` or ``auto``.
        precision: ``fp32``; ``bf16``: the interaction and the head run under
            bfloat16 autocast (matrix products in bf16, accumulation in fp32;
            embeddings, the loss, the weights and the optimiser state stay fp32);
            ``auto`` (default): bf16 where the device computes it natively (a CPU
            with AVX-512 BF16 or AMX, a GPU with bf16), else fp32. On Frappe_x1
            bf16 trained DCNv2 2.2× faster with no loss of test AUC over 5 seeds
            (docs/performance.md).
        progress: show a progress bar.
        examples: **one pass** (the production regime of scaling studies): train on
            the first ``examples`` rows of the training split, in order, each seen
            once — no epochs, no shuffle, no early stopping, no learning-rate decay,
            the final weights kept — and score the validation split (a fixed
            held-out slice) ``curve_points`` times along the way: the learning
            curve, one ``history`` record per point with the examples seen. A whole
            number of batches. None (default): epochs.
        curve_points: evaluations of the one-pass learning curve, evenly spaced in
            batches (the last one at the end of the pass).
    """

    epochs: int = 100
    batch_size: int = 4096
    eval_batch_size: int = 65536
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    embedding_optimizer: Literal["same", "adam", "adagrad", "rowwise_adagrad", "sparse_adam"] = "same"
    embedding_lr: float | None = None
    embedding_l2: float = 0.0
    grad_clip_norm: float | None = 10.0
    monitor: Literal["auc", "gauc", "logloss"] = "auc"
    monitor_task: str | None = None
    group_field: str | None = None
    patience: int = 2
    lr_decay: float = 0.1
    min_lr: float = 1e-6
    max_minutes: float | None = None
    seed: int = 2021
    threads: int | None = None
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    compile: bool = False
    embedding_sharding: Literal["none", "table", "column", "row"] = "none"
    progress: bool = True
    examples: int | None = None
    curve_points: int = 10

    _positive = (
        "epochs", "batch_size", "eval_batch_size", "lr", "patience", "embedding_lr", "threads", "max_minutes",
        "examples", "curve_points",
    )  # fmt: skip
    _non_negative = ("weight_decay", "embedding_l2", "min_lr")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.lr_decay <= 1.0:
            raise ConfigError(f"TrainConfig.lr_decay must be in (0, 1], got {self.lr_decay}")
        if self.embedding_sharding != "none" and self.embedding_l2 > 0:
            raise ConfigError("TrainConfig.embedding_l2 is not supported with sharded embedding tables")
        if self.monitor == "gauc" and self.group_field is None:
            raise ConfigError("TrainConfig.monitor 'gauc' needs a group_field (the field whose values group the rows)")
        if self.examples is not None and self.examples % self.batch_size:
            whole = max(1, self.examples // self.batch_size) * self.batch_size
            raise ConfigError(
                f"TrainConfig.examples ({self.examples:,}) must be a whole number of batches of "
                f"{self.batch_size:,} (e.g. {whole:,})"
            )
        if self.embedding_l2 > 0 and self.embedding_optimizer in SPARSE:
            raise ConfigError(
                "TrainConfig.embedding_l2 regularises the whole table (a dense gradient); "
                f"it cannot be combined with the sparse embedding_optimizer {self.embedding_optimizer!r}"
            )


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (call before building a model for reproducible init)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("TrainConfig.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` → ``bf16`` where ``device`` computes bfloat16 natively, else ``fp32``."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """bfloat16 autocast for ``bf16`` (or ``auto`` resolving to it), a disabled context for ``fp32``."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=resolve_precision(precision, device) == "bf16")


# ---------------------------------------------------------------------------- scoring


@torch.inference_mode()
def predict_logits(model: nn.Module, split: Split, batch_size: int = 65536, precision: str = "fp32") -> torch.Tensor:
    """Logits ``[N, T]`` for every row of ``split``, as one fp32 CPU tensor (a pure forward pass)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with autocast(device, precision):
        outputs = [model(*batch.to(device).inputs()).float().cpu() for batch in split.batches(batch_size)]
    model.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty(0, 0)


def predict(model: nn.Module, split: Split, batch_size: int = 65536, precision: str = "fp32") -> np.ndarray:
    """Probabilities ``[N, T]``: one column per task."""
    return torch.sigmoid(predict_logits(model, split, batch_size, precision)).numpy()


def _group_column(features: FeatureSpec, group_field: str) -> int:
    """The column of ``categorical`` that holds ``group_field`` (gAUC's groups)."""
    names = [f.name for f in features.categorical]
    if group_field not in names:
        raise ConfigError(f"TrainConfig.group_field {group_field!r} is not a categorical field; fields: {names}")
    return names.index(group_field)


def task_metrics(features: FeatureSpec, split: Split, probabilities: np.ndarray, group_field: str | None = None) -> dict:
    """``{task: {auc, logloss, ne, calibration[, gauc]}}`` of ``probabilities [N, T]`` on ``split``."""
    column = None if group_field is None else _group_column(features, group_field)
    parts = [(b.labels, None if column is None else b.categorical[:, column]) for b in split.batches(1 << 18)]
    labels = torch.cat([p[0] for p in parts]).numpy() if parts else np.zeros((0, split.num_tasks), np.float32)
    groups = None if column is None else torch.cat([p[1] for p in parts]).numpy()
    metrics = {}
    for t, task in enumerate(features.task_names):
        metrics[task] = binary_metrics(labels[:, t], probabilities[:, t])
        if groups is not None:
            metrics[task]["gauc"] = group_auc(labels[:, t], probabilities[:, t], groups)
    return metrics


def evaluate(
    model: RankingModel, split: Split, batch_size: int = 65536, precision: str = "fp32", group_field: str | None = None
) -> dict[str, dict[str, float]]:
    """Every task's AUC, logloss, normalised entropy and calibration (and gAUC over ``group_field``) on ``split``."""
    return task_metrics(model.embedding.features, split, predict(model, split, batch_size, precision), group_field)


def monitored_score(metrics: dict[str, dict[str, float]], config: TrainConfig) -> float:
    """The validation score early stopping watches: one task's metric, or its mean over the tasks
    (``fit`` has checked that the task exists)."""
    if config.monitor_task is not None:
        return metrics[config.monitor_task][config.monitor]
    return float(np.mean([m[config.monitor] for m in metrics.values()]))


def _score_shard(net: nn.Module, split: Split, config: TrainConfig, device: torch.device, ctx: DistContext) -> np.ndarray:
    """Probabilities ``[N, T]`` for all of ``split``: each rank scores its rows, then they are gathered."""
    was_training = net.training
    net.eval()
    # fbgemm's CPU table lookups exist only behind autograd: no inference_mode for sharded tables
    no_grad = torch.no_grad() if config.embedding_sharding != "none" else torch.inference_mode()
    with no_grad, autocast(device, config.precision):
        batches = split.batches(config.eval_batch_size, rank=ctx.rank, world_size=ctx.world_size)
        logits = [net(*batch.to(device).inputs()).float() for batch in batches]
    net.train(was_training)
    tasks = split.num_tasks
    local = torch.cat(logits) if logits else torch.empty(0, tasks, device=device)
    return torch.sigmoid(gather_strided(local, len(split), ctx)).cpu().numpy()


# ---------------------------------------------------------------------------- training


def task_loss(logits: torch.Tensor, batch: Batch, task_weights: torch.Tensor) -> torch.Tensor:
    """``Σ_b w_b Σ_t λ_t BCE(logit_bt, y_bt)``: summed over the rows, weighted by task (λ) and row (w)."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), batch.labels, reduction="none")  # [B, T]
    per_row = bce @ task_weights  # [B]
    if batch.weights is not None:
        per_row = per_row * batch.weights
    return per_row.sum()


def _train_step(optimisation: Optimisation, batch: Batch, rows: int, config: TrainConfig, device, ctx, task_weights) -> torch.Tensor:
    """One optimiser step on this rank's part of a global batch of ``rows`` rows; its summed loss (detached)."""
    with autocast(device, config.precision):
        logits = optimisation.net(*batch.inputs())  # [B, T]
    summed = task_loss(logits, batch, task_weights)
    loss = summed * (ctx.world_size / rows)  # DDP averages over ranks: this makes it the global mean
    if config.embedding_l2 > 0:
        loss = loss + config.embedding_l2 / 2 * sum(t.pow(2).sum() for t in optimisation.tables)
    optimisation.zero_grad()
    loss.backward()
    optimisation.step(config.grad_clip_norm)
    return summed.detach()


def _train_epoch(
    epoch: int, optimisation: Optimisation, train: Split, config: TrainConfig, device, ctx, shuffle, task_weights, show_bar
) -> float:
    """One pass over ``train``; the mean training loss per row."""
    n = train.rows_per_epoch(ctx.world_size)  # a streamed split pads its ranks' shards to one size
    net = optimisation.net
    net.train()
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, rows (this rank)
    local_batch = config.batch_size // ctx.world_size
    batches = train.batches(local_batch, shuffle=True, generator=shuffle, rank=ctx.rank, world_size=ctx.world_size)
    bar = tqdm(batches, total=math.ceil(n / config.batch_size), desc=f"epoch {epoch}", disable=not show_bar, leave=False)
    for step, batch in enumerate(bar):
        rows = min(config.batch_size, n - step * config.batch_size)  # rows of this global batch
        batch = batch.to(device)
        summed = _train_step(optimisation, batch, rows, config, device, ctx, task_weights)
        totals[0] += summed
        totals[1] += len(batch)
        if show_bar and step % 20 == 19:
            bar.set_postfix(loss=f"{totals[0].item() / totals[1].item():.4f}")
    totals = all_reduce_sum(totals, ctx)
    return totals[0].item() / max(totals[1].item(), 1)


def _one_pass(
    optimisation: Optimisation, scorer, features: FeatureSpec, train: Split, valid: Split, config: TrainConfig, device, ctx, task_weights, log
) -> FitResult:
    """Train on the first ``config.examples`` rows of ``train`` in order, once; score ``valid`` along the way."""
    steps = config.examples // config.batch_size
    if config.examples > len(train):
        raise ConfigError(
            f"TrainConfig.examples ({config.examples:,}) is more than the {len(train):,} training rows: "
            "one pass sees each example once"
        )
    at = {max(1, round(steps * k / config.curve_points)) for k in range(1, config.curve_points + 1)}  # steps to score after
    result = FitResult()
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, rows since the last point (this rank)
    batches = train.batches(config.batch_size // ctx.world_size, rank=ctx.rank, world_size=ctx.world_size)
    start = time.perf_counter()
    optimisation.net.train()
    for step, batch in enumerate(batches, start=1):
        batch = batch.to(device)
        totals[0] += _train_step(optimisation, batch, config.batch_size, config, device, ctx, task_weights)
        totals[1] += len(batch)
        if step in at:
            seconds = time.perf_counter() - start
            reduced = all_reduce_sum(totals, ctx)
            eval_start = time.perf_counter()
            metrics = task_metrics(features, valid, _score_shard(scorer, valid, config, device, ctx), config.group_field)
            result.train_seconds += seconds
            result.train_examples = step * config.batch_size
            record = {
                "examples": result.train_examples,
                "train_loss": reduced[0].item() / max(reduced[1].item(), 1),  # since the previous point
                "valid": metrics,
                "valid_score": monitored_score(metrics, config),
                "lr": optimisation.lr,
                "train_seconds": seconds,
                "eval_seconds": time.perf_counter() - eval_start,
                "train_examples_per_second": reduced[1].item() / seconds if seconds > 0 else float("nan"),
            }
            result.history.append(record)
            log.point(record)
            totals.zero_()
            start = time.perf_counter()
        if step == steps:
            break
    last = result.history[-1]
    result.best_epoch, result.best_valid, result.best_score = 1, last["valid"], last["valid_score"]
    return result


def _check_against(features: FeatureSpec, config: TrainConfig) -> None:
    """The task and field the config names exist (before an epoch is spent finding out)."""
    if config.monitor_task is not None and config.monitor_task not in features.task_names:
        raise ConfigError(f"TrainConfig.monitor_task {config.monitor_task!r} is not a task; tasks: {list(features.task_names)}")
    if config.group_field is not None:
        _group_column(features, config.group_field)


def fit(
    model: RankingModel,
    train: Split,
    valid: Split,
    config: TrainConfig,
    run_dir: str | Path | None = None,
    resume: bool = False,
) -> FitResult:
    """Train ``model`` in place on every task of its features; return the history. The best weights are restored.

    If ``run_dir`` is given, each epoch's metrics are appended to
    ``run_dir/metrics.jsonl``, the best weights saved to ``run_dir/best.pt`` and
    the whole training state to ``run_dir/last.pt`` after every epoch (sharded
    tables: the state, best weights included, to ``run_dir/last.dcp/`` with
    ``torch.distributed.checkpoint``, :mod:`~mldcn.train.checkpoint`); with
    ``resume=True`` a run continues from it on the same curve.

    Under ``torchrun`` (a process group is initialised) each rank trains on its
    shard of every global batch of ``config.batch_size`` rows through
    ``DistributedDataParallel``; the loss is scaled so the averaged gradient is
    the gradient of the global batch's mean loss, as in one process. Rank 0
    writes the files.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    device, ctx = resolve_device(config.device), distributed_context()
    if config.batch_size % ctx.world_size:
        raise ConfigError(f"batch_size {config.batch_size} is not divisible by the {ctx.world_size} processes")
    features = model.embedding.features
    _check_against(features, config)
    if config.examples is not None and resume:
        raise ConfigError("a one-pass run (train.examples) does not resume: start it again")
    torch.manual_seed(config.seed + ctx.rank)  # dropout masks differ across ranks
    shuffle = torch.Generator().manual_seed(config.seed)  # the same permutation on every rank
    optimisation = set_up(model, config, device, ctx)
    task_weights = torch.tensor([t.weight for t in features.tasks], dtype=torch.float32, device=device)
    run_dir = Path(run_dir) if run_dir is not None else None
    writes = run_dir is not None and ctx.is_main
    if writes:
        run_dir.mkdir(parents=True, exist_ok=True)
    checkpoints = run_dir is not None
    sharding = config.embedding_sharding  # sharded tables: every rank writes its shards (last.dcp/)
    scorer = optimisation.net if sharding != "none" else model  # sharded lookups need every rank
    show = config.progress and ctx.is_main
    if config.examples is not None:  # one pass: no epochs, no checkpoints to restore
        log = MetricsLog(run_dir, writes, show=show, resume=False)
        return _one_pass(optimisation, scorer, features, train, valid, config, device, ctx, task_weights, log)

    state = TrainingState.fresh(model, maximise=config.monitor != "logloss")
    restored = resume and run_dir is not None and checkpoint.found(run_dir)
    if restored:
        checkpoint.restore(run_dir, device, model, optimisation, shuffle, state, ctx, sharding)
        if state.result.finished:
            model.load_state_dict(state.best_state)
            return state.result
    result = state.result
    log = MetricsLog(run_dir, writes, show=show, resume=restored)
    show_bar = show and sys.stderr.isatty()  # redirected output: the epoch lines only
    fit_start = time.perf_counter() - result.train_seconds

    for epoch in range(state.epoch + 1, config.epochs + 1):
        start = time.perf_counter()
        train_loss = _train_epoch(epoch, optimisation, train, config, device, ctx, shuffle, task_weights, show_bar)
        train_seconds = time.perf_counter() - start
        result.train_seconds += train_seconds
        result.train_examples += len(train)

        eval_start = time.perf_counter()
        valid_metrics = task_metrics(features, valid, _score_shard(scorer, valid, config, device, ctx), config.group_field)
        score = monitored_score(valid_metrics, config)
        lr = optimisation.lr
        improved = state.observe(epoch, score, valid_metrics, model, config.patience)
        if not improved:
            optimisation.decay(config.lr_decay, config.min_lr)
        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            "valid": valid_metrics,
            "valid_score": score,
            "lr": lr,
            "train_seconds": train_seconds,
            "eval_seconds": time.perf_counter() - eval_start,
            "train_examples_per_second": len(train) / train_seconds,
            "improved": improved,
        }
        result.history.append(record)
        log.epoch(record)
        if config.max_minutes is not None and time.perf_counter() - fit_start > 60 * config.max_minutes:
            result.stopped_by_time = not result.stopped_early
        if writes and checkpoints and improved and sharding == "none":  # sharded: the best weights are in last.dcp
            checkpoint.save_best(run_dir, state)
        if checkpoints:
            checkpoint.save_last(run_dir, model, optimisation, shuffle, state, ctx, sharding)
        if result.finished:
            break
    model.load_state_dict(state.best_state)
    return result
