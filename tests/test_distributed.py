"""Multi-process training: 2 processes on loopback equal 1 process; sharding; resume."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import ddp_worker
import pytest
import torch

from mldcn.data.synthetic import make_synthetic
from mldcn.train.distributed import DistContext, gather_strided
from mldcn.train.loop import fit, seed_everything


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# "same": the tables in DDP's dense all-reduce; rowwise_adagrad: sparse table gradients, which
# DDP does not reduce, averaged over the ranks by the optimisation step instead
@pytest.mark.parametrize("embedding_optimizer", ["same", "rowwise_adagrad"])
def test_two_processes_match_one_process_after_several_steps(tmp_path, embedding_optimizer):
    out = str(tmp_path / "ddp")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        str(Path(ddp_worker.__file__)), out, embedding_optimizer,
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    distributed_state = torch.load(out + ".pt", weights_only=True)
    distributed_log = json.loads(Path(out + ".json").read_text())
    assert distributed_log["world_size"] == 2

    model, result = ddp_worker.train(embedding_optimizer=embedding_optimizer)  # one process, same global batch and seed
    single_state = model.state_dict()
    assert set(single_state) == set(distributed_state)
    # The sparse all-reduce adds the ranks' table rows in another order than one process's
    # scatter-add; Adam moves a weight whose gradient is ~0 by about ±lr whatever its size,
    # so that float noise could reach lr × steps (3e-3 × 16) in a few weights; measured: 5e-4.
    atol = 1e-5 if embedding_optimizer == "same" else 2e-3
    for name, value in single_state.items():
        torch.testing.assert_close(distributed_state[name], value, rtol=1e-4, atol=atol, msg=name)
    for single, ddp in zip(result.history, distributed_log["history"]):
        # validation AUC is computed on predictions gathered from both ranks
        assert ddp["valid"]["click"]["auc"] == pytest.approx(single["valid"]["click"]["auc"], abs=1e-5)
        assert ddp["train_loss"] == pytest.approx(single["train_loss"], rel=1e-5)


@pytest.mark.parametrize("n, world", [(10, 2), (11, 3), (7, 4)])
def test_shards_are_disjoint_cover_every_row_and_take_the_same_number_of_steps(n, world):
    from mldcn.batch import Batch

    split = Batch(torch.arange(n)[:, None], torch.zeros(n, 0), labels=torch.zeros(n, 1))
    for shuffle in (False, True):
        seen, steps = [], []
        for rank in range(world):
            generator = torch.Generator().manual_seed(5)
            batches = list(split.batches(2, shuffle=shuffle, generator=generator, rank=rank, world_size=world))
            steps.append(len(batches))
            seen += [int(i) for b in batches for i in b.categorical[:, 0]]
        assert sorted(seen) == list(range(n))  # nothing dropped, nothing twice
        assert len(set(steps)) == 1


def test_gather_strided_interleaves_rank_rows():
    # rank r holds rows r, r + W, ...: with one process it is the identity
    local = torch.arange(5.0)
    assert torch.equal(gather_strided(local, 5, DistContext(0, 1)), local)


def test_resume_continues_the_same_curve(tmp_path):
    data = make_synthetic(ddp_worker.DATA)
    config = replace(ddp_worker.TRAIN, epochs=4, patience=10)

    seed_everything(0)
    straight = ddp_worker.create_model(ddp_worker.MODEL, data.features)
    full = fit(straight, data.train, data.valid, config, tmp_path / "straight")

    seed_everything(0)
    first = ddp_worker.create_model(ddp_worker.MODEL, data.features)
    fit(first, data.train, data.valid, replace(config, epochs=2), tmp_path / "resumed")
    seed_everything(123)  # a different process state: everything must come from last.pt
    second = ddp_worker.create_model(ddp_worker.MODEL, data.features)
    resumed = fit(second, data.train, data.valid, config, tmp_path / "resumed", resume=True)

    assert [h["valid"] for h in resumed.history] == [h["valid"] for h in full.history]
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4
    for name, value in straight.state_dict().items():
        assert torch.equal(second.state_dict()[name], value), name


def test_batch_size_must_split_across_processes(monkeypatch):
    import mldcn.train.loop as loop
    from mldcn.config import ConfigError

    monkeypatch.setattr(loop, "distributed_context", lambda: DistContext(0, 3))
    data = make_synthetic(replace(ddp_worker.DATA, train_rows=100, valid_rows=50, test_rows=50))
    model = ddp_worker.create_model(ddp_worker.MODEL, data.features)
    with pytest.raises(ConfigError, match="not divisible"):
        fit(model, data.train, data.valid, replace(ddp_worker.TRAIN, batch_size=512))


@pytest.mark.parametrize("sharding", ["table", "column"])
def test_torchrec_sharded_tables_train_across_two_processes(tmp_path, sharding):
    pytest.importorskip("torchrec", reason="sharded tables need `make setup-torchrec`")
    out = str(tmp_path / "sharded")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        str(Path(ddp_worker.__file__).with_name("sharded_worker.py")), out, sharding,
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=Path(ddp_worker.__file__).parent)
    assert completed.returncode == 0, completed.stderr[-3000:]
    ranks = [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in (0, 1)]
    tables = sorted(ranks[0]["local_shards"])
    assert len(tables) == 4
    for table in tables:
        shapes = [rank["local_shards"][table] for rank in ranks]
        if sharding == "table":  # each table lives whole on exactly one rank
            assert sorted(len(s) for s in shapes) == [0, 1]
        else:  # each table is cut into one slice of columns per rank
            assert [s[0][1] for s in shapes] == [8, 8]
    history = ranks[0]["history"]
    def metrics(h):
        return [(e["valid"], e["train_loss"], e["improved"]) for e in h]

    assert [rank["gather_difference"] for rank in ranks] == [0.0, 0.0]
    assert metrics(history) == metrics(ranks[1]["history"])  # gathered validation: the same on every rank
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["valid"]["click"]["auc"] > 0.52


@pytest.mark.parametrize(
    "processes, sharding, optimizer", [(1, "table", "rowwise_adagrad"), (2, "column", "adagrad")]
)  # fused row-wise Adagrad in one case, fused (element-wise) Adagrad in the other
def test_torchrec_sharded_training_from_the_cli_ends_with_test_metrics_and_an_artifact(tmp_path, processes, sharding, optimizer):
    pytest.importorskip("torchrec", reason="sharded tables need `make setup-torchrec`")
    from mldcn.data.synthetic import SyntheticConfig
    from mldcn.serve.artifact import load_artifact
    from mldcn.train.loop import evaluate

    rows = {"train_rows": 4000, "valid_rows": 1000, "test_rows": 1000}
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "mldcn", "train", "--model", "dcnv2_lowrank", "--epochs", "2", "--quiet",
        "--threads", "1", "--nproc", str(processes), "--out", str(out),
        "--set", f"train.embedding_sharding={sharding}", "--set", "train.precision=fp32",
        "--set", f"train.embedding_optimizer={optimizer}",
        *[item for key, value in rows.items() for item in ("--set", f"data.synthetic.{key}={value}")],
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "test AUC" in completed.stdout
    result = json.loads((out / "result.json").read_text())
    assert result["processes"] == processes and 0.5 < result["test"]["click"]["auc"] < 1.0
    assert result["cost"]["interaction_flops"] > 0

    artifact = load_artifact(out)  # plain tables: loads, scores and exports like any artifact
    data = make_synthetic(SyntheticConfig(**rows))
    # the artifact's weights are the best epoch's: they give the validation AUC the sharded model had then
    assert evaluate(artifact.model, data.valid)["click"]["auc"] == pytest.approx(result["best_valid"]["click"]["auc"], abs=1e-6)
    assert evaluate(artifact.model, data.test)["click"]["auc"] == pytest.approx(result["test"]["click"]["auc"], abs=1e-6)
