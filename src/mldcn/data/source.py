"""Where a run's data comes from: the embedded synthetic log or a prepared directory."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mldcn.config import Config, ConfigError
from mldcn.data.dataset import Dataset
from mldcn.data.synthetic import SyntheticConfig, make_synthetic


@dataclass(frozen=True)
class DataConfig(Config):
    """Where the data comes from.

    Attributes:
        source: ``synthetic`` (the embedded generator) or ``prepared`` (a directory
            written by ``mldcn prepare``).
        path: the prepared directory (``source: prepared``).
        synthetic: generator settings (``source: synthetic``).
        tasks: train on these of the data's tasks only (e.g. ``[income]`` for a
            single-task model on a two-task log); empty: all of them.
    """

    source: Literal["synthetic", "prepared"] = "synthetic"
    path: str | None = None
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    tasks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.source == "prepared" and not self.path:
            raise ConfigError("data.path is required when data.source is 'prepared'")


def load_data(config: DataConfig) -> Dataset:
    if config.source == "synthetic":
        dataset = make_synthetic(config.synthetic)
    else:
        from mldcn.data.prepared import load_prepared  # noqa: PLC0415

        dataset = load_prepared(config.path)
    return dataset.select_tasks(config.tasks) if config.tasks else dataset
