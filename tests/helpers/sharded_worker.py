"""Train with TorchRec-sharded tables for the tests; run under torchrun.

    python -m torch.distributed.run --nproc_per_node 2 tests/helpers/sharded_worker.py OUT table
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import torch
from ddp_worker import DATA, MODEL, TRAIN

from mldcn.data.synthetic import make_synthetic
from mldcn.models import create_model
from mldcn.train import distributed
from mldcn.train.loop import fit, seed_everything
from mldcn.train.sharding import gather_embedding


def main(out: str, sharding: str) -> None:
    torch.set_num_threads(1)
    ctx = distributed.init(torch.device("cpu"))
    data = make_synthetic(replace(DATA, vocab_sizes=(8, 16, 32, 64), first_order=1.5))
    seed_everything(0)
    model = create_model(MODEL.replace(embedding_dim=16), data.features)
    config = replace(TRAIN, epochs=3, embedding_sharding=sharding, embedding_optimizer="adagrad", embedding_lr=0.1)
    result = fit(model, data.train, data.valid, config)
    collection = model.embedding.tables_collection
    local_rows = {
        name: [list(shard.tensor.shape) for shard in tensor.local_shards()]
        for name, tensor in collection.state_dict().items()
    }
    # the tables gathered into a plain embedding compute the same lookups as the sharded ones
    with torch.no_grad():
        sharded = model.embedding(*data.valid.inputs())
        gathered = gather_embedding(model.embedding)(*data.valid.inputs())
    difference = (sharded - gathered).abs().max().item()
    with open(f"{out}.rank{ctx.rank}.json", "w") as f:
        json.dump({"world_size": ctx.world_size, "history": result.history, "local_shards": local_rows, "gather_difference": difference}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    distributed.shutdown()
