"""A data set: a feature spec and its train / valid / test splits.

A split is a :class:`~mldcn.batch.Batch` in memory or a
:class:`~mldcn.data.stream.StreamedSplit` read from disk as it is used; both
have ``len``, ``num_tasks``, ``batches(...)``, ``rows(...)``, ``rows_per_epoch``,
``label_means`` and ``select_labels``, which is all training and evaluation use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from mldcn.batch import Batch
from mldcn.config import ConfigError
from mldcn.data.stream import StreamedSplit
from mldcn.features import FeatureSpec

Split = Union[Batch, StreamedSplit]


@dataclass(frozen=True)
class Dataset:
    """A feature spec (fields and tasks) and its train / valid / test splits, plus facts about them."""

    features: FeatureSpec
    train: Split
    valid: Split
    test: Split
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("train", "valid", "test"):
            split = getattr(self, name)
            if split.num_tasks != self.features.num_tasks:
                raise ValueError(
                    f"the {name} split has {split.num_tasks} label columns, the features have "
                    f"{self.features.num_tasks} tasks {list(self.features.task_names)}"
                )

    def select_tasks(self, tasks: tuple[str, ...] | list[str]) -> "Dataset":
        """The same rows with only ``tasks`` (a subset of the data's, in the order given) as labels."""
        names = self.features.task_names
        unknown = [t for t in tasks if t not in names]
        if unknown or not tasks:
            raise ConfigError(f"data.tasks {list(tasks)}: the data's tasks are {list(names)}")
        index = [names.index(t) for t in tasks]
        features = self.features.with_tasks(tuple(self.features.tasks[i] for i in index))
        info = {**self.info, "tasks": list(tasks)}
        splits = (self.train.select_labels(index), self.valid.select_labels(index), self.test.select_labels(index))
        return Dataset(features, *splits, info)

    @property
    def name(self) -> str:
        """What the data is called in titles: its schema (prepared data) or ``synthetic``."""
        return self.info.get("schema") or self.info.get("source") or "data"


def positive_rates(splits: dict[str, Split], features: FeatureSpec) -> dict[str, dict[str, float]]:
    """``{split: {task: mean label}}``."""
    return {name: dict(zip(features.task_names, split.label_means().tolist())) for name, split in splits.items()}
