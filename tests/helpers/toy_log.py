"""A toy click log shared by the prediction, artifact, export and serving tests.

A CSV with two categorical fields, a numeric field also bucketised into a
categorical one, and a multi-valued field, prepared with ``mldcn prepare``'s code
and trained for one epoch (about a second).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from mldcn.data.prepare import prepare
from mldcn.data.schema import load_schema
from mldcn.models import HeadConfig, get_preset
from mldcn.train.loop import TrainConfig
from mldcn.data.source import DataConfig
from mldcn.serve.artifact import save_run_artifact
from mldcn.train.run import RunConfig, run

SCHEMA = """\
name: toy
format: csv
label: {name: label}
categorical:
  - {name: user}
  - {name: item}
  - {name: price_bucket, source: price, derive: bucketize, num_buckets: 4}
numeric:
  - {name: price, transform: log_standardize}
sequence:
  - {name: genres, separator: "|", max_len: 3}
"""
HEADER = ["label", "user", "item", "price", "genres"]
TINY_MODEL = (
    get_preset("mldcn")
    .replace(embedding_dim=4, head=HeadConfig(hidden=(16,)))
    .with_interaction(rank=4, num_layers=2)
)
TINY_TRAIN = TrainConfig(epochs=1, batch_size=256, lr=3e-3, progress=False, seed=0, precision="fp32")


def toy_rows(n: int, seed: int) -> list[list[str]]:
    """Rows of the toy log as the CSV holds them (the label depends on user, item, price, genres)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        user, item, price = int(rng.integers(0, 30)), int(rng.integers(0, 40)), float(rng.exponential(10))
        genres = "|".join(rng.choice(list("abcde"), size=int(rng.integers(0, 4)), replace=False))
        logit = 0.3 * (user % 5) - 0.2 * (item % 7) + 0.05 * price + (1.0 if "a" in genres else 0.0) - 1.0
        label = int(rng.random() < 1 / (1 + np.exp(-logit)))
        rows.append([str(label), f"u{user}", f"i{item}", f"{price:.3f}", genres])
    return rows


def write_csv(path: Path, rows: list[list[str]], header: list[str] = HEADER) -> Path:
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def make_toy_data(directory: Path) -> dict[str, Path]:
    """Raw train/valid/test CSVs, the schema and the prepared directory under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "schema.yaml").write_text(SCHEMA)
    files = {
        name: write_csv(directory / f"{name}.csv", toy_rows(n, seed))
        for name, n, seed in (("train", 3000, 0), ("valid", 500, 1), ("test", 400, 2))
    }
    prepared = directory / "prepared"
    prepare(load_schema(directory / "schema.yaml"), prepared, **files)
    return {**files, "schema": directory / "schema.yaml", "prepared": prepared}


def train_toy(directory: Path, data: dict[str, Path], model=TINY_MODEL) -> Path:
    """Train one epoch on the prepared toy data; the run directory (its artifact is ``run/model``)."""
    config = RunConfig(model=model, data=DataConfig(source="prepared", path=str(data["prepared"])), train=TINY_TRAIN)
    save_run_artifact(run(config, directory))  # as `mldcn train` does
    return directory
