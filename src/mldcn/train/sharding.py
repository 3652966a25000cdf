"""Sharded embedding tables with TorchRec (optional: ``make setup-torchrec``).

When a click log's tables outgrow one device, TorchRec's
``DistributedModelParallel`` places each table (table-wise) or slices of each
table's columns (column-wise) on different ranks and exchanges the looked-up
rows with all-to-all; the dense part (interaction and head) stays data-parallel.

:func:`shard_model` swaps a model's :class:`~mldcn.layers.FeatureEmbedding` for
:class:`ShardedFeatureEmbedding` (one TorchRec table per categorical and
multi-valued field; numeric fields stay dense) and wraps the model. The tables
are updated by a fused optimiser inside the backward pass (TorchRec's
``apply_optimizer_in_backward``); the dense weights by the training loop's
optimiser. Works on CPU with gloo using ``fbgemm-gpu-cpu``.
"""

from __future__ import annotations

import warnings
from functools import partial

import torch
from torch import nn

from mldcn.config import ConfigError
from mldcn.features import FeatureSpec
from mldcn.layers.embedding import FeatureEmbedding
from mldcn.models.ranking import RankingModel

try:  # optional dependency
    from torchrec import (
        EmbeddingBagCollection,
        EmbeddingBagConfig,
        KeyedJaggedTensor,
        PoolingType,
    )
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import (
        EmbeddingShardingPlanner,
        ParameterConstraints,
        Topology,
    )
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.rowwise_adagrad import RowWiseAdagrad as TorchRecRowWiseAdagrad
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    HAVE_TORCHREC = True
except ImportError:  # pragma: no cover - depends on the environment
    HAVE_TORCHREC = False

SHARDING_TYPES = {"table": "table_wise", "column": "column_wise", "row": "row_wise"}


def require_torchrec() -> None:
    if not HAVE_TORCHREC:
        raise ConfigError(
            "sharded embeddings need TorchRec: `make setup-torchrec` (CPU: fbgemm-gpu-cpu and "
            "`pip install --no-deps torchrec`), see docs/distributed.md"
        )


class ShardedFeatureEmbedding(nn.Module):
    """:class:`~mldcn.layers.FeatureEmbedding`'s contract on TorchRec tables.

    Same inputs and output (``[B, F, D]``, fields in the spec's order), same
    initialisation (N(0, init_std²)); each categorical field sum-pools its one id
    and each multi-valued field mean-pools its non-padding ids (an empty row
    gives zeros), so the lookups equal :class:`FeatureEmbedding`'s.
    """

    def __init__(self, features: FeatureSpec, dim: int, init_std: float = 1e-4) -> None:
        super().__init__()
        require_torchrec()
        self.features, self.dim, self.init_std = features, dim, init_std
        self.num_fields = features.num_fields
        init = partial(nn.init.normal_, std=init_std)

        def table(field, pooling: PoolingType) -> EmbeddingBagConfig:
            return EmbeddingBagConfig(
                name=f"table_{field.name}",
                embedding_dim=dim,
                num_embeddings=field.vocab_size,
                feature_names=[field.name],
                pooling=pooling,
                init_fn=init,
            )

        tables = [table(f, PoolingType.SUM) for f in features.categorical]
        tables += [table(f, PoolingType.MEAN) for f in features.sequence]
        self.tables_collection = EmbeddingBagCollection(tables=tables, device=torch.device("meta"))
        self.numeric_weight = (
            nn.Parameter(torch.empty(len(features.numeric), dim).normal_(std=init_std)) if features.numeric else None
        )
        self.keys = [f.name for f in (*features.categorical, *features.sequence)]

    @property
    def output_dim(self) -> int:
        return self.num_fields * self.dim

    def tables(self) -> list[nn.Parameter]:
        return []  # updated by the fused optimiser inside backward, not by the loop's optimiser

    def forward(self, categorical: torch.Tensor, numeric: torch.Tensor, sequence: torch.Tensor | None = None) -> torch.Tensor:
        batch = categorical.shape[0]
        values = [categorical.t().reshape(-1).long()]  # field-major: all examples of field 1, then 2, ...
        lengths = [torch.ones(categorical.numel(), dtype=torch.int32, device=categorical.device)]
        if self.features.sequence:
            ids = sequence.transpose(0, 1).reshape(-1, sequence.shape[-1]).long()  # [Fs * B, L]
            present = ids != 0
            values.append(ids[present])
            lengths.append(present.sum(dim=1).to(torch.int32))
        kjt = KeyedJaggedTensor.from_lengths_sync(keys=self.keys, values=torch.cat(values), lengths=torch.cat(lengths))
        pooled = self.tables_collection(kjt).to_dict()
        parts = [pooled[f.name] for f in self.features.categorical]  # each [B, D]
        numeric_part = None
        if self.numeric_weight is not None:
            numeric_part = numeric.unsqueeze(-1) * self.numeric_weight  # [B, Fn, D]
        sequence_parts = [pooled[f.name] for f in self.features.sequence]
        stacked = [torch.stack(parts, dim=1)] if parts else []
        if numeric_part is not None:
            stacked.append(numeric_part)
        if sequence_parts:
            stacked.append(torch.stack(sequence_parts, dim=1))
        out = torch.cat(stacked, dim=1) if len(stacked) > 1 else stacked[0]
        return out.reshape(batch, self.num_fields, self.dim)


def shard_model(
    model: RankingModel,
    sharding: str,
    world_size: int,
    embedding_optimizer: str = "adagrad",
    lr: float = 0.01,
    device: torch.device | None = None,
) -> nn.Module:
    """Replace ``model.embedding`` by TorchRec tables and wrap the model in
    ``DistributedModelParallel`` with every table sharded ``table``-, ``column``- or
    (on GPUs) ``row``-wise.

    Call on every rank after ``torch.distributed`` is initialised. Returns the
    wrapped module; ``model`` itself is changed in place.
    """
    require_torchrec()
    if sharding not in SHARDING_TYPES:
        raise ConfigError(f"embedding sharding must be one of {sorted(SHARDING_TYPES)}, got {sharding!r}")
    device = device or torch.device("cpu")
    if sharding == "row" and device.type != "cuda":
        raise ConfigError(
            "row-wise sharding needs GPUs (TorchRec's planner offers it for CUDA devices only): "
            "use train.device=cuda, or table / column sharding on CPU"
        )
    old = model.embedding
    model.embedding = ShardedFeatureEmbedding(old.features, old.dim, old.init_std)
    optimizer_cls = {
        "adagrad": torch.optim.Adagrad,
        "rowwise_adagrad": TorchRecRowWiseAdagrad,  # FBGEMM's fused EXACT_ROWWISE_ADAGRAD
        "sgd": torch.optim.SGD,
        "adam": torch.optim.Adam,
    }
    if embedding_optimizer not in optimizer_cls:
        raise ConfigError(f"sharded tables support the fused optimisers {sorted(optimizer_cls)}, got {embedding_optimizer!r}")
    options = {"lr": lr}
    if embedding_optimizer in ("adagrad", "rowwise_adagrad"):
        options["eps"] = 1e-10  # the unsharded optimisers' eps (FBGEMM's default is 1e-8)
    apply_optimizer_in_backward(optimizer_cls[embedding_optimizer], model.embedding.tables_collection.parameters(), options)
    # column-wise: cut every table into one slice of columns per rank (the planner
    # would otherwise keep small tables whole)
    min_partition = max(1, old.dim // world_size) if sharding == "column" else None
    constraints = {
        f"table_{key}": ParameterConstraints(sharding_types=[SHARDING_TYPES[sharding]], min_partition=min_partition)
        for key in model.embedding.keys
    }
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=world_size, compute_device=device.type), constraints=constraints
    )
    sharders = [EmbeddingBagCollectionSharder()]
    plan = planner.collective_plan(model, sharders, torch.distributed.GroupMember.WORLD)
    return DistributedModelParallel(model, device=device, plan=plan, sharders=sharders)


def gather_embedding(sharded: ShardedFeatureEmbedding) -> FeatureEmbedding:
    """The sharded tables gathered into a plain :class:`FeatureEmbedding`, on every rank.

    Call on every rank (each table's shards are gathered to rank 0, then
    broadcast). The result computes the same lookups as ``sharded`` and is what
    the test evaluation, FLOPs accounting and the served artifact use.
    """
    features = sharded.features
    plain = FeatureEmbedding(features, sharded.dim, sharded.init_std)
    state = sharded.tables_collection.state_dict()
    world = torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0

    nccl = torch.distributed.is_initialized() and torch.distributed.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")

    def full_table(name: str, rows: int) -> torch.Tensor:
        tensor = state[f"embedding_bags.table_{name}.weight"]
        if not isinstance(tensor, ShardedTensor):
            return tensor.detach().float().cpu()
        out = torch.empty(rows, sharded.dim, dtype=tensor.dtype, device=device) if rank == 0 or world else None
        tensor.gather(dst=0, out=out if rank == 0 else None)  # a collective: every rank calls it
        if world:
            torch.distributed.broadcast(out, src=0)
        return out.detach().float().cpu()

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchRec's ShardedTensor is deprecated in favour of DTensor
        for table, fields, offsets in (
            (plain.categorical_table, features.categorical, plain.categorical_offsets),
            (plain.sequence_table, features.sequence, plain.sequence_offsets),
        ):
            for field, offset in zip(fields, offsets.tolist()):
                table[offset : offset + field.vocab_size] = full_table(field.name, field.vocab_size)
        if plain.numeric_weight is not None:
            plain.numeric_weight.copy_(sharded.numeric_weight.detach().float().cpu())
    return plain


def load_plain_embedding(sharded: ShardedFeatureEmbedding, plain: FeatureEmbedding) -> None:
    """Copy a plain :class:`FeatureEmbedding`'s weights into ``sharded`` (the inverse of
    :func:`gather_embedding`): every rank writes the rows and columns of its own shards.

    ``plain`` must hold the same values on every rank (e.g. built from the same seed).
    """
    state = sharded.tables_collection.state_dict()
    features = plain.features
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for table, fields, offsets in (
            (plain.categorical_table, features.categorical, plain.categorical_offsets),
            (plain.sequence_table, features.sequence, plain.sequence_offsets),
        ):
            for field, offset in zip(fields, offsets.tolist()):
                full = table[offset : offset + field.vocab_size]  # [V, D]
                tensor = state[f"embedding_bags.table_{field.name}.weight"]
                if not isinstance(tensor, ShardedTensor):
                    tensor.copy_(full)
                    continue
                for shard in tensor.local_shards():
                    (row, col), (rows, cols) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                    shard.tensor.copy_(full[row : row + rows, col : col + cols])
        if plain.numeric_weight is not None:
            sharded.numeric_weight.copy_(plain.numeric_weight)
    sharded.tables_collection.load_state_dict(state)


def fused_optimizer(wrapped: nn.Module):
    """TorchRec's optimiser of the sharded tables: a ``KeyedOptimizer`` whose state dict holds
    the accumulators as sharded tensors, keyed by parameter name.

    Its learning rate is not in that state dict (its param groups name each rank's own
    tables, which ``torch.distributed.checkpoint`` cannot keep apart): it starts at the
    config's ``embedding_lr``, is decayed on a plateau with the dense one
    (:class:`~mldcn.train.optim.Optimisation`), and rank 0's ``trainer.pt`` keeps it.
    """
    return getattr(wrapped, "_orig_mod", wrapped).fused_optimizer  # _orig_mod: under torch.compile


def dense_parameters(wrapped: nn.Module) -> list[nn.Parameter]:
    """The parameters the loop's optimiser owns (everything but the sharded tables)."""
    return [p for name, p in wrapped.named_parameters() if "tables_collection" not in name]
