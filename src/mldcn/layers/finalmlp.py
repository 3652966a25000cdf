"""FinalMLP (Mao et al., "FinalMLP: An Enhanced Two-Stream MLP Model for CTR
Prediction", AAAI 2023, arXiv 2304.00902).

Two MLP streams over the flattened embedding ``e [B, d]`` (d = F·D), each fed a
differently gated copy of it, fused by a multi-head bilinear layer into the logit:

    h_i = 2σ(Gate_i(s_i)) ⊙ e                                  # [B, d]    stream-specific feature gating
    o_i = MLP_i(h_i)                                            # [B, d_i]
    ŷ   = σ(b + Σ_j BF(o_1j, o_2j))                             # k heads: o_i split into k chunks
    BF(o_1j, o_2j) = w_1j^T o_1j + w_2j^T o_2j + o_1j^T W_3j o_2j

s_i is the gate's context: the embeddings of chosen fields (e.g. the user for one
stream and the item for the other) or, with no field, a learned vector (one global
gate for every example).

In mldcn, :class:`FinalMLP` is the interaction (gates, streams and fusion) and returns
the k head values ``BF_j`` ``[B, k]``; the model's head, stacked with no hidden layer
(``HeadConfig(structure="stacked", hidden=())``), is the ``Σ_j a_j BF_j + b`` that makes
them a logit: FinalMLP's own, with the sum over heads learned (a_j, initialised
Xavier-normal, where FinalMLP has a_j = 1; a rescaling of W_3j, w_1j, w_2j, so no more
expressive), and the bias b the head's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mldcn.layers.activation import init_linear, xavier_normal_
from mldcn.layers.flops import ELEMENTWISE, Flops, activation_flops, linear_flops
from mldcn.layers.mlp import MLP

#: The learned context's initial standard deviation: that of an embedding row
#: (:class:`~mldcn.layers.embedding.FeatureEmbedding`), so it starts like a field's.
CONTEXT_INIT_STD = 1e-4


def _check_fields(name: str, fields: Sequence[int], num_fields: int) -> tuple[int, ...]:
    fields = tuple(fields)
    if any(not 0 <= f < num_fields for f in fields):
        raise ValueError(f"{name}: field indices must be in [0, {num_fields}), got {list(fields)}")
    if len(set(fields)) != len(fields):
        raise ValueError(f"{name}: a field is listed twice in {list(fields)}")
    return fields


class FeatureGate(nn.Module):
    """FinalMLP's stream-specific feature gating: ``h = 2σ(Gate(s)) ⊙ e``.

        s = [e_f for f in context_fields]   or a learned vector   # [B, D·|context|] or [B, D]
        g = W_out MLP(s) + b_out                                     # [B, d]   MLP: ReLU hidden layers
        h = 2σ(g) ⊙ e                                                # [B, d]   gate in (0, 2), 1 at g = 0

    The gate re-weights every element of the flattened embedding e from a context:
    field embeddings give a per-example gate (user- or item-specific feature
    importance), the learned vector a global one. The context embeddings are the
    model's own (a slice of ``[B, F, D]``), so the gate's gradient reaches them;
    FuxiCTR's FinalMLP embeds the context fields in tables of their own.

    The learned context starts as an embedding row does (N(0, 1e-4²)), where
    FuxiCTR starts it at zero: at zero the hidden ReLUs sit at their kink, whose
    gradient is 0 in PyTorch, so nothing but the gate's output bias would ever train
    (the gate would be a static ``2σ(b_out)``). Either way the gate starts at ≈ 1.
    A learned context's gate is the same for every example; it is computed per
    example, as in FuxiCTR, and its FLOPs counted so (a server could fold it).

    Args:
        num_fields: F.
        dim: D.
        hidden: widths of the gate MLP's ReLU hidden layers (FuxiCTR's ``fs_hidden_units``).
        context_fields: indices (input order of the feature spec) of the fields whose
            embeddings condition the gate; empty: a learned context vector.

    Shape:
        ``[B, F, D]`` → ``[B, F·D]``

    Example:
        >>> gate = FeatureGate(num_fields=3, dim=2, hidden=(4,), context_fields=(0,))
        >>> gate(torch.randn(5, 3, 2)).shape
        torch.Size([5, 6])
        >>> FeatureGate(num_fields=3, dim=2, context_fields=(3,))
        Traceback (most recent call last):
        ...
        ValueError: context_fields: field indices must be in [0, 3), got [3]
    """

    def __init__(
        self, num_fields: int, dim: int, hidden: Sequence[int] = (), context_fields: Sequence[int] = ()
    ) -> None:
        super().__init__()
        if num_fields < 1 or dim < 1:
            raise ValueError(f"num_fields and dim must be >= 1, got {num_fields}, {dim}")
        self.num_fields, self.dim = num_fields, dim
        self.hidden = tuple(hidden)
        self.context_fields = _check_fields("context_fields", context_fields, num_fields)
        self.context = None
        if not self.context_fields:
            self.context = nn.Parameter(torch.empty(dim))  # learned context, [D]
            nn.init.normal_(self.context, std=CONTEXT_INIT_STD)
        self.mlp = MLP(dim * max(1, len(self.context_fields)), self.hidden)
        self.output = nn.Linear(self.mlp.out_dim, num_fields * dim)  # W_out, b_out
        init_linear(self.output)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """``2σ(Gate(s))`` ``[B, F·D]``."""
        if self.context is None:
            s = x[:, list(self.context_fields)].flatten(1)  # [B, |context|, D] -> [B, D·|context|]
        else:
            s = self.context.expand(x.shape[0], -1)  # [B, D]
        return 2.0 * torch.sigmoid(self.output(self.mlp(s)))  # [B, d]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) * self.gate(x)  # [B, d]

    def flops(self) -> Flops:
        d = self.num_fields * self.dim
        gate = self.mlp.flops() + linear_flops(self.mlp.out_dim, d) + activation_flops("2sigmoid", d)
        return gate + Flops(elementwise=d * ELEMENTWISE)  # ⊙ e


class BilinearFusion(nn.Module):
    """FinalMLP's stream-level interaction aggregation: multi-head bilinear fusion.

        o_i = [o_i1; ...; o_ik]                                     # k heads, chunks of d_i/k
        BF_j = w_1j^T o_1j + w_2j^T o_2j + o_1j^T W_3j o_2j           # [B] per head

    One bilinear form per head instead of one over (d1, d2): k times fewer weights
    (d1·d2/k) and FLOPs. FinalMLP sums the heads and adds one bias; here the k values
    are returned and the sum (and bias) are the caller's (see the module docstring).
    Initialised as FuxiCTR's ``InteractionAggregation``: Xavier-normal with the fans
    of its ``w_x`` ``[d1 → 1]``, ``w_y`` ``[d2 → 1]`` and ``w_xy`` ``[k·(d1/k)·(d2/k) → 1]``.

    Args:
        in_dim1: d1, width of o_1 (divisible by k).
        in_dim2: d2, width of o_2 (divisible by k).
        num_heads: k.

    Shape:
        o_1 ``[B, d1]``, o_2 ``[B, d2]`` → ``[B, k]``

    Example:
        >>> fusion = BilinearFusion(in_dim1=4, in_dim2=6, num_heads=2)
        >>> fusion(torch.randn(3, 4), torch.randn(3, 6)).shape
        torch.Size([3, 2])
    """

    def __init__(self, in_dim1: int, in_dim2: int, num_heads: int = 1) -> None:
        super().__init__()
        if min(in_dim1, in_dim2, num_heads) < 1:
            raise ValueError(f"in_dim1, in_dim2, num_heads must be >= 1, got {in_dim1}, {in_dim2}, {num_heads}")
        if in_dim1 % num_heads or in_dim2 % num_heads:
            raise ValueError(
                f"num_heads ({num_heads}) must divide both stream outputs, got widths {in_dim1} and {in_dim2}"
            )
        self.in_dim1, self.in_dim2, self.num_heads = in_dim1, in_dim2, num_heads
        self.out_dim = num_heads
        a, c = in_dim1 // num_heads, in_dim2 // num_heads
        self.w1 = nn.Parameter(torch.empty(num_heads, a, 1))  # w_1j
        self.w2 = nn.Parameter(torch.empty(num_heads, 1, c))  # w_2j
        self.w3 = nn.Parameter(torch.empty(num_heads, a, c))  # W_3j
        xavier_normal_(self.w1, in_dim1, 1)
        xavier_normal_(self.w2, in_dim2, 1)
        xavier_normal_(self.w3, num_heads * a * c, 1)

    def forward(self, o1: torch.Tensor, o2: torch.Tensor) -> torch.Tensor:
        k = self.num_heads
        o1 = o1.reshape(-1, k, 1, self.in_dim1 // k)  # [B, k, 1, a]
        o2 = o2.reshape(-1, k, self.in_dim2 // k, 1)  # [B, k, c, 1]
        left = torch.matmul(o1, self.w3) + self.w2  # o_1j^T W_3j + w_2j^T: [B, k, 1, c]
        fused = torch.matmul(left, o2) + torch.matmul(o1, self.w1)  # [B, k, 1, 1]
        return fused.reshape(-1, k)  # [B, k]

    def flops(self) -> Flops:
        d1, d2 = self.in_dim1, self.in_dim2
        matmul = 2 * d1 * (d2 // self.num_heads) + 2 * d2 + 2 * d1  # o_1^T W_3; (· + w_2^T) o_2; w_1^T o_1
        return Flops(matmul=matmul, elementwise=(d2 + self.num_heads) * ELEMENTWISE)  # + w_2, + w_1^T o_1


class FinalMLP(nn.Module):
    """FinalMLP's interaction: two gated MLP streams and their bilinear fusion.

        h_i  = 2σ(Gate_i(s_i)) ⊙ e      (or h_i = e without feature gating)    # [B, d]
        o_i  = MLP_i(h_i)                                                       # [B, d_i]
        BF_j = w_1j^T o_1j + w_2j^T o_2j + o_1j^T W_3j o_2j,  j = 1..k          # [B, k]

    The model's logit is ``Σ_j a_j BF_j + b`` from a stacked head with no hidden
    layer (FinalMLP: a_j = 1; see the module docstring). The streams are MLPs as
    FuxiCTR's (Linear → BN → activation → dropout per layer). The paper's finding:
    two plain MLP streams of different sizes (BARS Frappe: 400 and 100 wide) are
    already a strong CTR model; gating their inputs differently and fusing them with
    a bilinear term, not a sum, makes them stronger.

    Cost with one hidden layer per stream and per gate (widths d_1, d_2, g), context
    widths c_1, c_2: 2·d·(d_1 + d_2) for the streams, 2·(c_1 + c_2)·g + 4·g·d for the
    gates, 2·(d_1·d_2/k + d_1 + d_2) for the fusion (matmul FLOPs). The gates are
    often the largest part: each maps g hidden units to all d inputs.

    Args:
        num_fields: F.
        dim: D.
        mlp1_hidden, mlp2_hidden: each stream's hidden widths (at least one layer; the
            last is d_i, a multiple of ``num_heads``).
        mlp1_dropout, mlp2_dropout: dropout after each layer of a stream.
        mlp1_batch_norm, mlp2_batch_norm: batch norm after each Linear of a stream.
        activation: the streams' activation.
        feature_gating: gate each stream's input (FuxiCTR's ``use_fs``); False gives the
            paper's DualMLP with bilinear fusion.
        gate_hidden: the gates' ReLU hidden widths (FuxiCTR's ``fs_hidden_units``).
        gate1_context, gate2_context: fields conditioning each stream's gate (indices in
            the feature spec's input order); empty: a learned context vector.
        num_heads: k, heads of the bilinear fusion.

    Shape:
        ``[B, F, D]`` → ``[B, k]``

    Example:
        >>> net = FinalMLP(num_fields=4, dim=3, mlp1_hidden=(8,), mlp2_hidden=(6, 4), gate_hidden=(5,),
        ...                gate1_context=(0,), gate2_context=(1, 2), num_heads=2)
        >>> net(torch.randn(7, 4, 3)).shape
        torch.Size([7, 2])
        >>> net.out_dim
        2
    """

    def __init__(
        self,
        num_fields: int,
        dim: int,
        mlp1_hidden: Sequence[int] = (400,),
        mlp2_hidden: Sequence[int] = (100,),
        mlp1_dropout: float = 0.0,
        mlp2_dropout: float = 0.0,
        mlp1_batch_norm: bool = False,
        mlp2_batch_norm: bool = False,
        activation: str = "relu",
        feature_gating: bool = True,
        gate_hidden: Sequence[int] = (400,),
        gate1_context: Sequence[int] = (),
        gate2_context: Sequence[int] = (),
        num_heads: int = 2,
    ) -> None:
        super().__init__()
        if num_fields < 1 or dim < 1:
            raise ValueError(f"num_fields and dim must be >= 1, got {num_fields}, {dim}")
        if not mlp1_hidden or not mlp2_hidden:
            raise ValueError("mlp1_hidden and mlp2_hidden need at least one layer each")
        self.num_fields, self.dim = num_fields, dim
        self.in_dim = num_fields * dim
        self.num_heads = num_heads
        self.feature_gating = feature_gating
        _check_fields("gate1_context", gate1_context, num_fields)
        _check_fields("gate2_context", gate2_context, num_fields)
        if feature_gating:
            self.gate1 = FeatureGate(num_fields, dim, gate_hidden, gate1_context)
            self.gate2 = FeatureGate(num_fields, dim, gate_hidden, gate2_context)
        else:
            self.gate1 = self.gate2 = None
        self.mlp1 = MLP(self.in_dim, mlp1_hidden, activation, mlp1_dropout, mlp1_batch_norm)
        self.mlp2 = MLP(self.in_dim, mlp2_hidden, activation, mlp2_dropout, mlp2_batch_norm)
        self.fusion = BilinearFusion(self.mlp1.out_dim, self.mlp2.out_dim, num_heads)
        self.out_dim = num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate1 is None:
            h1 = h2 = x.flatten(1)  # [B, d]
        else:
            h1, h2 = self.gate1(x), self.gate2(x)  # [B, d] each
        return self.fusion(self.mlp1(h1), self.mlp2(h2))  # [B, d1], [B, d2] -> [B, k]

    def flops(self) -> Flops:
        flops = self.mlp1.flops() + self.mlp2.flops() + self.fusion.flops()
        if self.gate1 is not None:
            flops = flops + self.gate1.flops() + self.gate2.flops()
        return flops
