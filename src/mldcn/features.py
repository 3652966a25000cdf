"""What a model's input tensors hold: the contract between data, models and serving.

Shape legend, used across the package:

    B  batch size                     F  number of fields (Fc + Fn + Fs)
    Fc categorical fields             Fn numeric fields
    Fs multi-valued (sequence) fields L  padded length of a multi-valued field
    D  embedding size                 d  F * D, width of the flattened input x0
    r  rank                           t  mask hidden width

    T  number of tasks (labels)

A model is called as ``model(categorical, numeric, sequence)`` and returns one
logit per task, ``[B, T]``:

    categorical  int64   [B, Fc]     per-field ids in [0, vocab_size)
    numeric      float32 [B, Fn]     already transformed (log, standardised, ...)
    sequence     int64   [B, Fs, L]  per-field ids, 0 = padding (optional)

A :class:`FeatureSpec` says what the input tensors hold and, in ``tasks``, what
each output is: one :class:`TaskSpec` per label column of the data (a data set
with one label is the case T = 1). Data code produces a :class:`FeatureSpec`;
model code consumes it. Neither side imports the other; both use
:class:`mldcn.batch.Batch` for rows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class CategoricalField:
    """A single-valued categorical field; ids run from 0 to ``vocab_size - 1``."""

    name: str
    vocab_size: int

    def __post_init__(self) -> None:
        if self.vocab_size < 1:
            raise ValueError(f"field {self.name!r}: vocab_size must be >= 1, got {self.vocab_size}")


@dataclass(frozen=True)
class NumericField:
    """A numeric field, embedded as ``value * w_field``."""

    name: str


@dataclass(frozen=True)
class SequenceField:
    """A multi-valued field (e.g. genres ``Action|Comedy``), mean-pooled.

    Id 0 is padding; real values use ids 1 .. ``vocab_size - 1``.
    """

    name: str
    vocab_size: int
    max_len: int

    def __post_init__(self) -> None:
        if self.vocab_size < 2:
            raise ValueError(f"field {self.name!r}: vocab_size must be >= 2 (id 0 is padding)")
        if self.max_len < 1:
            raise ValueError(f"field {self.name!r}: max_len must be >= 1, got {self.max_len}")


@dataclass(frozen=True)
class TaskSpec:
    """One prediction task: a binary label (click, good click, conversion ...).

    Attributes:
        name: the task's name (a prediction column is ``probability_<name>``).
        weight: its weight in the training loss ``Σ_t weight_t · BCE_t``.
        kind: ``binary`` (the only kind for now: a logit, a BCE loss, AUC metrics).
    """

    name: str
    weight: float = 1.0
    kind: str = "binary"

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"task name {self.name!r}: use letters, digits, '_' and '-'")
        if not self.weight >= 0:
            raise ValueError(f"task {self.name!r}: weight must be >= 0, got {self.weight}")
        if self.kind != "binary":
            raise ValueError(f"task {self.name!r}: kind must be 'binary', got {self.kind!r}")

    def to_dict(self) -> dict:
        return {"name": self.name, "weight": self.weight, "kind": self.kind}


#: the task of a data set with one unnamed label (and of artifacts made before tasks existed)
DEFAULT_TASKS = (TaskSpec("click"),)


@dataclass(frozen=True)
class FeatureSpec:
    """The fields a model embeds, in input order (categorical, numeric, sequence), and its tasks."""

    categorical: tuple[CategoricalField, ...] = ()
    numeric: tuple[NumericField, ...] = ()
    sequence: tuple[SequenceField, ...] = ()
    tasks: tuple[TaskSpec, ...] = DEFAULT_TASKS

    def __post_init__(self) -> None:
        names = [f.name for f in (*self.categorical, *self.numeric, *self.sequence)]
        if not names:
            raise ValueError("a FeatureSpec needs at least one field")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate field names: {duplicates}")
        tasks = [t.name for t in self.tasks]
        if not tasks:
            raise ValueError("a FeatureSpec needs at least one task")
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"duplicate task names: {sorted({t for t in tasks if tasks.count(t) > 1})}")

    @property
    def num_tasks(self) -> int:
        """T: the number of logits a model returns per example."""
        return len(self.tasks)

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)

    @property
    def num_fields(self) -> int:
        return len(self.categorical) + len(self.numeric) + len(self.sequence)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in (*self.categorical, *self.numeric, *self.sequence))

    @property
    def sequence_length(self) -> int:
        """L: the padded length of the ``sequence`` input (0 without sequence fields)."""
        return max((f.max_len for f in self.sequence), default=0)

    def to_dict(self) -> dict:
        return {
            "categorical": [{"name": f.name, "vocab_size": f.vocab_size} for f in self.categorical],
            "numeric": [{"name": f.name} for f in self.numeric],
            "sequence": [
                {"name": f.name, "vocab_size": f.vocab_size, "max_len": f.max_len}
                for f in self.sequence
            ],
            "tasks": [t.to_dict() for t in self.tasks],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureSpec":
        """The inverse of :meth:`to_dict`; a spec without ``tasks`` (written before
        tasks existed) has the one task of :data:`DEFAULT_TASKS`."""
        unknown = set(data) - {"categorical", "numeric", "sequence", "tasks"}
        if unknown:
            raise ValueError(f"unknown keys in feature spec: {sorted(unknown)}")
        return cls(
            categorical=tuple(CategoricalField(**f) for f in data.get("categorical", ())),
            numeric=tuple(NumericField(**f) for f in data.get("numeric", ())),
            sequence=tuple(SequenceField(**f) for f in data.get("sequence", ())),
            tasks=tuple(TaskSpec(**t) for t in data["tasks"]) if "tasks" in data else DEFAULT_TASKS,
        )

    def with_tasks(self, tasks: tuple[TaskSpec, ...]) -> "FeatureSpec":
        return dataclasses.replace(self, tasks=tuple(tasks))

    def same_inputs(self, other: "FeatureSpec") -> bool:
        """The same fields as ``other`` (its tasks may differ: a model may learn some of the data's)."""
        return self.with_tasks(other.tasks) == other
