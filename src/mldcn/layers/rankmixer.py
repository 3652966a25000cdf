"""RankMixer (Zhu et al., ByteDance, "RankMixer: Scaling Up Ranking Models in Industrial
Recommenders", CIKM 2025, arXiv 2507.15551).

The field embeddings are cut into T tokens of width D; L blocks then alternate a
parameter-free multi-head token mixing (every token exchanges one head with every
other token) and a feed-forward network per token (each token keeps its own weights,
as feature subspaces differ), both with a residual and LayerNorm:

    S_{l}   = LN(TokenMix(X_{l-1}) + X_{l-1})                  # [B, T, D]
    X_{l}   = LN(PFFN(S_{l}) + S_{l})                          # [B, T, D]

The sparse variant replaces each token's FFN with a mixture of experts routed by
ReLU gates. Notation: B batch, F fields, D_e embedding size, T tokens, D token
width, H = T heads of width D/T, D_h FFN hidden width (k·D), E experts.

The cost functions below are the single place the FLOPs formulas live: the
modules' ``flops()`` call them, and the model family uses them to size RankMixer
to a FLOPs budget without building it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from mldcn.layers.activation import xavier_normal_
from mldcn.layers.flops import ELEMENTWISE, LAYER_NORM, TRANSCENDENTAL, Flops

# --------------------------------------------------------------------------- FLOPs


def tokenizer_flops(num_fields: int, dim: int, num_tokens: int, token_dim: int) -> Flops:
    """:class:`FieldTokenizer`: every field's D_e coordinates go through one D_e-row slice of one map to D."""
    return Flops(matmul=2 * num_fields * dim * token_dim, elementwise=num_tokens * token_dim * ELEMENTWISE)


def per_token_ffn_flops(num_tokens: int, token_dim: int, hidden_dim: int) -> Flops:
    """:class:`PerTokenFFN`: two matmuls per token, biases and GELU."""
    t, d, h = num_tokens, token_dim, hidden_dim
    return Flops(
        matmul=2 * t * d * h + 2 * t * h * d,
        elementwise=t * h * (ELEMENTWISE + TRANSCENDENTAL) + t * d * ELEMENTWISE,  # b1, GELU, b2
    )


def per_token_moe_flops(num_tokens: int, token_dim: int, hidden_dim: int, num_experts: int) -> Flops:
    """:class:`PerTokenSparseMoE` as computed here: every expert of every token, densely."""
    t, d, e = num_tokens, token_dim, num_experts
    router = Flops(matmul=2 * t * d * e, elementwise=2 * t * e * ELEMENTWISE)  # logits, bias, ReLU
    experts = per_token_ffn_flops(t * e, d, hidden_dim)
    combine = Flops(matmul=2 * t * e * d)  # Σ_i G_i e_i as a [1, E] @ [E, D] product per token
    return router + experts + combine


def _norm_flops(num_tokens: int, token_dim: int) -> Flops:
    # two residual adds and two LayerNorms per block
    return Flops(elementwise=2 * (ELEMENTWISE + LAYER_NORM) * num_tokens * token_dim)


def rankmixer_flops(
    num_fields: int,
    dim: int,
    num_tokens: int,
    token_dim: int,
    hidden_dim: int,
    num_layers: int,
    num_experts: int | None = None,
) -> Flops:
    """FLOPs per example of :class:`RankMixer` (``num_experts=None``) or :class:`SparseMoERankMixer`.

    The token mixing is a reshape: 0 FLOPs.
    """
    if num_experts is None:
        ffn = per_token_ffn_flops(num_tokens, token_dim, hidden_dim)
    else:
        ffn = per_token_moe_flops(num_tokens, token_dim, hidden_dim, num_experts)
    block = ffn + _norm_flops(num_tokens, token_dim)
    return tokenizer_flops(num_fields, dim, num_tokens, token_dim) + block * num_layers


# --------------------------------------------------------------------------- parts


def field_groups(num_fields: int, num_tokens: int) -> list[int]:
    """Fields per token: contiguous groups, the first ``F mod T`` one field larger.

    >>> field_groups(10, 4)
    [3, 3, 2, 2]
    """
    if not 1 <= num_tokens <= num_fields:
        raise ValueError(f"num_tokens must be in [1, num_fields={num_fields}], got {num_tokens}")
    size, extra = divmod(num_fields, num_tokens)
    return [size + 1] * extra + [size] * (num_tokens - extra)


class FieldTokenizer(nn.Module):
    """RankMixer's tokeniser: contiguous groups of fields, each projected to one token.

        x_t = W_t · concat(e_f for f in group t) + b_t          # [B, D]  W_t ∈ R^{D×(g_t·D_e)}
        X   = [x_1; ...; x_T]                                   # [B, T, D]

    The paper splits the concatenated embedding into T chunks after grouping
    features by meaning (user, item, sequence, context ...) and projects each chunk
    with its own map. Here the groups are contiguous runs of fields in schema
    order, as equal as possible (:func:`field_groups`): order the schema's fields by
    meaning to get the paper's semantic grouping.

    Args:
        num_fields: F.
        dim: D_e, embedding size.
        num_tokens: T (1 <= T <= F).
        token_dim: D.

    Shape:
        ``[B, F, D_e]`` → ``[B, T, D]``

    Example:
        >>> FieldTokenizer(num_fields=5, dim=3, num_tokens=2, token_dim=4)(torch.randn(7, 5, 3)).shape
        torch.Size([7, 2, 4])
    """

    def __init__(self, num_fields: int, dim: int, num_tokens: int, token_dim: int) -> None:
        super().__init__()
        if dim < 1 or token_dim < 1:
            raise ValueError(f"dim and token_dim must be >= 1, got {dim}, {token_dim}")
        self.num_fields, self.dim, self.num_tokens, self.token_dim = num_fields, dim, num_tokens, token_dim
        self.groups = field_groups(num_fields, num_tokens)
        # groups of one size share one stacked weight [count, g·D_e, D]: at most two sizes
        self.sizes = sorted(set(self.groups), reverse=True)
        self.counts = [self.groups.count(size) for size in self.sizes]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(count, size * dim, token_dim))
            for size, count in zip(self.sizes, self.counts)
        )
        for weight, size in zip(self.weights, self.sizes):
            xavier_normal_(weight, size * dim, token_dim)
        self.bias = nn.Parameter(torch.zeros(num_tokens, token_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, start = [], 0
        for weight, size, count in zip(self.weights, self.sizes, self.counts):
            chunk = x[:, start : start + size * count]  # [B, count·g, D_e]
            chunk = chunk.reshape(x.shape[0], count, size * self.dim).transpose(0, 1)  # [count, B, g·D_e]
            tokens.append(torch.bmm(chunk, weight))  # [count, B, D]
            start += size * count
        out = torch.cat(tokens, dim=0).transpose(0, 1)  # [B, T, D]
        return out + self.bias

    def flops(self) -> Flops:
        return tokenizer_flops(self.num_fields, self.dim, self.num_tokens, self.token_dim)


def token_mixing(x: torch.Tensor) -> torch.Tensor:
    """RankMixer's multi-head token mixing, with H = T heads: a fixed permutation.

    Each token splits into T heads of width D/T, ``x_t = [x_t^(1) || ... || x_t^(T)]``;
    output token h is head h of every token in order, ``s_h = [x_1^(h) || ... || x_T^(h)]``.
    It is a transpose of the T×T grid of heads, so applying it twice gives x back.

    Shape:
        ``[B, T, D]`` (D divisible by T) → ``[B, T, D]``

    Example:
        >>> x = torch.arange(8.0).reshape(1, 2, 4)  # two tokens, heads [0, 1 | 2, 3] and [4, 5 | 6, 7]
        >>> token_mixing(x)
        tensor([[[0., 1., 4., 5.],
                 [2., 3., 6., 7.]]])
    """
    batch, tokens, width = x.shape
    if width % tokens:
        raise ValueError(f"token width {width} is not divisible by the number of tokens (heads) {tokens}")
    heads = x.reshape(batch, tokens, tokens, width // tokens)  # [B, T (token t), H (head h), D/T]
    return heads.transpose(1, 2).reshape(batch, tokens, width)  # [B, H, T·D/T]: token h = heads h of all t


class MultiHeadTokenMixing(nn.Module):
    """:func:`token_mixing` as a module: no parameters, 0 FLOPs (a reshape and a copy).

    The paper sets the number of heads H to T so that the mixed sequence has T
    tokens again and the residual ``TokenMix(X) + X`` is defined.

    Shape:
        ``[B, T, D]`` → ``[B, T, D]``

    Example:
        >>> mix = MultiHeadTokenMixing()
        >>> sum(p.numel() for p in mix.parameters()), mix.flops().total
        (0, 0)
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return token_mixing(x)

    def flops(self) -> Flops:
        return Flops()


class PerTokenFFN(nn.Module):
    """RankMixer's PFFN: a two-layer GELU network per token, with weights of its own.

        v_t = W2_t GELU(W1_t s_t + b1_t) + b2_t        # [B, D]   W1_t ∈ R^{D_h×D}, W2_t ∈ R^{D×D_h}

    Unlike a transformer's FFN, the T tokens do not share weights: each models its
    own feature subspace. Computed as two batched matmuls over the token axis.

    Args:
        num_tokens: T.
        token_dim: D.
        hidden_dim: D_h (the paper: k·D with k = 4).

    Shape:
        ``[B, T, D]`` → ``[B, T, D]``

    Example:
        >>> PerTokenFFN(num_tokens=3, token_dim=4, hidden_dim=8)(torch.randn(2, 3, 4)).shape
        torch.Size([2, 3, 4])
    """

    def __init__(self, num_tokens: int, token_dim: int, hidden_dim: int) -> None:
        super().__init__()
        if min(num_tokens, token_dim, hidden_dim) < 1:
            raise ValueError(
                f"num_tokens, token_dim, hidden_dim must be >= 1, got {num_tokens}, {token_dim}, {hidden_dim}"
            )
        self.num_tokens, self.token_dim, self.hidden_dim = num_tokens, token_dim, hidden_dim
        t, d, h = num_tokens, token_dim, hidden_dim
        self.w1 = nn.Parameter(xavier_normal_(torch.empty(t, d, h), d, h))
        self.b1 = nn.Parameter(torch.zeros(t, 1, h))
        self.w2 = nn.Parameter(xavier_normal_(torch.empty(t, h, d), h, d))
        self.b2 = nn.Parameter(torch.zeros(t, 1, d))

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        st = s.transpose(0, 1)  # [T, B, D]
        h = F.gelu(torch.bmm(st, self.w1) + self.b1)  # [T, B, D_h]
        return (torch.bmm(h, self.w2) + self.b2).transpose(0, 1)  # [T, B, D] -> [B, T, D]

    def flops(self) -> Flops:
        return per_token_ffn_flops(self.num_tokens, self.token_dim, self.hidden_dim)


class PerTokenSparseMoE(nn.Module):
    """RankMixer's sparse MoE: each token's FFN replaced by E experts with ReLU routing.

        G_t = ReLU(W^r_t s_t + c_t)                              # [B, E]  router of token t
        e_{t,i}(s_t) = W2_{t,i} GELU(W1_{t,i} s_t + b1_{t,i}) + b2_{t,i}
        v_t = Σ_i G_{t,i} e_{t,i}(s_t)                           # [B, D]

    ReLU routing (instead of top-k softmax) lets the number of active experts vary
    per token and example; an expert whose gate is 0 contributes nothing. The paper
    adds an L1 penalty ``λ Σ G`` to the loss to control sparsity and trains with
    dense-training/sparse-inference (DTSI) routers: both belong to the training
    code (use :meth:`gates`). Here every expert is computed and multiplied by its
    gate, so the FLOPs count is the dense cost, an upper bound on what a sparse
    kernel would spend.

    Args:
        num_tokens: T.
        token_dim: D.
        hidden_dim: D_h of each expert.
        num_experts: E per token.

    Shape:
        ``[B, T, D]`` → ``[B, T, D]``

    Example:
        >>> moe = PerTokenSparseMoE(num_tokens=3, token_dim=4, hidden_dim=2, num_experts=5)
        >>> moe(torch.randn(2, 3, 4)).shape, moe.gates(torch.randn(2, 3, 4)).shape
        (torch.Size([2, 3, 4]), torch.Size([2, 3, 5]))
    """

    def __init__(self, num_tokens: int, token_dim: int, hidden_dim: int, num_experts: int) -> None:
        super().__init__()
        if min(num_tokens, token_dim, hidden_dim, num_experts) < 1:
            raise ValueError(
                "num_tokens, token_dim, hidden_dim, num_experts must be >= 1, got "
                f"{num_tokens}, {token_dim}, {hidden_dim}, {num_experts}"
            )
        self.num_tokens, self.token_dim, self.hidden_dim = num_tokens, token_dim, hidden_dim
        self.num_experts = num_experts
        t, d, h, e = num_tokens, token_dim, hidden_dim, num_experts
        self.router = nn.Parameter(xavier_normal_(torch.empty(t, d, e), d, e))  # W^r, one per token
        self.router_bias = nn.Parameter(torch.zeros(t, 1, e))
        # expert weights of a token side by side, so the first layer is one matmul per token
        self.w1 = nn.Parameter(xavier_normal_(torch.empty(t, d, e * h), d, h))  # [W1_{t,1} ... W1_{t,E}]
        self.b1 = nn.Parameter(torch.zeros(t, 1, e * h))
        self.w2 = nn.Parameter(xavier_normal_(torch.empty(t * e, h, d), h, d))  # W2_{t,i} at row t·E + i
        self.b2 = nn.Parameter(torch.zeros(t, e, 1, d))

    def gates(self, s: torch.Tensor) -> torch.Tensor:
        """``G = ReLU(W^r s + c)`` for every token: ``[B, T, D]`` → ``[B, T, E]``."""
        logits = torch.bmm(s.transpose(0, 1), self.router) + self.router_bias  # [T, B, E]
        return torch.relu(logits).transpose(0, 1)  # [B, T, E]

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        batch = s.shape[0]
        t, d, h, e = self.num_tokens, self.token_dim, self.hidden_dim, self.num_experts
        st = s.transpose(0, 1)  # [T, B, D]
        gates = torch.relu(torch.bmm(st, self.router) + self.router_bias)  # [T, B, E]
        hidden = F.gelu(torch.bmm(st, self.w1) + self.b1)  # [T, B, E·D_h]
        hidden = hidden.reshape(t, batch, e, h).transpose(1, 2).reshape(t * e, batch, h)  # [T·E, B, D_h]
        experts = torch.bmm(hidden, self.w2).reshape(t, e, batch, d) + self.b2  # [T, E, B, D]
        # Σ_i G_i e_i as [1, E] @ [E, D] per token and example (a matmul for every E, 1 included)
        experts = experts.permute(0, 2, 1, 3)  # [T, B, E, D]
        out = torch.matmul(gates.unsqueeze(2), experts).squeeze(2)  # [T, B, 1, E] @ [T, B, E, D] -> [T, B, D]
        return out.transpose(0, 1)  # [B, T, D]

    def flops(self) -> Flops:
        return per_token_moe_flops(self.num_tokens, self.token_dim, self.hidden_dim, self.num_experts)


# --------------------------------------------------------------------------- networks


class _RankMixerBase(nn.Module):
    """Tokeniser, then ``num_layers`` blocks ``S = LN(TokenMix(X) + X); X' = LN(FFN(S) + S)``."""

    def __init__(
        self,
        num_fields: int,
        dim: int,
        num_tokens: int,
        token_dim: int,
        hidden_dim: int,
        num_layers: int,
        make_ffn: Callable[[], nn.Module],
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if token_dim % num_tokens:
            raise ValueError(
                f"token_dim {token_dim} must be a multiple of num_tokens {num_tokens} (T heads of width D/T)"
            )
        self.num_fields, self.dim = num_fields, dim
        self.num_tokens, self.token_dim, self.hidden_dim = num_tokens, token_dim, hidden_dim
        self.num_layers = num_layers
        self.tokenizer = FieldTokenizer(num_fields, dim, num_tokens, token_dim)
        self.mixing = MultiHeadTokenMixing()
        self.ffns = nn.ModuleList(make_ffn() for _ in range(num_layers))
        self.mix_norms = nn.ModuleList(nn.LayerNorm(token_dim) for _ in range(num_layers))
        self.ffn_norms = nn.ModuleList(nn.LayerNorm(token_dim) for _ in range(num_layers))
        self.out_dim = num_tokens * token_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tokenizer(x)  # [B, F, D_e] -> [B, T, D]
        for ffn, mix_norm, ffn_norm in zip(self.ffns, self.mix_norms, self.ffn_norms):
            s = mix_norm(self.mixing(x) + x)  # [B, T, D]
            x = ffn_norm(ffn(s) + s)  # [B, T, D]
        return x.flatten(1)  # [B, T·D]


class RankMixer(_RankMixerBase):
    """RankMixer with a dense per-token FFN in every block.

        X_0 = Tokenize(E)                                       # [B, T, D]
        S_l = LN(TokenMix(X_{l-1}) + X_{l-1})                   # [B, T, D]
        X_l = LN(PFFN(S_l) + S_l)                               # [B, T, D]
        h   = flatten(X_L)                                      # [B, T·D]

    See :class:`FieldTokenizer`, :func:`token_mixing` and :class:`PerTokenFFN`.
    The paper mean-pools X_L into the task towers; here the tokens are flattened,
    as every interaction module here hands the head a flat ``[B, h]``.

    Guidance (paper): the 100M model uses T = 16, D = 768, k = 4; scale D and k
    first (they grow the large per-token GEMMs, which run at high utilisation), T
    with the number of feature groups. Cost ≈ 2·F·D_e·D + L·4·T·D·D_h matmul FLOPs.

    Args:
        num_fields: F.
        dim: D_e.
        num_tokens: T (<= F).
        token_dim: D, a multiple of T.
        hidden_dim: D_h of each token's FFN.
        num_layers: L.

    Shape:
        ``[B, F, D_e]`` → ``[B, T·D]``

    Example:
        >>> net = RankMixer(num_fields=6, dim=4, num_tokens=3, token_dim=6, hidden_dim=24, num_layers=2)
        >>> net(torch.randn(5, 6, 4)).shape
        torch.Size([5, 18])
    """

    def __init__(
        self, num_fields: int, dim: int, num_tokens: int, token_dim: int, hidden_dim: int, num_layers: int
    ) -> None:
        super().__init__(
            num_fields,
            dim,
            num_tokens,
            token_dim,
            hidden_dim,
            num_layers,
            make_ffn=lambda: PerTokenFFN(num_tokens, token_dim, hidden_dim),
        )

    def flops(self) -> Flops:
        return rankmixer_flops(
            self.num_fields, self.dim, self.num_tokens, self.token_dim, self.hidden_dim, self.num_layers
        )


class SparseMoERankMixer(_RankMixerBase):
    """RankMixer whose per-token FFNs are sparse mixtures of experts (ReLU routing).

        S_l = LN(TokenMix(X_{l-1}) + X_{l-1})
        X_l = LN(SMoE(S_l) + S_l),   SMoE(S)_t = Σ_i ReLU(W^r_t s_t + c_t)_i · e_{t,i}(s_t)

    See :class:`PerTokenSparseMoE`. The paper uses it to add parameters at a small
    increase of the *active* compute; computed densely here, E experts of width
    D_h cost what one FFN of width E·D_h costs, plus the router.

    Args:
        num_fields, dim, num_tokens, token_dim, num_layers: as in :class:`RankMixer`.
        hidden_dim: D_h of each expert.
        num_experts: E per token.

    Shape:
        ``[B, F, D_e]`` → ``[B, T·D]``

    Example:
        >>> net = SparseMoERankMixer(num_fields=6, dim=4, num_tokens=3, token_dim=6, hidden_dim=6,
        ...                          num_layers=2, num_experts=4)
        >>> net(torch.randn(5, 6, 4)).shape
        torch.Size([5, 18])
    """

    def __init__(
        self,
        num_fields: int,
        dim: int,
        num_tokens: int,
        token_dim: int,
        hidden_dim: int,
        num_layers: int,
        num_experts: int,
    ) -> None:
        super().__init__(
            num_fields,
            dim,
            num_tokens,
            token_dim,
            hidden_dim,
            num_layers,
            make_ffn=lambda: PerTokenSparseMoE(num_tokens, token_dim, hidden_dim, num_experts),
        )
        self.num_experts = num_experts

    def flops(self) -> Flops:
        return rankmixer_flops(
            self.num_fields,
            self.dim,
            self.num_tokens,
            self.token_dim,
            self.hidden_dim,
            self.num_layers,
            self.num_experts,
        )
