"""Factorization machine terms (Rendle, ICDM 2010) as used by DeepFM (Guo et al., IJCAI 2017,
arXiv 1703.04247) and xDeepFM (Lian et al., KDD 2018, arXiv 1803.05170).

Notation: B batch, F fields, D embedding size, ``e_f`` the embedding of field f
(row f of the input ``[B, F, D]``), ``x0 = flatten(E)`` of width F·D.

The papers' FM, on one-hot features x with a weight w_i and a latent vector V_i per
feature value:

    y_FM = <w, x> + Σ_{i<j} <V_i, V_j> x_i x_j

With one active value per field the second-order part is ``Σ_{f<g} <e_f, e_g>``,
computed in O(F·D) as ``0.5 Σ_d ((Σ_f e_fd)² − Σ_f e_fd²)``.

**Deviation (first-order term).** The papers' ``<w, x>`` has a scalar weight per
feature value (FuxiCTR: a 1-dimensional embedding table). An interaction module in
mldcn sees only the D-dimensional embeddings ``[B, F, D]``, so the first-order term
here is a learned linear map of them, ``w^T x0 = Σ_f w_f^T e_f`` (:class:`FirstOrderTerm`):
each value's scalar weight is read from its embedding through a per-field vector
w_f instead of being a free parameter. Any table of per-value scalars is reachable
(w_f ≠ 0, e free), but the scalar is tied to the embedding the FM and the DNN use.
"""

from __future__ import annotations

import torch
from torch import nn

from mldcn.layers.activation import init_linear
from mldcn.layers.flops import ELEMENTWISE, Flops


def _check(num_fields: int, dim: int) -> None:
    if num_fields < 1 or dim < 1:
        raise ValueError(f"num_fields and dim must be >= 1, got {num_fields}, {dim}")


def fm_second_order(x: torch.Tensor) -> torch.Tensor:
    """``Σ_{f<g} <e_f, e_g> = 0.5 Σ_d ((Σ_f e_fd)² − Σ_f e_fd²)``: ``[B, F, D]`` → ``[B, 1]``."""
    square_of_sum = x.sum(dim=1).square()  # [B, D]
    sum_of_squares = x.square().sum(dim=1)  # [B, D]
    return 0.5 * (square_of_sum - sum_of_squares).sum(dim=1, keepdim=True)  # [B, 1]


def fm_second_order_flops(num_fields: int, dim: int) -> Flops:
    """Elementwise cost of :func:`fm_second_order` per example (no matmul).

    Σ_f: F·D; its square: D; e²: F·D; their Σ_f: F·D; difference: D; Σ_d: D; × 0.5: 1.
    """
    f, d = num_fields, dim
    return Flops(elementwise=ELEMENTWISE * (3 * f * d + 3 * d + 1))


class FirstOrderTerm(nn.Module):
    """The FM's first-order (linear, "LR") term on the embeddings: ``y = w^T x0``.

        y = Σ_f w_f^T e_f = w^T flatten(E)            # [B, 1]   w ∈ R^{F·D}, no bias

    No bias: the head that reads it has one. See the module docstring for why this
    replaces the papers' per-value scalar weights.

    Args:
        num_fields: F.
        dim: D.

    Shape:
        ``[B, F, D]`` → ``[B, 1]``

    Example:
        >>> term = FirstOrderTerm(num_fields=2, dim=2)
        >>> with torch.no_grad():
        ...     _ = term.linear.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 2.0]]))
        >>> term(torch.tensor([[[3.0, 5.0], [7.0, 1.0]]]))  # 1·3 + 2·1
        tensor([[5.]], grad_fn=<MmBackward0>)
    """

    def __init__(self, num_fields: int, dim: int) -> None:
        super().__init__()
        _check(num_fields, dim)
        self.num_fields, self.dim = num_fields, dim
        self.in_dim = num_fields * dim
        self.out_dim = 1
        self.linear = nn.Linear(self.in_dim, 1, bias=False)  # w
        init_linear(self.linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))  # [B, F·D] -> [B, 1]

    def flops(self) -> Flops:
        return Flops(matmul=2 * self.in_dim)


class FactorizationMachine(nn.Module):
    """DeepFM's FM component on field embeddings: its two terms, side by side.

        first  = w^T flatten(E)                                 # [B, 1]   see FirstOrderTerm
        second = 0.5 Σ_d ((Σ_f e_fd)² − Σ_f e_fd²)              # [B, 1]   = Σ_{f<g} <e_f, e_g>
        h      = [first ; second]                               # [B, 2]

    DeepFM (arXiv 1703.04247) predicts ``sigmoid(y_FM + y_DNN)`` with
    ``y_FM = first + second`` and the DNN on the same embeddings. In mldcn the DNN
    is the shared parallel head, ``logit = W [h ; MLP(x0)] + b``, so the head weighs
    the two FM terms with learned scalars instead of 1 each. The function class is
    the same for the first-order term (its w is free anyway); the FM term gains a
    learned scale. The two terms are returned separately so they can be inspected.

    The second-order term has no parameters and no width: its cost, about 3·F·D
    elementwise FLOPs plus 2·F·D for the first-order matmul, is fixed by F and D.
    DeepFM cannot be resized to a FLOPs budget; a matched-FLOPs comparison includes
    it at this natural cost.

    Guidance: the FM term grows with the squared norm of the embeddings; the paper and
    BARS train it with the embedding L2 regulariser (BARS Frappe: 0.05).

    Args:
        num_fields: F.
        dim: D.

    Shape:
        ``[B, F, D]`` → ``[B, 2]``

    Example:
        >>> fm = FactorizationMachine(num_fields=3, dim=2)
        >>> fm(torch.randn(4, 3, 2)).shape
        torch.Size([4, 2])
        >>> x = torch.tensor([[[1.0, 2.0], [3.0, 0.0], [0.0, 1.0]]])
        >>> fm_second_order(x)  # <e1,e2> + <e1,e3> + <e2,e3> = 3 + 2 + 0
        tensor([[5.]])
    """

    def __init__(self, num_fields: int, dim: int) -> None:
        super().__init__()
        _check(num_fields, dim)
        self.num_fields, self.dim = num_fields, dim
        self.in_dim = num_fields * dim
        self.out_dim = 2
        self.first_order = FirstOrderTerm(num_fields, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.first_order(x), fm_second_order(x)], dim=1)  # [B, 2]

    def flops(self) -> Flops:
        return self.first_order.flops() + fm_second_order_flops(self.num_fields, self.dim)
