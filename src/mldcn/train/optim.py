"""How the weights are optimised: the dense weights and the embedding tables — dense, sparse or sharded.

:func:`set_up` returns an :class:`Optimisation`: the module the loop calls (the
model itself, wrapped in ``DistributedDataParallel`` under ``torchrun``, or in
TorchRec's ``DistributedModelParallel`` with sharded tables), its optimisers,
the parameters whose gradient norm is clipped and the tables the embedding
regulariser reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import distributed as dist
from torch import nn

from mldcn.config import ConfigError
from mldcn.models.ranking import RankingModel
from mldcn.train.distributed import DistContext
from mldcn.train.rowwise import RowWiseAdagrad

#: the separate embedding optimisers (``embedding_optimizer``) by name
EMBEDDING_OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "adagrad": torch.optim.Adagrad,
    "rowwise_adagrad": RowWiseAdagrad,
    "sparse_adam": torch.optim.SparseAdam,
}
#: embedding optimisers that take sparse gradients (only the rows looked up in a batch)
SPARSE = ("adagrad", "rowwise_adagrad", "sparse_adam")


@dataclass
class Optimisation:
    """The module to call, its optimisers, what is clipped and what is regularised."""

    net: nn.Module
    optimizers: list[torch.optim.Optimizer]
    clip_params: list[nn.Parameter]
    tables: list[nn.Parameter] = field(default_factory=list)
    #: tables with sparse gradients under DDP, which reduces dense gradients only: averaged here
    reduce_sparse: list[nn.Parameter] = field(default_factory=list)
    world_size: int = 1
    #: TorchRec's fused optimiser of sharded tables: it updates in the backward pass; its
    #: ``step`` only passes on its learning rate, which the plateau schedule decays too
    fused: list = field(default_factory=list)

    def zero_grad(self) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)

    def step(self, clip_norm: float | None) -> None:
        for table in self.reduce_sparse:  # the mean over ranks, as DDP's all-reduce gives the dense weights
            gradient = table.grad.coalesce()
            dist.all_reduce(gradient)
            table.grad = (gradient / self.world_size).coalesce()  # the ranks' rows, each once
        if clip_norm is not None:
            nn.utils.clip_grad_norm_(self.clip_params, clip_norm)
        for optimizer in self.optimizers + self.fused:
            optimizer.step()

    def decay(self, factor: float, floor: float) -> None:
        """Multiply every learning rate by ``factor``, not below ``floor`` (the plateau schedule)."""
        for optimizer in self.optimizers + self.fused:
            for group in optimizer.param_groups:
                group["lr"] = max(group["lr"] * factor, floor)

    @property
    def lr(self) -> float:
        return self.optimizers[0].param_groups[0]["lr"]

    def state_dicts(self) -> list[dict]:
        return [optimizer.state_dict() for optimizer in self.optimizers]

    def load_state_dicts(self, states: list[dict]) -> None:
        if len(states) != len(self.optimizers):
            raise ValueError(f"{len(states)} optimiser states for {len(self.optimizers)} optimisers")
        for optimizer, state in zip(self.optimizers, states):
            optimizer.load_state_dict(state)


#: devices with torch's fused Adam kernels
FUSED_DEVICES = ("cpu", "cuda")


def dense_optimizer(params: list[nn.Parameter], config) -> torch.optim.Optimizer:
    """Adam or AdamW over ``params``, with torch's fused kernel where their device has one.

    The fused step updates every weight in one kernel instead of a dozen small
    operators per tensor: the optimiser's share of a bf16 training step at 2M
    interaction FLOPs fell from 1.3 to 0.6 ms (of ~57 ms) for ML-DCN on the
    development CPU (docs/performance.md). The update is Adam's, equal to the
    per-tensor loop's to float rounding.
    """
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    fusable = all(p.device.type in FUSED_DEVICES and p.is_floating_point() for p in params)
    return cls(params, lr=config.lr, weight_decay=config.weight_decay, fused=fusable or None)


def build_optimizers(model: RankingModel, config) -> list[torch.optim.Optimizer]:
    """The dense optimiser and, if asked for, a separate one for the embedding tables."""
    tables = model.embedding.tables()
    table_ids = {id(t) for t in tables}
    dense = [p for p in model.parameters() if id(p) not in table_ids and p.requires_grad]
    if config.embedding_optimizer == "same":
        model.embedding.sparse = False
        return [dense_optimizer(dense + tables, config)]
    optimizers = [dense_optimizer(dense, config)] if dense else []
    lr = config.embedding_lr or config.lr
    model.embedding.sparse = config.embedding_optimizer in SPARSE
    if tables:
        optimizers.append(EMBEDDING_OPTIMIZERS[config.embedding_optimizer](tables, lr=lr))
    return optimizers


def _sharded(model: RankingModel, config, device: torch.device, ctx: DistContext) -> Optimisation:
    from mldcn.train.sharding import dense_parameters, fused_optimizer, shard_model  # noqa: PLC0415  (optional extra)

    fused = {"same": "adagrad", "adagrad": "adagrad", "rowwise_adagrad": "rowwise_adagrad"}.get(config.embedding_optimizer, "adam")
    if fused == "adam" and device.type == "cpu":
        raise ConfigError("fused Adam for sharded tables runs on GPU only (fbgemm); use embedding_optimizer adagrad on CPU")
    net = shard_model(model, config.embedding_sharding, ctx.world_size, fused, config.embedding_lr or 0.01, device)
    dense = dense_parameters(net)
    optimizer = dense_optimizer(dense, config)
    return Optimisation(net, [optimizer], dense, fused=[fused_optimizer(net)])


def set_up(model: RankingModel, config, device: torch.device, ctx: DistContext) -> Optimisation:
    """Move ``model`` to ``device`` and wrap it for training as ``config`` asks."""
    model.to(device)
    if config.embedding_sharding != "none":
        optimisation = _sharded(model, config, device, ctx)
    else:
        optimizers = build_optimizers(model, config)
        sparse_tables = model.embedding.tables() if model.embedding.sparse else []
        clip = [p for p in model.parameters() if not any(p is t for t in sparse_tables)]
        net: nn.Module = model
        reduce_sparse = []
        if ctx.distributed:
            if sparse_tables:
                if dist.get_backend() != "gloo":
                    raise ConfigError(
                        f"the sparse embedding_optimizer {config.embedding_optimizer!r} on several processes needs the "
                        "gloo backend (CPU): shard the tables (embedding_sharding) or use a dense embedding optimiser"
                    )
                names = [name for name, p in model.named_parameters() if any(p is t for t in sparse_tables)]
                nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)
                reduce_sparse = sparse_tables
            net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        optimisation = Optimisation(net, optimizers, clip, model.embedding.tables(), reduce_sparse, ctx.world_size)
    if config.compile:
        optimisation.net = torch.compile(optimisation.net)
    return optimisation
