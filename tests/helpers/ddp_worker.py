"""Train a tiny model for the distributed tests; run directly or under torchrun.

    python -m torch.distributed.run --nproc_per_node 2 tests/helpers/ddp_worker.py OUT [EMBEDDING_OPTIMIZER]
"""

from __future__ import annotations

import dataclasses
import json
import sys

import torch

from mldcn.data.synthetic import SyntheticConfig, make_synthetic
from mldcn.models import HeadConfig, create_model, get_preset
from mldcn.train import distributed
from mldcn.train.loop import TrainConfig, fit, seed_everything

DATA = SyntheticConfig(train_rows=4096, valid_rows=1000, test_rows=1000, vocab_sizes=(8, 16, 32), num_numeric=1, seed=3)
# no dropout and no batch norm: those make a shard's step differ from the global batch's
MODEL = (
    get_preset("mldcn")
    .replace(embedding_dim=4, head=HeadConfig(hidden=(16,)))
    .with_interaction(rank=4, num_layers=2)
)
TRAIN = TrainConfig(epochs=2, batch_size=512, lr=3e-3, progress=False, seed=0, precision="fp32", threads=1)


def train(out: str | None = None, embedding_optimizer: str = "same"):
    torch.set_num_threads(1)
    ctx = distributed.init(torch.device("cpu"))
    data = make_synthetic(DATA)
    seed_everything(0)
    model = create_model(MODEL, data.features)
    config = dataclasses.replace(TRAIN, embedding_optimizer=embedding_optimizer, embedding_lr=0.05)
    result = fit(model, data.train, data.valid, config)
    if out is not None and ctx.is_main:
        torch.save(model.state_dict(), out + ".pt")
        with open(out + ".json", "w") as f:
            json.dump({"world_size": ctx.world_size, "history": result.history}, f)
    return model, result


if __name__ == "__main__":
    train(*sys.argv[1:])
    distributed.shutdown()
