"""Checkpoints of a run directory: ``best.pt`` (the best weights) and ``last.pt`` (the whole
training state, to continue a run exactly with ``--resume``).

Both are plain tensors and JSON-able values, loaded with ``weights_only=True``:
loading one never runs code from the file. Rank 0 writes them, atomically.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import torch

from mldcn.config import ConfigError
from mldcn.files import atomic_path
from mldcn.train.distributed import DistContext
from mldcn.train.optim import Optimisation
from mldcn.train.state import FitResult, TrainingState

LAST = "last.pt"
BEST = "best.pt"
_KEYS = ("model", "optimizers", "shuffle", "rng", "epoch", "best_score", "bad_epochs", "best_state", "result")


def save_best(run_dir: Path, state: TrainingState) -> None:
    with atomic_path(run_dir / BEST) as tmp:
        torch.save(state.best_state, tmp)


def save_last(
    run_dir: Path, model, optimisation: Optimisation, shuffle: torch.Generator, state: TrainingState, ctx: DistContext
) -> None:
    """``last.pt``: everything needed to continue the run exactly, with every rank's RNG state."""
    rng = torch.get_rng_state()
    if ctx.distributed:
        states = [torch.empty_like(rng) for _ in range(ctx.world_size)]
        torch.distributed.all_gather(states, rng.to(next(model.parameters()).device))
        states = [r.cpu() for r in states]
    else:
        states = [rng]
    if not ctx.is_main:
        return
    checkpoint = {
        "epoch": state.epoch,
        "model": model.state_dict(),
        "optimizers": optimisation.state_dicts(),
        "shuffle": shuffle.get_state(),
        "rng": states,
        "best_score": state.best_score,
        "bad_epochs": state.bad_epochs,
        "best_state": state.best_state,
        "result": json.dumps(dataclasses.asdict(state.result)),  # plain JSON: loadable with weights_only
    }
    with atomic_path(run_dir / LAST) as tmp:
        torch.save(checkpoint, tmp)


def restore(
    run_dir: Path, device, model, optimisation: Optimisation, shuffle: torch.Generator, state: TrainingState, ctx: DistContext
) -> None:
    """Load ``last.pt`` into the model, optimisers, generators and ``state``; a clear error if it cannot be."""
    checkpoint = run_dir / LAST
    advice = "start the run afresh without --resume, or with another --out"
    try:
        saved = torch.load(checkpoint, map_location=device, weights_only=True)
        missing = [k for k in _KEYS if not isinstance(saved, dict) or k not in saved]
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{checkpoint}: not a weights-only mldcn training checkpoint ({reason}); {advice}") from None
    if missing:
        raise ConfigError(f"{checkpoint}: not an mldcn training checkpoint (no {missing}); {advice}")
    try:
        model.load_state_dict(saved["model"])
        optimisation.load_state_dicts(saved["optimizers"])
        result = FitResult(**json.loads(saved["result"]))
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        first = str(error).strip().splitlines()[0]
        raise ConfigError(f"{checkpoint}: does not fit this model and optimiser ({first}); {advice}") from None
    shuffle.set_state(saved["shuffle"])
    torch.set_rng_state(saved["rng"][ctx.rank] if ctx.rank < len(saved["rng"]) else saved["rng"][0])
    state.epoch, state.best_score, state.bad_epochs = saved["epoch"], saved["best_score"], saved["bad_epochs"]
    state.best_state, state.result = saved["best_state"], result
