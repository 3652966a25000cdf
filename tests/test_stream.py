"""Streamed prepared splits (mldcn.data.stream): every row once per epoch, seeded block shuffles,
per-rank shards, the same values as the in-memory split, and training on them."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import stream_worker
import torch
from prepared_dir import write_prepared

from mldcn.batch import Batch
from mldcn.data.dataset import Dataset
from mldcn.data.encode import FeatureMapError
from mldcn.data.prepared import load_prepared, load_split
from mldcn.data.stream import StreamedSplit
from mldcn.data.synthetic import SyntheticConfig, make_synthetic
from mldcn.features import CategoricalField, FeatureSpec, NumericField, SequenceField, TaskSpec
from mldcn.models import HeadConfig, create_model, get_preset
from mldcn.train.loop import TrainConfig, evaluate, fit, seed_everything


def indexed_dataset(n: int, valid: int = 7, test: int = 5) -> Dataset:
    """A data set whose first categorical column is the row's own index (so rows can be told apart)."""
    features = FeatureSpec(
        categorical=(CategoricalField("row", n), CategoricalField("parity", 2)),
        numeric=(NumericField("x"),),
        sequence=(SequenceField("s", 5, 3),),
        tasks=(TaskSpec("click"), TaskSpec("good")),
    )

    def split(rows: int) -> Batch:
        index = torch.arange(rows)
        return Batch(
            categorical=torch.stack([index, index % 2], dim=1).int(),
            numeric=index.float().unsqueeze(1) / rows,
            sequence=torch.stack([index % 5, (index + 1) % 5, torch.zeros_like(index)], dim=1).int().unsqueeze(1),
            labels=torch.stack([(index % 3 == 0).float(), (index % 6 == 0).float()], dim=1),
        )

    return Dataset(features, split(n), split(valid), split(test))


@pytest.fixture
def indexed(tmp_path):
    dataset = indexed_dataset(1000)
    return dataset, write_prepared(dataset, tmp_path / "prepared")


def row_ids(batches) -> list[int]:
    return [int(i) for batch in batches for i in batch.categorical[:, 0]]


def test_a_streamed_split_holds_the_same_values_as_the_in_memory_one(indexed):
    dataset, path = indexed
    streamed = load_split(path, "train", "stream", block_rows=64, buffer_rows=256)
    assert isinstance(streamed, StreamedSplit) and len(streamed) == 1000 and streamed.num_tasks == 2
    for a, b in ((dataset.train.rows(100, 400), streamed.rows(100, 400)), (dataset.train, streamed.rows(0, 10**6))):
        for column in ("categorical", "numeric", "sequence", "labels"):
            assert torch.equal(getattr(a, column), getattr(b, column)), column
    np.testing.assert_allclose(streamed.label_means(), dataset.train.labels.double().mean(0).numpy())
    # in order, one rank or several: exactly the in-memory batches
    for rank, world in ((0, 1), (0, 3), (2, 3)):
        for a, b in zip(dataset.train.batches(96, rank=rank, world_size=world), streamed.batches(96, rank=rank, world_size=world)):
            assert torch.equal(a.categorical, b.categorical) and torch.equal(a.labels, b.labels)


@pytest.mark.parametrize(("block", "buffer", "batch"), [(64, 256, 100), (1, 1, 7), (1000, 1000, 1000), (33, 10_000, 64)])
def test_a_shuffled_epoch_sees_every_row_once_in_full_batches(indexed, block, buffer, batch):
    _, path = indexed
    split = load_split(path, "train", "stream", block_rows=block, buffer_rows=buffer)
    batches = list(split.batches(batch, shuffle=True, generator=torch.Generator().manual_seed(1)))
    assert sorted(row_ids(batches)) == list(range(1000))
    assert [len(b) for b in batches[:-1]] == [batch] * (len(batches) - 1)  # the left-over rows join the next buffer
    assert len(batches) == -(-1000 // batch)
    again = list(split.batches(batch, shuffle=True, generator=torch.Generator().manual_seed(1)))
    assert row_ids(again) == row_ids(batches)  # seeded
    other = list(split.batches(batch, shuffle=True, generator=torch.Generator().manual_seed(2)))
    assert row_ids(other) != row_ids(batches)
    # every column moves with its row
    for b in batches:
        index = b.categorical[:, 0].long()
        assert torch.equal(b.categorical[:, 1].long(), index % 2)
        assert torch.equal(b.labels[:, 0], (index % 3 == 0).float())
        assert torch.equal(b.sequence[:, 0, 0].long(), index % 5)


def test_a_small_buffer_keeps_a_batch_within_its_blocks_and_a_whole_buffer_mixes_all(indexed):
    _, path = indexed
    small = load_split(path, "train", "stream", block_rows=50, buffer_rows=100)  # two blocks per buffer
    first = next(iter(small.batches(100, shuffle=True, generator=torch.Generator().manual_seed(0))))
    assert len({i // 50 for i in row_ids([first])}) <= 2
    whole = load_split(path, "train", "stream", block_rows=50, buffer_rows=1000)
    first = next(iter(whole.batches(100, shuffle=True, generator=torch.Generator().manual_seed(0))))
    assert len({i // 50 for i in row_ids([first])}) > 10  # 100 rows from a uniform shuffle of 20 blocks


@pytest.mark.parametrize(("rows", "world"), [(1000, 2), (1000, 3), (7, 4)])
def test_each_rank_reads_only_its_shard_and_the_ranks_agree_on_the_batch_count(tmp_path, rows, world):
    path = write_prepared(indexed_dataset(rows), tmp_path / "prepared")
    split = load_split(path, "train", "stream", block_rows=16, buffer_rows=64)
    shard = -(-rows // world)
    per_rank = []
    for rank in range(world):
        generator = torch.Generator().manual_seed(3)  # every rank walks the same seed
        batches = list(split.batches(32, shuffle=True, generator=generator, rank=rank, world_size=world))
        ids = row_ids(batches)
        assert sorted(ids) == sorted(i % rows for i in range(rank * shard, (rank + 1) * shard))  # its shard, padded round
        per_rank.append([len(b) for b in batches])
    assert all(sizes == per_rank[0] for sizes in per_rank)  # DDP needs the same number of steps on every rank
    assert split.rows_per_epoch(world) == world * shard
    seen = Counter(i for rank in range(world) for i in range(rank * shard, (rank + 1) * shard))
    assert sum(seen.values()) - rows == world * shard - rows < world  # at most W - 1 rows seen twice


def test_the_loaded_data_set_and_auto(indexed, monkeypatch):
    import mldcn.data.prepared as prepared  # noqa: PLC0415

    dataset, path = indexed
    assert load_prepared(path).info["load"] == "memory"  # small: read whole
    monkeypatch.setattr(prepared, "fits_in_memory", lambda nbytes: False)
    streamed = load_prepared(path)
    assert streamed.info["load"] == "stream" and isinstance(streamed.valid, StreamedSplit)
    assert streamed.info["positive_rate"]["train"] == pytest.approx({"click": 334 / 1000, "good": 167 / 1000})
    one = streamed.select_tasks(["good"])
    assert one.train.num_tasks == 1 and torch.equal(one.valid.rows(0, 7).labels, dataset.valid.labels[:, 1:])


def test_arrays_shorter_than_the_feature_map_say_so(indexed):
    _, path = indexed
    (path / "train" / "numeric.bin").write_bytes(b"\0" * 3996)
    with pytest.raises(FeatureMapError, match=r"numeric.bin: 3996 bytes, expected 4000 for shape \(1000, 1\)"):
        load_prepared(path, "stream")


TINY = get_preset("dcnv2_lowrank").replace(embedding_dim=4, head=HeadConfig(hidden=(16,)))
TRAIN = TrainConfig(epochs=2, batch_size=256, lr=3e-3, progress=False, seed=0, precision="fp32", group_field="c0")
DATA = SyntheticConfig(train_rows=3000, valid_rows=800, test_rows=800, vocab_sizes=(8, 16, 32), num_numeric=1, seed=4)


@pytest.fixture
def synthetic(tmp_path):
    dataset = make_synthetic(DATA)
    return dataset, write_prepared(dataset, tmp_path / "synthetic")


def test_training_on_a_streamed_split_and_its_metrics_equal_the_in_memory_ones(synthetic, tmp_path):
    dataset, path = synthetic
    streamed = load_prepared(path, "stream", block_rows=128, buffer_rows=512)
    seed_everything(0)
    model = create_model(TINY, streamed.features)
    result = fit(model, streamed.train, streamed.valid, TRAIN, run_dir=tmp_path / "run")
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.train_examples == 2 * 3000
    # scoring a streamed split is scoring the same rows in memory: AUC, logloss and gAUC alike
    assert evaluate(model, streamed.test, 300, group_field="c0") == evaluate(model, dataset.test, 300, group_field="c0")
    assert result.best_valid == evaluate(model, dataset.valid, group_field="c0")


def test_a_streamed_run_resumes_on_the_same_curve(synthetic, tmp_path):
    _, path = synthetic
    data = load_prepared(path, "stream", block_rows=128, buffer_rows=512)
    straight = TrainConfig(**{**TRAIN.__dict__, "epochs": 3, "patience": 5})
    seed_everything(0)
    whole = fit(create_model(TINY, data.features), data.train, data.valid, straight, run_dir=tmp_path / "whole")
    seed_everything(0)
    first = TrainConfig(**{**straight.__dict__, "epochs": 1})
    fit(create_model(TINY, data.features), data.train, data.valid, first, run_dir=tmp_path / "split")
    seed_everything(0)
    resumed = fit(create_model(TINY, data.features), data.train, data.valid, straight, run_dir=tmp_path / "split", resume=True)
    for a, b in zip(whole.history, resumed.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["valid"] == b["valid"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_stream_their_own_shards(synthetic, tmp_path):
    _, path = synthetic
    out = str(tmp_path / "ddp")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        str(Path(stream_worker.__file__)), str(path), out,
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    logs = [json.loads(Path(f"{out}.{rank}.json").read_text()) for rank in (0, 1)]
    assert logs[0]["world_size"] == 2
    assert logs[0]["batch_rows"] == logs[1]["batch_rows"]  # the same steps on both ranks
    assert sum(logs[0]["batch_rows"]) == 1500  # each rank: its half of the 3000 rows
    history = [log["history"] for log in logs]
    assert [e["valid"] for e in history[0]] == [e["valid"] for e in history[1]]  # gathered validation
    assert [e["train_loss"] for e in history[0]] == [e["train_loss"] for e in history[1]]  # all-reduced
    assert history[0][-1]["train_loss"] < history[0][0]["train_loss"]
