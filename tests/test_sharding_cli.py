"""TorchRec-sharded tables end to end, on 2 processes on loopback (gloo, CPU).

- ``--resume`` of a sharded run through ``torch.distributed.checkpoint`` continues
  the same curve, and refuses another number of processes or another sharding;
- sharded training (fused Adagrad) follows the same loss curve as unsharded DDP
  training with PyTorch's Adagrad from the same initial weights;
- ``mldcn train --nproc 2`` (table- and column-wise) → test metrics → artifact →
  ``mldcn predict`` → ``mldcn serve`` answers with predict's probabilities.

Run as a script under torchrun, this file is the comparison's worker::

    python -m torch.distributed.run --nproc_per_node 2 tests/test_sharding_cli.py compare OUT.json
"""

from __future__ import annotations

import copy
import json
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

HELPERS = Path(__file__).parent / "helpers"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HELPERS), os.environ.get("PYTHONPATH", "")])}
TRAIN_FLAGS = [
    "--model", "dcnv2_lowrank", "--batch-size", "256", "--quiet", "--threads", "1", "--set", "train.precision=fp32",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mldcn(*args: str, nproc: int = 1, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m mldcn ARGS`` (``--nproc N`` re-launches itself under torchrun)."""
    command = [sys.executable, "-m", "mldcn", *args, *(["--nproc", str(nproc)] if nproc > 1 else [])]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=ENV)


def train(data: dict, out: Path, sharding: str, epochs: int, nproc: int = 2, *extra: str) -> subprocess.CompletedProcess:
    return mldcn(
        "train", *TRAIN_FLAGS, "--data", str(data["prepared"]), "--epochs", str(epochs), "--out", str(out),
        "--set", f"train.embedding_sharding={sharding}", *extra, nproc=nproc,
    )  # fmt: skip


def epochs_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    pytest.importorskip("torchrec", reason="sharded tables need `make setup-torchrec`")
    from toy_log import make_toy_data

    return make_toy_data(tmp_path_factory.mktemp("sharding") / "data")


@pytest.fixture(scope="module", params=["table", "column"])
def straight(request, toy, tmp_path_factory):
    """A 2-process sharded run of 2 epochs through the CLI (its run directory)."""
    out = tmp_path_factory.mktemp(f"straight-{request.param}") / "run"
    completed = train(toy, out, request.param, epochs=2)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "test AUC" in completed.stdout
    return {"sharding": request.param, "run": out, "stdout": completed.stdout}


# ---------------------------------------------------------------------------- resume


def test_sharded_checkpoint_is_complete_and_records_processes_and_sharding(straight):
    last = straight["run"] / "last.dcp"
    names = sorted(p.name for p in last.iterdir())
    # DCP: one file of shards per rank and the global metadata; rank 0: trainer state and the record
    assert names == [".metadata", "__0_0.distcp", "__1_0.distcp", "checkpoint.json", "trainer.pt"]
    assert json.loads((last / "checkpoint.json").read_text()) == {
        "epoch": 2, "processes": 2, "sharding": straight["sharding"], "format": "torch.distributed.checkpoint",
    }  # fmt: skip
    leftovers = [p.name for p in straight["run"].iterdir() if "partial" in p.name or "previous" in p.name]
    assert leftovers == []
    assert not (straight["run"] / "best.pt").exists()  # a sharded run's best weights are in last.dcp


def test_sharded_resume_continues_the_same_curve(straight, toy, tmp_path):
    out = tmp_path / "resumed"
    first = train(toy, out, straight["sharding"], epochs=1)
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = train(toy, out, straight["sharding"], 2, 2, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    whole, pieced = epochs_of(straight["run"]), epochs_of(out)
    assert [e["epoch"] for e in pieced] == [1, 2]
    for a, b in zip(whole, pieced):
        # restored bit for bit (weights, both optimisers, generators): the same numbers, to float rounding
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-6, abs=1e-9)
        for metric in ("auc", "logloss"):
            assert b["valid"]["label"][metric] == pytest.approx(a["valid"]["label"][metric], rel=1e-6, abs=1e-9)
        assert (a["improved"], a["lr"]) == (b["improved"], b["lr"])
    test_whole = json.loads((straight["run"] / "result.json").read_text())["test"]["label"]
    test_pieced = json.loads((out / "result.json").read_text())["test"]["label"]
    assert test_pieced["logloss"] == pytest.approx(test_whole["logloss"], rel=1e-6)


def test_sharded_resume_on_another_number_of_processes_is_refused(straight, toy, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(straight["run"], out)
    completed = train(toy, out, straight["sharding"], 3, 1, "--resume")  # 1 process, the checkpoint has 2
    assert completed.returncode != 0
    assert "written by 2 processes" in completed.stderr and "this run has 1 process" in completed.stderr
    assert "--nproc 2" in completed.stderr and "Traceback" not in completed.stderr
    assert len(epochs_of(out)) == 2  # nothing was trained or written


def test_sharded_resume_with_another_sharding_is_refused(straight, toy, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(straight["run"], out)
    other = {"table": "column", "column": "table"}[straight["sharding"]]
    completed = train(toy, out, other, 3, 1, "--resume")
    assert completed.returncode != 0 and "Traceback" not in completed.stderr
    assert f"sharded {straight['sharding']}-wise, but this run shards them {other}-wise" in completed.stderr

    from mldcn.cli import main  # unsharded: no process group, so in this process

    assert main(["train", *TRAIN_FLAGS, "--data", str(toy["prepared"]), "--epochs", "3", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"holds embedding tables sharded {straight['sharding']}-wise over 2 processes, but this run does not shard them" in err
    assert len(epochs_of(out)) == 2


def test_resuming_an_unsharded_checkpoint_with_sharded_tables_is_refused(toy, tmp_path, capsys):
    from mldcn.cli import main

    out = tmp_path / "plain"
    assert main(["train", *TRAIN_FLAGS, "--data", str(toy["prepared"]), "--epochs", "1", "--out", str(out)]) == 0
    assert (out / "last.pt").exists()
    completed = train(toy, out, "table", 2, 1, "--resume")
    assert completed.returncode != 0 and "Traceback" not in completed.stderr
    assert "last.pt is a checkpoint of unsharded embedding tables, but this run shards them table-wise" in completed.stderr


def test_fit_refuses_a_sharded_checkpoint_for_unsharded_tables(straight, tmp_path):
    # the library path, below the CLI's run-directory checks: fit() itself refuses
    from mldcn.config import ConfigError, load_yaml
    from mldcn.data.source import load_data
    from mldcn.models.registry import create_model
    from mldcn.train.loop import fit
    from mldcn.train.run import run_config_from_dict

    out = tmp_path / "copy"
    shutil.copytree(straight["run"], out)
    config = run_config_from_dict(load_yaml(out / "config.yaml"))
    data = load_data(config.data)
    model = create_model(config.model, data.features)
    with pytest.raises(ConfigError, match="holds embedding tables sharded .* over 2 processes, but this run does not shard"):
        fit(model, data.train, data.valid, replace(config.train, embedding_sharding="none"), out, resume=True)
    assert len(epochs_of(out)) == 2


def test_an_interrupted_save_leaves_the_last_complete_checkpoint(tmp_path):
    from mldcn.train import checkpoint  # no TorchRec needed: this reads the layout only

    run = tmp_path / "run"
    (run / ".last.dcp.partial").mkdir(parents=True)  # a save that died before its record was written
    (run / ".last.dcp.partial" / "__0_0.distcp").write_bytes(b"half")
    assert checkpoint.sharded_checkpoint(run) is None and not checkpoint.found(run)
    record = {"epoch": 3, "processes": 2, "sharding": "table", "format": "torch.distributed.checkpoint"}
    (run / ".last.dcp.previous").mkdir()  # a save that died between its two renames
    (run / ".last.dcp.previous" / "checkpoint.json").write_text(json.dumps(record))
    assert checkpoint.sharded_checkpoint(run) == run / ".last.dcp.previous"
    assert checkpoint.resume_problem(run, "table", 2) is None
    assert "written by 2 processes" in checkpoint.resume_problem(run, "table", 4)
    assert "this run has 4 processes" in checkpoint.resume_problem(run, "table", 4)


# ---------------------------------------------------------------------------- sharded = unsharded


def test_sharded_training_follows_unsharded_ddp_training(tmp_path):
    """2 processes: DDP with plain tables and PyTorch's Adagrad, against TorchRec tables
    sharded table- and column-wise with FBGEMM's fused exact Adagrad.

    The plain tables get the sparse gradients ``embedding_optimizer: adagrad`` asks for,
    which DDP leaves alone and the optimisation step averages over the ranks
    (:class:`~mldcn.train.optim.Optimisation`).

    Why these are the same update: both are element-wise Adagrad, ``G += g²;
    w -= lr · g / (√G + eps)``, with the same lr (0.05), eps (1e-10: mldcn passes
    torch's default to FBGEMM, whose own is 1e-8) and initial accumulator (0), and
    both start from the same weights (copied into the shards). The gradient is the
    same too: each rank's loss is scaled so that DDP's average over the ranks is the
    gradient of the global batch's mean loss, and TorchRec's all-to-all divides the
    gradient it sends back to a table's owner by the world size
    (``torchrec.distributed.comm_ops`` gradient division, on by default; checked
    below), so a sharded table gets that same average rather than the sum over the
    ranks. The dense weights see the same averaged gradient under Adam in both (DMP
    wraps them in DDP), clipped in both over the dense weights only. What remains
    is float rounding: the pooled lookups and the gradient exchange sum in another
    order (FBGEMM's kernels against ``F.embedding``), about 2e-8 relative here; we
    allow 1e-5 relative on the per-epoch train loss and validation logloss: 500
    times that, and far below the train loss's fall between the two epochs (0.6 → 0.4).
    """
    pytest.importorskip("torchrec", reason="sharded tables need `make setup-torchrec`")
    out = tmp_path / "compare.json"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()), __file__, "compare", str(out),
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=ENV)
    assert completed.returncode == 0, completed.stderr[-3000:]
    curves = json.loads(out.read_text())
    assert curves["world_size"] == 2 and curves["gradient_division"] is True
    assert curves["scatter_round_trip"] == {"table": 0.0, "column": 0.0}
    plain = curves["none"]
    assert plain[-1]["train_loss"] < plain[0]["train_loss"] - 1e-3  # it learns: the comparison is not of flat lines
    for sharding in ("table", "column"):
        for a, b in zip(plain, curves[sharding]):
            assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5), sharding
            assert b["valid_logloss"] == pytest.approx(a["valid_logloss"], rel=1e-5), sharding


def _compare_worker(out: str) -> None:
    """Train the same tiny model three ways on 2 processes; rank 0 writes the curves."""
    import mldcn.train.loop as loop
    from mldcn.data.synthetic import SyntheticConfig, make_synthetic
    from mldcn.models import HeadConfig, create_model, get_preset
    from mldcn.train import distributed
    from torchrec.distributed import comm_ops

    from mldcn.train.sharding import gather_embedding, load_plain_embedding

    torch.set_num_threads(1)
    ctx = distributed.init(torch.device("cpu"))
    rows = {"train_rows": 4096, "valid_rows": 1000, "test_rows": 10}
    data = make_synthetic(SyntheticConfig(**rows, vocab_sizes=(8, 16, 32, 64), num_numeric=1, seed=3))
    # no dropout, no batch norm: they would make the two ways differ by more than rounding
    preset = get_preset("mldcn").replace(embedding_dim=8, head=HeadConfig(hidden=(16,))).with_interaction(rank=4, num_layers=2)
    config = loop.TrainConfig(
        epochs=2, batch_size=256, lr=3e-3, embedding_optimizer="adagrad", embedding_lr=0.05,
        progress=False, seed=0, precision="fp32", threads=1,
    )  # fmt: skip
    set_up, curves, round_trip = loop.set_up, {}, {}
    for sharding in ("none", "table", "column"):
        loop.seed_everything(0)
        model = create_model(preset, data.features)
        initial = copy.deepcopy(model.embedding)  # the same initial tables for every way

        def same_start(model, config, device, ctx, initial=initial):
            optimisation = set_up(model, config, device, ctx)
            if config.embedding_sharding != "none":
                load_plain_embedding(model.embedding, initial)
            return optimisation

        loop.set_up = same_start
        result = loop.fit(model, data.train, data.valid, replace(config, embedding_sharding=sharding))
        curves[sharding] = [
            {"train_loss": epoch["train_loss"], "valid_logloss": epoch["valid"]["click"]["logloss"]} for epoch in result.history
        ]
        if sharding != "none":  # the copy into the shards and the gather back are inverses
            load_plain_embedding(model.embedding, initial)
            gathered = gather_embedding(model.embedding)
            round_trip[sharding] = max((a - b).abs().max().item() for a, b in zip(gathered.parameters(), initial.parameters()))
    loop.set_up = set_up
    if ctx.is_main:
        facts = {"world_size": ctx.world_size, "gradient_division": comm_ops.get_gradient_division()}
        Path(out).write_text(json.dumps({**facts, "scatter_round_trip": round_trip, **curves}))


# ---------------------------------------------------------------------------- the CLI path


class Server:
    """A ``python -m mldcn serve`` process on a free loopback port (``url`` once it answers)."""

    def __init__(self, run_dir: Path, log_path: Path) -> None:
        import httpx

        command = [sys.executable, "-m", "mldcn", "serve", str(run_dir), "--backend", "torch", "--port", "0", "--threads", "1"]
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self.log, text=True, env=ENV)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.process.stdout], daemon=True).start()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", lines.get(timeout=0.5))
            except queue.Empty:
                continue
            if match:
                self.url = match.group(1)
                while time.monotonic() < deadline:
                    try:
                        if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                            return
                    except httpx.TransportError:
                        time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the server did not start; its log:\n{open(log_path).read()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        self.log.close()


def test_sharded_cli_run_predicts_and_serves_its_test_metrics(straight, toy, tmp_path):
    import httpx

    from mldcn.cli import main
    from mldcn.metrics import logloss
    from mldcn.serve.predict import read_probabilities

    run = straight["run"]
    result = json.loads((run / "result.json").read_text())
    assert result["processes"] == 2 and result["epochs"] == 2 and 0.5 < result["test"]["label"]["auc"] < 1.0

    offline = tmp_path / "offline.csv"
    assert main(["predict", str(run), "--input", str(toy["test"]), "--out", str(offline)]) == 0
    probabilities = read_probabilities(offline)[:, 0]
    lines = toy["test"].read_text().splitlines()
    labels = np.array([int(line.split(",")[0]) for line in lines[1:]])
    # the artifact scores the raw test file as the sharded run scored the prepared test split
    assert logloss(labels, probabilities) == pytest.approx(result["test"]["label"]["logloss"], abs=1e-6)

    header = lines[0].split(",")
    records = [dict(zip(header[1:], line.split(",")[1:])) for line in lines[1:]]
    server = Server(run, tmp_path / "server.log")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            response = client.post("/predict", json={"records": records})
    finally:
        server.stop()
    assert response.status_code == 200, response.text
    served = np.array([row["label"] for row in response.json()["probabilities"]])
    np.testing.assert_allclose(served, probabilities, rtol=0, atol=1e-6)


@pytest.mark.skipif(
    torch.cuda.device_count() < 2,
    reason="row-wise sharding needs GPUs: TorchRec's planner has no row-wise sharding for compute device cpu; "
    "2 processes need 2 GPUs",
)
def test_row_wise_sharding_from_the_cli(toy, tmp_path):
    import typing

    from mldcn.train.loop import TrainConfig

    if "row" not in typing.get_args(typing.get_type_hints(TrainConfig)["embedding_sharding"]):
        pytest.skip("train.embedding_sharding does not offer 'row' yet")
    completed = train(toy, tmp_path / "run", "row", 1, 2, "--set", "train.device=cuda")
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "result.json").read_text())["processes"] == 2


if __name__ == "__main__":
    if sys.argv[1:2] == ["compare"]:
        _compare_worker(sys.argv[2])
