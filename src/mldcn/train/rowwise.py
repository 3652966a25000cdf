"""Row-wise Adagrad for embedding tables: one accumulator per row instead of per element.

The industry default for large embedding tables (FBGEMM's ``EXACT_ROWWISE_ADAGRAD``,
TorchRec's ``RowWiseAdagrad``): for each row i of a table with gradient g_i (the
sum over the row's lookups in the batch),

    s_i ← s_i + mean_j(g_ij²)              # one scalar per row, [rows, 1]
    w_i ← w_i − lr · g_i / (sqrt(s_i) + ε)

so the state is a column, not a copy of the table (1/D of Adagrad's memory), and
a row that was not looked up is not touched. Sparse gradients (``embedding.sparse``)
update only the rows they hold; a dense gradient gives the same result, its
zero rows adding nothing. Sharded tables use TorchRec's fused version of the same
rule inside the backward pass (:mod:`mldcn.train.sharding`).
"""

from __future__ import annotations

import torch


class RowWiseAdagrad(torch.optim.Optimizer):
    """Row-wise Adagrad (see the module docstring) for 2-D parameters ``[rows, D]``.

    Args:
        params: the tables.
        lr: learning rate.
        eps: added to the root of the accumulator.
        initial_accumulator_value: the accumulators' start.

    Example:
        >>> table = torch.nn.Parameter(torch.ones(3, 2))
        >>> optimizer = RowWiseAdagrad([table], lr=0.5)
        >>> table.grad = torch.tensor([[2.0, 2.0], [0.0, 0.0], [1.0, -1.0]])
        >>> optimizer.step()
        >>> table.detach()  # rows move by lr · g / sqrt(mean(g²)): 0.5 · ±1
        tensor([[0.5000, 0.5000],
                [1.0000, 1.0000],
                [0.5000, 1.5000]])
    """

    def __init__(self, params, lr: float = 0.01, eps: float = 1e-10, initial_accumulator_value: float = 0.0) -> None:
        if lr <= 0 or eps < 0 or initial_accumulator_value < 0:
            raise ValueError(f"invalid lr {lr}, eps {eps} or initial_accumulator_value {initial_accumulator_value}")
        super().__init__(params, {"lr": lr, "eps": eps, "initial_accumulator_value": initial_accumulator_value})

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.dim() != 2:
                    raise ValueError(f"row-wise Adagrad updates tables [rows, D], got a parameter of shape {tuple(param.shape)}")
                state = self.state[param]
                if not state:
                    state["sum"] = torch.full((param.shape[0], 1), group["initial_accumulator_value"], dtype=param.dtype, device=param.device)
                if param.grad.is_sparse:
                    grad = param.grad.coalesce()  # duplicate rows summed
                    rows, values = grad.indices()[0], grad.values()  # [n], [n, D]
                else:
                    rows = torch.arange(param.shape[0], device=param.device)
                    values = param.grad
                total = state["sum"].index_add_(0, rows, values.pow(2).mean(dim=1, keepdim=True))
                scale = total[rows].sqrt().add_(group["eps"])  # [n, 1]
                param.index_add_(0, rows, values / scale, alpha=-group["lr"])
        return loss
