"""Multi-task structures: experts and gates between the embedding and one tower per task.

Any interaction module (``[B, F, D] → [B, h]``, with ``out_dim`` and ``flops()``)
can be an expert or the shared trunk, so "MMoE with ML-DCN experts" is a config.

* **Shared bottom** (Caruana 1997): one trunk, a tower per task. The trunk is the
  interaction module itself; :class:`TaskTowers` gives each task its own tower.
* **MMoE** (Ma et al., KDD 2018), :class:`MultiGateMixture`: K experts, and per
  task t a softmax gate over them computed from the flattened embedding x0:

      g_t = softmax(W_t x0 + c_t)          # [B, K]
      h_t = Σ_k g_tk · expert_k(E)          # [B, h]

* **PLE / CGC** (Tang et al., RecSys 2020), :class:`CustomizedGateControl`: one
  extraction level with S shared experts and E experts of each task's own; task
  t's gate mixes its own and the shared experts:

      h_t = Σ_{k ∈ own_t ∪ shared} softmax(W_t x0 + c_t)_k · expert_k(E)

  (Upper PLE levels mix vectors, not field embeddings, so they would need
  experts of another kind than the interaction families; one level is built.)

Gates read x0, as in both papers (their gates read the shared input). Outputs
are per task, ``[B, T, h]``; :class:`TaskTowers` turns them into logits ``[B, T]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from mldcn.layers.activation import init_linear
from mldcn.layers.flops import ELEMENTWISE, TRANSCENDENTAL, Flops, linear_flops, sum_flops

# softmax per element: exp, plus the max, subtraction, sum and division around it
SOFTMAX = TRANSCENDENTAL + 4 * ELEMENTWISE


def _gating_flops(gates: nn.Linear, num_tasks: int, per_gate: int, width: int) -> Flops:
    """The gates' product, their softmax over ``per_gate`` experts, and ``h_t = G_t · H``
    (one [T, K] × [K, h] product per example)."""
    softmax = Flops(elementwise=SOFTMAX * num_tasks * per_gate)
    return linear_flops(gates.in_features, gates.out_features) + softmax + Flops(matmul=2 * num_tasks * per_gate * width)


class MultiGateMixture(nn.Module):
    """MMoE: K experts shared by all tasks, one softmax gate per task.

    Args:
        experts: K interaction modules with the same ``out_dim``.
        input_dim: d, the width of the flattened embedding the gates read.
        num_tasks: T.

    Shape:
        ``[B, F, D]`` → ``[B, T, h]``

    Example:
        >>> from mldcn.layers.cross import LowRankCrossNet
        >>> moe = MultiGateMixture([LowRankCrossNet(8, 1, 2) for _ in range(3)], input_dim=8, num_tasks=2)
        >>> moe(torch.randn(5, 2, 4)).shape
        torch.Size([5, 2, 8])
    """

    def __init__(self, experts: Sequence[nn.Module], input_dim: int, num_tasks: int) -> None:
        super().__init__()
        widths = {e.out_dim for e in experts}
        if len(widths) != 1:
            raise ValueError(f"experts must share one output width, got {sorted(widths)}")
        self.experts = nn.ModuleList(experts)
        self.num_tasks, self.num_experts = num_tasks, len(experts)
        self.out_dim = widths.pop()
        self.gates = nn.Linear(input_dim, num_tasks * self.num_experts)  # all T gates in one product
        init_linear(self.gates)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        outputs = torch.stack([expert(emb) for expert in self.experts], dim=1)  # [B, K, h]
        logits = self.gates(emb.flatten(1)).view(-1, self.num_tasks, self.num_experts)  # [B, T, K]
        weights = torch.softmax(logits.float(), dim=-1).to(outputs.dtype)  # [B, T, K]
        return torch.bmm(weights, outputs)  # [B, T, h]

    def flops(self) -> Flops:
        experts = sum_flops(e.flops() for e in self.experts)
        return experts + _gating_flops(self.gates, self.num_tasks, self.num_experts, self.out_dim)


class CustomizedGateControl(nn.Module):
    """PLE's extraction level (CGC): shared experts plus experts of each task's own.

    Args:
        make_expert: builds one interaction module (called ``S + T * E`` times).
        input_dim: d, the width of the flattened embedding the gates read.
        num_tasks: T.
        shared_experts: S, experts every task's gate sees.
        task_experts: E, experts of each task that only its gate sees.

    Shape:
        ``[B, F, D]`` → ``[B, T, h]``
    """

    def __init__(
        self, make_expert: Callable[[], nn.Module], input_dim: int, num_tasks: int, shared_experts: int, task_experts: int
    ) -> None:
        super().__init__()
        if shared_experts < 0 or task_experts < 0 or shared_experts + task_experts < 1:
            raise ValueError("CGC needs shared_experts >= 0, task_experts >= 0 and at least one expert per gate")
        self.experts = nn.ModuleList(make_expert() for _ in range(shared_experts + num_tasks * task_experts))
        self.num_tasks, self.shared, self.own = num_tasks, shared_experts, task_experts
        self.out_dim = self.experts[0].out_dim
        self.per_gate = shared_experts + task_experts  # experts each task's gate mixes
        self.gates = nn.Linear(input_dim, num_tasks * self.per_gate)
        init_linear(self.gates)
        # task t mixes its own experts (after the shared ones in self.experts) and the shared ones
        index = [
            [shared_experts + t * task_experts + j for j in range(task_experts)] + list(range(shared_experts))
            for t in range(num_tasks)
        ]
        self.register_buffer("selection", torch.tensor(index, dtype=torch.long), persistent=False)  # [T, E + S]

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        outputs = torch.stack([expert(emb) for expert in self.experts], dim=1)  # [B, S + T·E, h]
        chosen = outputs[:, self.selection]  # [B, T, E + S, h]
        logits = self.gates(emb.flatten(1)).view(-1, self.num_tasks, 1, self.per_gate)  # [B, T, 1, E + S]
        weights = torch.softmax(logits.float(), dim=-1).to(outputs.dtype)
        return torch.matmul(weights, chosen).squeeze(2)  # [B, T, h]

    def flops(self) -> Flops:
        experts = sum_flops(e.flops() for e in self.experts)
        return experts + _gating_flops(self.gates, self.num_tasks, self.per_gate, self.out_dim)


class TaskTowers(nn.Module):
    """One tower per task, each a single-output head (:mod:`mldcn.layers.head`).

    Tower t reads task t's representation (``h [B, T, h]``, from a mixture of
    experts) or the one shared representation (``h [B, h]``, a shared bottom),
    and, for a parallel head, x0.

    Shape:
        h ``[B, T, h]`` or ``[B, h]``, x0 ``[B, d]`` → logits ``[B, T]``
    """

    def __init__(self, towers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.towers = nn.ModuleList(towers)

    def forward(self, h: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        per_task = h.dim() == 3
        return torch.cat([tower(h[:, t] if per_task else h, x0) for t, tower in enumerate(self.towers)], dim=1)

    def flops(self) -> Flops:
        return sum_flops(tower.flops() for tower in self.towers)
