"""The training state: the plateau schedule, early stopping and the best weights so far."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

from torch import nn


@dataclass
class FitResult:
    """What ``fit`` did: per-epoch history, the best epoch and its validation metrics (per task)."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_valid: dict = field(default_factory=dict)
    best_score: float = float("nan")
    train_seconds: float = 0.0
    train_examples: int = 0
    stopped_early: bool = False
    stopped_by_time: bool = False

    @property
    def train_examples_per_second(self) -> float:
        return self.train_examples / self.train_seconds if self.train_seconds > 0 else float("nan")

    @property
    def finished(self) -> bool:
        return self.stopped_early or self.stopped_by_time


@dataclass
class TrainingState:
    """Where a run stands: the last epoch, the best validation score and its weights.

    ``observe`` applies the recipe's rules after each evaluation: a score better
    than the best by more than ``1e-6`` is an improvement (its weights are kept);
    otherwise the epoch counts towards ``patience`` and the learning rate decays
    (the caller decays it when ``observe`` returns False).
    """

    maximise: bool
    best_state: dict
    epoch: int = 0
    best_score: float = 0.0
    bad_epochs: int = 0
    result: FitResult = field(default_factory=FitResult)

    @classmethod
    def fresh(cls, model: nn.Module, maximise: bool) -> "TrainingState":
        return cls(maximise, copy.deepcopy(model.state_dict()), best_score=-math.inf if maximise else math.inf)

    def observe(self, epoch: int, score: float, valid: dict, model: nn.Module, patience: int) -> bool:
        """Record epoch ``epoch``'s validation ``score``; True if it improved on the best."""
        self.epoch = epoch
        improved = score > self.best_score + 1e-6 if self.maximise else score < self.best_score - 1e-6
        if improved:
            self.best_score, self.bad_epochs = score, 0
            self.result.best_epoch, self.result.best_valid, self.result.best_score = epoch, valid, score
            self.best_state = copy.deepcopy(model.state_dict())
        else:
            self.bad_epochs += 1
            self.result.stopped_early = self.bad_epochs >= patience
        return improved
