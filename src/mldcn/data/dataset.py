"""A data set: a feature spec and its train / valid / test splits, each a :class:`~mldcn.batch.Batch`."""

from __future__ import annotations

from dataclasses import dataclass, field

from mldcn.batch import Batch
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

    @property
    def name(self) -> str:
        """What the data is called in titles: its schema (prepared data) or ``synthetic``."""
        return self.info.get("schema") or self.info.get("source") or "data"


def positive_rates(splits: dict[str, Batch], features: FeatureSpec) -> dict[str, dict[str, float]]:
    """``{split: {task: mean label}}``."""
    return {
        name: dict(zip(features.task_names, split.labels.double().mean(dim=0).tolist())) for name, split in splits.items()
    }
