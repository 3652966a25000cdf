"""Where a run's data comes from: a generated log (the embedded synthetic one or the
industrial-shape one) or a prepared directory."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mldcn.config import Config, ConfigError
from mldcn.data.dataset import Dataset
from mldcn.data.industrial import IndustrialConfig, make_industrial
from mldcn.data.stream import BLOCK_ROWS, BUFFER_ROWS
from mldcn.data.synthetic import SyntheticConfig, make_synthetic


@dataclass(frozen=True)
class DataConfig(Config):
    """Where the data comes from.

    Attributes:
        source: ``synthetic`` (the embedded generator, :mod:`mldcn.data.synthetic`:
            planted instance-gated interactions), ``industrial`` (the industrial-shape
            log with a neutral teacher, :mod:`mldcn.data.industrial`, generated in
            memory; ``mldcn synth`` writes a large one to disk) or ``prepared`` (a
            directory written by ``mldcn prepare`` or ``mldcn synth``).
        path: the prepared directory (``source: prepared``).
        synthetic: generator settings (``source: synthetic``).
        industrial: generator settings (``source: industrial``).
        tasks: train on these of the data's tasks only (e.g. ``[income]`` for a
            single-task model on a two-task log); empty: all of them.
        load: how prepared splits are held: ``memory`` (read whole), ``stream``
            (read from disk block by block as batches are drawn, so memory does not
            grow with the data; :mod:`mldcn.data.stream`), or ``auto`` (default):
            whole when all the splits take at most a quarter of the available memory.
        block_rows: a streamed shuffle permutes blocks of this many contiguous rows.
        shuffle_buffer_rows: ... and shuffles the rows of this many rows' worth of
            blocks at a time (memory: about this many rows).
    """

    source: Literal["synthetic", "industrial", "prepared"] = "synthetic"
    path: str | None = None
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    industrial: IndustrialConfig = field(default_factory=IndustrialConfig)
    tasks: tuple[str, ...] = ()
    load: Literal["auto", "memory", "stream"] = "auto"
    block_rows: int = BLOCK_ROWS
    shuffle_buffer_rows: int = BUFFER_ROWS

    _positive = ("block_rows", "shuffle_buffer_rows")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.source == "prepared" and not self.path:
            raise ConfigError("data.path is required when data.source is 'prepared'")


def load_data(config: DataConfig) -> Dataset:
    if config.source == "synthetic":
        dataset = make_synthetic(config.synthetic)
    elif config.source == "industrial":
        dataset = make_industrial(config.industrial)
    else:
        from mldcn.data.prepared import load_prepared  # noqa: PLC0415

        dataset = load_prepared(config.path, config.load, config.block_rows, config.shuffle_buffer_rows)
    return dataset.select_tasks(config.tasks) if config.tasks else dataset
