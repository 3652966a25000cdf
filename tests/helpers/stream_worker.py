"""Train a tiny model on a streamed prepared directory; run under torchrun for the DDP stream test.

    python -m torch.distributed.run --nproc_per_node 2 tests/helpers/stream_worker.py PREPARED OUT
"""

from __future__ import annotations

import json
import sys

import torch

from mldcn.data.prepared import load_prepared
from mldcn.models import HeadConfig, create_model, get_preset
from mldcn.train import distributed
from mldcn.train.loop import TrainConfig, fit, seed_everything

MODEL = get_preset("dcnv2_lowrank").replace(embedding_dim=4, head=HeadConfig(hidden=(16,)))
TRAIN = TrainConfig(epochs=2, batch_size=512, lr=3e-3, progress=False, seed=0, precision="fp32", threads=1)


def main(prepared: str, out: str) -> None:
    torch.set_num_threads(1)
    ctx = distributed.init(torch.device("cpu"))
    data = load_prepared(prepared, "stream", block_rows=256, buffer_rows=1024)
    seen = []  # the rows this rank trains on in epoch 1, by their first categorical id tuple's position
    generator = torch.Generator().manual_seed(TRAIN.seed)
    for batch in data.train.batches(TRAIN.batch_size // ctx.world_size, True, generator, rank=ctx.rank, world_size=ctx.world_size):
        seen.append(len(batch))
    seed_everything(0)
    model = create_model(MODEL, data.features)
    result = fit(model, data.train, data.valid, TRAIN)
    with open(f"{out}.{ctx.rank}.json", "w") as f:
        json.dump({"world_size": ctx.world_size, "batch_rows": seen, "history": result.history}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    distributed.shutdown()
