"""A data set: a feature spec and its train / valid / test splits, each a :class:`~mldcn.batch.Batch`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from mldcn.batch import Batch
from mldcn.config import ConfigError
from mldcn.features import FeatureSpec


@dataclass(frozen=True)
class Dataset:
    """A feature spec (fields and tasks) and its train / valid / test splits, plus facts about them."""

    features: FeatureSpec
    train: Batch
    valid: Batch
    test: Batch
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("train", "valid", "test"):
            split = getattr(self, name)
            if split.labels is None or split.num_tasks != self.features.num_tasks:
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
        index = torch.tensor([names.index(t) for t in tasks])
        features = self.features.with_tasks(tuple(self.features.tasks[i] for i in index.tolist()))

        def keep(split: Batch) -> Batch:
            return dataclasses.replace(split, labels=split.labels[:, index])

        info = {**self.info, "tasks": list(tasks)}
        return Dataset(features, keep(self.train), keep(self.valid), keep(self.test), info)

    @property
    def name(self) -> str:
        """What the data is called in titles: its schema (prepared data) or ``synthetic``."""
        return self.info.get("schema") or self.info.get("source") or "data"


def positive_rates(splits: dict[str, Batch], features: FeatureSpec) -> dict[str, dict[str, float]]:
    """``{split: {task: mean label}}``."""
    return {
        name: dict(zip(features.task_names, split.labels.double().mean(dim=0).tolist())) for name, split in splits.items()
    }
