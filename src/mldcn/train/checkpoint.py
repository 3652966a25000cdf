"""Checkpoints of a run directory, to continue a run exactly with ``--resume``.

Unsharded tables: ``best.pt`` (the best weights) and ``last.pt`` (the whole
training state), plain tensors and JSON-able values loaded with
``weights_only=True`` (loading one never runs code from the file); rank 0
writes them, atomically.

Sharded tables (TorchRec) live in pieces on every rank, so every rank writes
its pieces with ``torch.distributed.checkpoint`` (DCP) into ``last.dcp/``::

    last.dcp/
      .metadata, __<rank>_0.distcp   DCP: the model with its sharded tables ("model"), the
                                     fused table optimiser's sharded accumulators
                                     ("embedding_optimizer") and the best weights ("best")
      trainer.pt                     rank 0, weights-only: the dense optimiser, the shuffle
                                     generator, every rank's RNG state, epoch, best score,
                                     plateau counter and history (all equal on every rank)
      checkpoint.json                rank 0, written last: epoch, processes, sharding

It is written whole under ``.last.dcp.partial/`` and then renamed: the old
``last.dcp`` is first renamed to ``.last.dcp.previous`` and removed after the
swap, so a crash at any moment leaves either a complete checkpoint under one of
the two names or, before the first one is complete, none. A sharded run writes
no ``best.pt``: its best weights are in ``last.dcp`` and its output is the artifact.
A sharded checkpoint resumes only on as many processes and with the same sharding
as wrote it (:func:`resume_problem`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import pickle
import shutil
from pathlib import Path

import torch

from mldcn.config import ConfigError
from mldcn.files import atomic_path, write_text_atomic
from mldcn.train.distributed import DistContext
from mldcn.train.optim import Optimisation
from mldcn.train.state import FitResult, TrainingState

LAST = "last.pt"
BEST = "best.pt"
LAST_SHARDED = "last.dcp"
_PARTIAL = ".last.dcp.partial"
_PREVIOUS = ".last.dcp.previous"
_TRAINER = "trainer.pt"
_META = "checkpoint.json"
_TRAINER_KEYS = ("optimizers", "shuffle", "rng", "epoch", "best_score", "bad_epochs", "result")
_KEYS = ("model", "best_state", *_TRAINER_KEYS)
_ADVICE = "start the run afresh without --resume, or with another --out"
_WISE = {"table": "table-wise", "column": "column-wise"}


def _processes(n: int) -> str:
    return f"{n} process" + ("" if n == 1 else "es")


# ---------------------------------------------------------------------------- what a run directory holds


def sharded_checkpoint(run_dir: Path) -> Path | None:
    """The complete sharded checkpoint in ``run_dir`` (``last.dcp``, or the previous one if a
    crash came between the two renames of a save), or None."""
    for name in (LAST_SHARDED, _PREVIOUS):
        if (run_dir / name / _META).is_file():
            return run_dir / name
    return None


def found(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a checkpoint of either kind."""
    return (run_dir / LAST).is_file() or sharded_checkpoint(run_dir) is not None


def _metadata(path: Path) -> dict:
    try:
        meta = json.loads((path / _META).read_text())
        return {"sharding": str(meta["sharding"]), "processes": int(meta["processes"]), "epoch": int(meta["epoch"])}
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as error:
        raise ConfigError(f"{path / _META}: not an mldcn sharded checkpoint record ({error}); {_ADVICE}") from None


def resume_problem(run_dir: Path, sharding: str, world_size: int) -> str | None:
    """Why a run sharding its tables ``sharding``-wise (``none``: unsharded) on
    ``world_size`` processes cannot resume from ``run_dir``; None if it can."""
    sharded = sharded_checkpoint(run_dir)
    single = run_dir / LAST
    if sharding == "none":
        if single.is_file():
            return None
        if sharded is not None:
            meta = _metadata(sharded)
            return (
                f"{sharded} holds embedding tables sharded {_WISE.get(meta['sharding'], meta['sharding'])} over "
                f"{_processes(meta['processes'])}, but this run does not shard them (train.embedding_sharding=none); "
                f"resume with --set train.embedding_sharding={meta['sharding']}, or {_ADVICE}"
            )
        return f"{run_dir}: nothing to resume (no {LAST}); run without --resume to start a new run there"
    if sharded is None:
        if single.is_file():
            return (
                f"{single} is a checkpoint of unsharded embedding tables, but this run shards them "
                f"{_WISE.get(sharding, sharding)} (train.embedding_sharding={sharding}); resume with "
                f"train.embedding_sharding=none, or {_ADVICE}"
            )
        return f"{run_dir}: nothing to resume (no {LAST_SHARDED}); run without --resume to start a new run there"
    meta = _metadata(sharded)
    if meta["sharding"] != sharding:
        return (
            f"{sharded} holds embedding tables sharded {_WISE.get(meta['sharding'], meta['sharding'])}, but this run "
            f"shards them {_WISE.get(sharding, sharding)}; resume with --set train.embedding_sharding={meta['sharding']}, "
            f"or {_ADVICE}"
        )
    if meta["processes"] != world_size:
        return (
            f"{sharded} was written by {_processes(meta['processes'])} (tables sharded {_WISE.get(sharding, sharding)}), "
            f"but this run has {_processes(world_size)}: a sharded checkpoint resumes only on as many processes as "
            f"wrote it; resume with --nproc {meta['processes']}, or {_ADVICE}"
        )
    return None


# ---------------------------------------------------------------------------- saving


def save_best(run_dir: Path, state: TrainingState) -> None:
    with atomic_path(run_dir / BEST) as tmp:
        torch.save(state.best_state, tmp)


def _rng_states(model, ctx: DistContext) -> list[torch.Tensor]:
    """Every rank's torch RNG state, on every rank (a collective)."""
    rng = torch.get_rng_state()
    if not ctx.distributed:
        return [rng]
    states = [torch.empty_like(rng) for _ in range(ctx.world_size)]
    torch.distributed.all_gather(states, rng.to(next(model.parameters()).device))
    return [r.cpu() for r in states]


def _trainer_state(optimisation: Optimisation, shuffle: torch.Generator, state: TrainingState, rng: list) -> dict:
    return {
        "epoch": state.epoch,
        "optimizers": optimisation.state_dicts(),
        "fused_lr": [optimizer.param_groups[0]["lr"] for optimizer in optimisation.fused],
        "shuffle": shuffle.get_state(),
        "rng": rng,
        "best_score": state.best_score,
        "bad_epochs": state.bad_epochs,
        "result": json.dumps(dataclasses.asdict(state.result)),  # plain JSON: loadable with weights_only
    }


def save_last(
    run_dir: Path,
    model,
    optimisation: Optimisation,
    shuffle: torch.Generator,
    state: TrainingState,
    ctx: DistContext,
    sharding: str = "none",
) -> None:
    """Everything needed to continue the run exactly, with every rank's RNG state; call on every rank.

    ``last.pt`` (rank 0) for unsharded tables, ``last.dcp/`` (every rank) for sharded ones.
    """
    if sharding != "none":
        _save_sharded(run_dir, model, optimisation, shuffle, state, ctx, sharding)
        return
    rng = _rng_states(model, ctx)
    if not ctx.is_main:
        return
    trainer = _trainer_state(optimisation, shuffle, state, rng)
    checkpoint = {"model": model.state_dict(), "best_state": state.best_state, **trainer}
    with atomic_path(run_dir / LAST) as tmp:
        torch.save(checkpoint, tmp)


def _barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        torch.distributed.barrier()


def _sharded_state(model, optimisation: Optimisation, best: dict) -> dict:
    from mldcn.train.sharding import fused_optimizer  # noqa: PLC0415  (optional extra)

    return {"model": model.state_dict(), "embedding_optimizer": fused_optimizer(optimisation.net).state_dict(), "best": best}


def _save_sharded(run_dir, model, optimisation, shuffle, state, ctx, sharding: str) -> None:
    import torch.distributed.checkpoint as dcp  # noqa: PLC0415

    partial = run_dir / _PARTIAL
    if ctx.is_main:
        shutil.rmtree(partial, ignore_errors=True)  # what a crashed save left
        partial.mkdir(parents=True)
    _barrier(ctx)
    dcp.save(_sharded_state(model, optimisation, state.best_state), checkpoint_id=partial)  # a collective
    rng = _rng_states(model, ctx)
    if ctx.is_main:
        torch.save(_trainer_state(optimisation, shuffle, state, rng), partial / _TRAINER)
        meta = {"epoch": state.epoch, "processes": ctx.world_size, "sharding": sharding, "format": "torch.distributed.checkpoint"}
        write_text_atomic(partial / _META, json.dumps(meta, indent=2))  # last: marks the directory complete
        last, previous = run_dir / LAST_SHARDED, run_dir / _PREVIOUS
        if last.exists():  # last.dcp only ever appears complete: the older .previous can go
            shutil.rmtree(previous, ignore_errors=True)
            os.replace(last, previous)
        os.replace(partial, last)
        shutil.rmtree(previous, ignore_errors=True)
    _barrier(ctx)  # no rank runs ahead of a checkpoint that is not in place yet


# ---------------------------------------------------------------------------- restoring


def _apply_trainer_state(saved: dict, optimisation: Optimisation, shuffle, state: TrainingState, ctx, source: Path) -> None:
    try:
        optimisation.load_state_dicts(saved["optimizers"])
        result = FitResult(**json.loads(saved["result"]))
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        first = str(error).strip().splitlines()[0]
        raise ConfigError(f"{source}: does not fit this model and optimiser ({first}); {_ADVICE}") from None
    for optimizer, lr in zip(optimisation.fused, saved.get("fused_lr", [])):  # the decayed rate of sharded tables
        for group in optimizer.param_groups:
            group["lr"] = lr
    shuffle.set_state(saved["shuffle"])
    torch.set_rng_state(saved["rng"][ctx.rank] if ctx.rank < len(saved["rng"]) else saved["rng"][0])
    state.epoch, state.best_score, state.bad_epochs = saved["epoch"], saved["best_score"], saved["bad_epochs"]
    state.result = result


def _load_weights_only(path: Path, device, keys: tuple[str, ...]) -> dict:
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
        missing = [k for k in keys if not isinstance(saved, dict) or k not in saved]
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{path}: not a weights-only mldcn training checkpoint ({reason}); {_ADVICE}") from None
    if missing:
        raise ConfigError(f"{path}: not an mldcn training checkpoint (no {missing}); {_ADVICE}")
    return saved


def restore(
    run_dir: Path,
    device,
    model,
    optimisation: Optimisation,
    shuffle: torch.Generator,
    state: TrainingState,
    ctx: DistContext,
    sharding: str = "none",
) -> None:
    """Load the run's checkpoint into the model, optimisers, generators and ``state``; call on every rank.

    A clear :class:`ConfigError` if it cannot be: none there, one of the other kind
    (sharded or not, or sharded another way), one written by another number of
    processes, or one that does not fit the model.
    """
    problem = resume_problem(run_dir, sharding, ctx.world_size)
    if problem:
        raise ConfigError(f"cannot resume: {problem}")
    if sharding != "none":
        _restore_sharded(sharded_checkpoint(run_dir), device, model, optimisation, shuffle, state, ctx)
        return
    checkpoint = run_dir / LAST
    saved = _load_weights_only(checkpoint, device, _KEYS)
    try:
        model.load_state_dict(saved["model"])
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        first = str(error).strip().splitlines()[0]
        raise ConfigError(f"{checkpoint}: does not fit this model and optimiser ({first}); {_ADVICE}") from None
    _apply_trainer_state(saved, optimisation, shuffle, state, ctx, checkpoint)
    state.best_state = saved["best_state"]


def _restore_sharded(path: Path, device, model, optimisation, shuffle, state, ctx) -> None:
    import torch.distributed.checkpoint as dcp  # noqa: PLC0415
    from torch.distributed.checkpoint.api import CheckpointException  # noqa: PLC0415

    from mldcn.train.sharding import fused_optimizer  # noqa: PLC0415  (optional extra)

    # DCP loads in place: the template's tensors (this rank's shards) receive the saved values
    template = _sharded_state(model, optimisation, copy.deepcopy(model.state_dict()))
    try:
        dcp.load(template, checkpoint_id=path)  # a collective: a failure is raised on every rank
        model.load_state_dict(template["model"])
        fused_optimizer(optimisation.net).load_state_dict(template["embedding_optimizer"])
    except (CheckpointException, RuntimeError, ValueError, KeyError, TypeError) as error:
        first = str(error).strip().splitlines()[0]
        raise ConfigError(f"{path}: does not fit this model and optimiser ({first}); {_ADVICE}") from None
    saved = _load_weights_only(path / _TRAINER, device, _TRAINER_KEYS)
    _apply_trainer_state(saved, optimisation, shuffle, state, ctx, path / _TRAINER)
    state.best_state = template["best"]
