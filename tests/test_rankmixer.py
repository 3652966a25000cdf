"""RankMixer (arXiv 2507.15551): golden tests by hand, naive references, exact FLOPs, budget matching."""

from __future__ import annotations

import math

import pytest
import torch
from golden import assert_close as _assert_close
from golden import set_weights as _set
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mldcn.config import ConfigError
from mldcn.features import CategoricalField, FeatureSpec
from mldcn.layers import (
    FieldTokenizer,
    MultiHeadTokenMixing,
    PerTokenFFN,
    PerTokenSparseMoE,
    RankMixer,
    SparseMoERankMixer,
)
from mldcn.layers.rankmixer import field_groups, rankmixer_flops, token_mixing
from mldcn.models import create_model, get_family, get_preset, model_config_from_dict
from mldcn.models.budget import interaction_flops, match_budget
from mldcn.models.rankmixer import (
    RankMixerConfig,
    SparseMoERankMixerConfig,
    effective_sizes,
)


def gelu(v: float) -> float:
    """Exact GELU, v·Φ(v)."""
    return v * 0.5 * (1.0 + math.erf(v / math.sqrt(2.0)))


# --------------------------------------------------------------------------- tokeniser


def test_field_groups():
    assert field_groups(6, 3) == [2, 2, 2]
    assert field_groups(10, 4) == [3, 3, 2, 2]  # 10 = 3 + 3 + 2 + 2, larger groups first
    assert field_groups(5, 5) == [1] * 5
    assert field_groups(7, 1) == [7]
    with pytest.raises(ValueError):
        field_groups(3, 4)  # a token is at least one whole field


def test_tokenizer_golden():
    tok = FieldTokenizer(num_fields=3, dim=1, num_tokens=2, token_dim=2)  # groups: fields {1, 2}, {3}
    assert tok.groups == [2, 1]
    _set(tok.weights[0], [[[1.0, 0.0], [1.0, 1.0]]])  # W_1: [e_1, e_2] -> [e_1 + e_2, e_2]
    _set(tok.weights[1], [[[2.0, -1.0]]])  # W_2: e_3 -> [2 e_3, -e_3]
    _set(tok.bias, [[0.0, 0.5], [1.0, 0.0]])
    x = torch.tensor([[[1.0], [2.0], [3.0]]])  # [B=1, F=3, D_e=1]
    # x_1 = [1 + 2, 2] + [0, 0.5] = [3, 2.5];  x_2 = [6, -3] + [1, 0] = [7, -3]
    _assert_close(tok(x), [[[3.0, 2.5], [7.0, -3.0]]])


def test_tokenizer_matches_per_group_linear_maps():
    torch.manual_seed(0)
    tok = FieldTokenizer(num_fields=7, dim=2, num_tokens=3, token_dim=4)  # groups [3, 2, 2]
    x = torch.randn(5, 7, 2)
    # token t: concat of its fields' embeddings (in field order) times W_t, plus b_t
    blocks = [tok.weights[0][0], tok.weights[1][0], tok.weights[1][1]]  # [g·D_e, D] each
    starts = [0, 3, 5]
    groups = zip(starts, [3, 2, 2], blocks)
    expected = torch.stack(
        [x[:, s : s + g].reshape(5, -1) @ w + tok.bias[t] for t, (s, g, w) in enumerate(groups)], dim=1
    )
    torch.testing.assert_close(tok(x), expected)


# --------------------------------------------------------------------------- token mixing


def test_token_mixing_golden():
    x = torch.arange(18.0).reshape(1, 3, 6)  # T = 3 tokens of D = 6, heads of width 2
    # token t = [6t, ..., 6t + 5], its heads [6t, 6t+1 | 6t+2, 6t+3 | 6t+4, 6t+5];
    # output token h = head h of tokens 1, 2, 3 in order
    expected = [
        [0, 1, 6, 7, 12, 13],
        [2, 3, 8, 9, 14, 15],
        [4, 5, 10, 11, 16, 17],
    ]
    _assert_close(token_mixing(x), [expected])


def test_token_mixing_is_a_parameter_free_transpose_of_heads():
    torch.manual_seed(0)
    mix = MultiHeadTokenMixing()
    assert list(mix.parameters()) == [] and list(mix.buffers()) == []
    assert mix.flops().total == 0
    x = torch.randn(2, 4, 8)  # T = 4, head width 2
    out = mix(x)
    # naive: out[b, h, t·c : (t+1)·c] = x[b, t, h·c : (h+1)·c]
    c = 2
    for h in range(4):
        for t in range(4):
            assert torch.equal(out[:, h, t * c : (t + 1) * c], x[:, t, h * c : (h + 1) * c])
    assert torch.equal(mix(out), x)  # a transpose: applying it twice is the identity
    assert torch.equal(torch.sort(out.flatten(1)).values, torch.sort(x.flatten(1)).values)  # a permutation
    assert torch.equal(token_mixing(torch.ones(1, 1, 5) * 3), torch.ones(1, 1, 5) * 3)  # T = 1: identity
    with pytest.raises(ValueError, match="divisible"):
        token_mixing(torch.zeros(1, 3, 4))


def test_rankmixer_mixing_owns_no_parameters():
    net = RankMixer(num_fields=6, dim=2, num_tokens=3, token_dim=6, hidden_dim=4, num_layers=2)
    counted = sum(p.numel() for p in net.parameters())
    # tokeniser 6·2·6 + 3·6; per block: FFN 3·(6·4 + 4 + 4·6 + 6), two LayerNorms 2·2·6
    assert counted == (72 + 18) + 2 * (3 * 58 + 24)


# --------------------------------------------------------------------------- per-token FFN


def test_per_token_ffn_golden():
    ffn = PerTokenFFN(num_tokens=2, token_dim=1, hidden_dim=2)
    _set(ffn.w1, [[[1.0, -1.0]], [[2.0, 0.0]]])  # W1_t as [D=1, D_h=2]
    _set(ffn.b1, [[0.0, 0.0], [1.0, 0.5]])
    _set(ffn.w2, [[[1.0], [1.0]], [[1.0], [-1.0]]])  # W2_t as [D_h=2, D=1]
    _set(ffn.b2, [[0.1], [0.0]])
    s = torch.tensor([[[1.0], [-2.0]]])  # [B=1, T=2, D=1]
    # token 1: [1, -1] -> GELU [0.8413447, -0.1586553] -> sum 0.6826895 + 0.1 = 0.7826895
    # token 2 (its own weights): [-4 + 1, 0 + 0.5] = [-3, 0.5] -> GELU [-0.0040497, 0.3457312]
    #          -> -0.0040497 - 0.3457312 = -0.3497809
    expected = [gelu(1) + gelu(-1) + 0.1, gelu(-3) - gelu(0.5)]
    assert expected == pytest.approx([0.7826895, -0.3497809], abs=1e-6)
    _assert_close(ffn(s), [[[expected[0]], [expected[1]]]])


# --------------------------------------------------------------------------- sparse MoE


def _golden_moe() -> PerTokenSparseMoE:
    moe = PerTokenSparseMoE(num_tokens=1, token_dim=2, hidden_dim=1, num_experts=2)
    # router: logits [s_1, -s_1] + [0, 0.5] -> G = [relu(s_1), relu(0.5 - s_1)]
    _set(moe.router, [[[1.0, -1.0], [0.0, 0.0]]])  # [T, D, E]
    _set(moe.router_bias, [0.0, 0.5])
    # expert 1: GELU(s_1 + s_2) · [1, 2];  expert 2: GELU(s_2) · [3, 0] + [1, 1]
    _set(moe.w1, [[[1.0, 0.0], [1.0, 1.0]]])  # [T, D, E·D_h]: column i is expert i's W1
    _set(moe.b1, [0.0, 0.0])
    _set(moe.w2, [[[1.0, 2.0]], [[3.0, 0.0]]])  # [T·E, D_h, D]
    _set(moe.b2, [[0.0, 0.0], [1.0, 1.0]])
    return moe


def test_moe_relu_routing_golden():
    moe = _golden_moe()
    s = torch.tensor([[[2.0, -1.0]], [[0.25, 1.0]], [[-1.0, 3.0]]])  # [B=3, T=1, D=2]
    # ex 1: G = [2, relu(-1.5)] = [2, 0]: only expert 1, 2 · GELU(1) · [1, 2]
    # ex 2: G = [0.25, 0.25]: 0.25 · (GELU(1.25) · [1, 2] + GELU(1) · [3, 0] + [1, 1])
    # ex 3: G = [0, 1.5]: only expert 2, 1.5 · (GELU(3) · [3, 0] + [1, 1])
    _assert_close(moe.gates(s), [[[2.0, 0.0]], [[0.25, 0.25]], [[0.0, 1.5]]])
    expected = [
        [2 * gelu(1.0), 4 * gelu(1.0)],
        [0.25 * (gelu(1.25) + 3 * gelu(1.0) + 1), 0.25 * (2 * gelu(1.25) + 1)],
        [1.5 * (3 * gelu(3.0) + 1), 1.5],
    ]
    assert expected[0] == pytest.approx([1.6826895, 3.3653790], abs=1e-6)
    _assert_close(moe(s), [[row] for row in expected], atol=1e-5)


def test_moe_expert_with_zero_gate_contributes_nothing():
    moe = _golden_moe()
    s = torch.tensor([[[2.0, -1.0]]])  # G = [2, 0]
    before = moe(s)
    with torch.no_grad():  # change expert 2 completely
        moe.w1[0, :, 1] = torch.tensor([5.0, -7.0])
        moe.w2[1] = 11.0
        moe.b2[0, 1] = -3.0
    assert torch.equal(moe(s), before)
    # ... while an example that routes to expert 2 does change
    s2 = torch.tensor([[[-1.0, 3.0]]])
    assert not torch.allclose(moe(s2), _golden_moe()(s2))


def test_moe_single_expert_with_unit_gate_is_the_per_token_ffn():
    torch.manual_seed(0)
    moe = PerTokenSparseMoE(num_tokens=3, token_dim=4, hidden_dim=5, num_experts=1)
    ffn = PerTokenFFN(num_tokens=3, token_dim=4, hidden_dim=5)
    _set(moe.router, torch.zeros(3, 4, 1))
    _set(moe.router_bias, torch.ones(3, 1, 1))  # G = relu(1) = 1 for every token
    _set(ffn.w1, moe.w1)
    _set(ffn.b1, moe.b1)
    _set(ffn.w2, moe.w2)
    _set(ffn.b2, moe.b2)
    s = torch.randn(2, 3, 4)
    torch.testing.assert_close(moe(s), ffn(s))


# --------------------------------------------------------------------------- naive reference


def _layer_norm(v: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    mean = sum(v) / len(v)
    var = sum((e - mean) ** 2 for e in v) / len(v)
    return torch.stack([(e - mean) / torch.sqrt(var + norm.eps) for e in v]) * norm.weight + norm.bias


def _reference(net, e: torch.Tensor) -> torch.Tensor:
    """One example ``e [F, D_e]``, straight from the equations, with loops."""
    t_count, d = net.num_tokens, net.token_dim
    # tokens: contiguous field groups, each through its own map
    tokens, field, tok = [], 0, net.tokenizer
    group_weights = [w for weight in tok.weights for w in weight]  # in token order (larger groups first)
    for t, size in enumerate(tok.groups):
        chunk = torch.cat([e[f] for f in range(field, field + size)])
        tokens.append(torch.stack([torch.dot(chunk, group_weights[t][:, j]) for j in range(d)]) + tok.bias[t])
        field += size
    c = d // t_count
    for ffn, mix_norm, ffn_norm in zip(net.ffns, net.mix_norms, net.ffn_norms):
        # mixing: token h = [head h of token 1, ..., head h of token T]
        mixed = [torch.cat([tokens[t][h * c : (h + 1) * c] for t in range(t_count)]) for h in range(t_count)]
        s = [_layer_norm(mixed[t] + tokens[t], mix_norm) for t in range(t_count)]
        tokens = [_layer_norm(_reference_ffn(ffn, t, s[t]) + s[t], ffn_norm) for t in range(t_count)]
    return torch.cat(tokens)


def _mlp(w1, b1, w2, b2, s):
    h = torch.stack([gelu_t(torch.dot(s, w1[:, j]) + b1[j]) for j in range(w1.shape[1])])
    return torch.stack([torch.dot(h, w2[:, j]) for j in range(w2.shape[1])]) + b2


def gelu_t(v: torch.Tensor) -> torch.Tensor:
    return v * 0.5 * (1.0 + torch.erf(v / math.sqrt(2.0)))


def _reference_ffn(ffn, t: int, s: torch.Tensor) -> torch.Tensor:
    if isinstance(ffn, PerTokenFFN):
        return _mlp(ffn.w1[t], ffn.b1[t, 0], ffn.w2[t], ffn.b2[t, 0], s)
    h, e_count = ffn.hidden_dim, ffn.num_experts
    out = torch.zeros_like(s)
    for i in range(e_count):
        gate = torch.relu(torch.dot(s, ffn.router[t][:, i]) + ffn.router_bias[t, 0, i])
        w1 = ffn.w1[t][:, i * h : (i + 1) * h]
        expert = _mlp(w1, ffn.b1[t, 0, i * h : (i + 1) * h], ffn.w2[t * e_count + i], ffn.b2[t, i, 0], s)
        out = out + gate * expert
    return out


def _randomise(net: nn.Module) -> None:
    with torch.no_grad():  # biases and LayerNorm affine parameters too, not only the init's zeros/ones
        for param in net.parameters():
            param.normal_(0.0, 0.5)


@pytest.mark.parametrize(
    "fields, tokens, token_dim, hidden, experts",
    [(7, 3, 6, 5, None), (4, 4, 8, 3, None), (5, 2, 4, 3, 3), (6, 3, 3, 2, 1)],
)
def test_matches_naive_reference(fields, tokens, token_dim, hidden, experts):
    torch.manual_seed(0)
    if experts is None:
        net = RankMixer(fields, 2, tokens, token_dim, hidden, num_layers=2)
    else:
        net = SparseMoERankMixer(fields, 2, tokens, token_dim, hidden, num_layers=2, num_experts=experts)
    _randomise(net)
    x = torch.randn(3, fields, 2)
    expected = torch.stack([_reference(net, e) for e in x])
    torch.testing.assert_close(net(x), expected, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- shapes, gradients


@pytest.mark.parametrize("experts", [None, 3])
def test_shapes_and_every_parameter_gets_a_gradient(experts):
    torch.manual_seed(0)
    if experts is None:
        net = RankMixer(num_fields=7, dim=3, num_tokens=4, token_dim=8, hidden_dim=12, num_layers=2)
    else:
        net = SparseMoERankMixer(7, 3, 4, 8, 6, num_layers=2, num_experts=experts)
    out = net(torch.randn(5, 7, 3))
    assert out.shape == (5, 32) and net.out_dim == 32
    out.square().sum().backward()
    for name, param in net.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "factory",
    [
        lambda: RankMixer(4, 2, num_tokens=5, token_dim=10, hidden_dim=4, num_layers=1),  # T > F
        lambda: RankMixer(4, 2, num_tokens=3, token_dim=10, hidden_dim=4, num_layers=1),  # D % T != 0
        lambda: RankMixer(4, 2, num_tokens=2, token_dim=4, hidden_dim=0, num_layers=1),
        lambda: RankMixer(4, 2, num_tokens=2, token_dim=4, hidden_dim=4, num_layers=0),
        lambda: SparseMoERankMixer(4, 2, 2, 4, 4, num_layers=1, num_experts=0),
    ],
)
def test_invalid_sizes(factory):
    with pytest.raises(ValueError):
        factory()


# --------------------------------------------------------------------------- FLOPs


def test_flops_by_hand():
    dense = RankMixer(num_fields=5, dim=3, num_tokens=2, token_dim=4, hidden_dim=7, num_layers=2)
    # tokeniser: 2·F·D_e·D = 2·5·3·4 = 120 matmul, bias T·D = 8
    # block: FFN 2·T·D·D_h·2 = 224 matmul; b1 + GELU 5·T·D_h = 70, b2 T·D = 8;
    #        two residual adds and LayerNorms 2·6·T·D = 96; the mixing 0
    assert (dense.flops().matmul, dense.flops().elementwise) == (120 + 2 * 224, 8 + 2 * (70 + 8 + 96))
    moe = SparseMoERankMixer(5, 3, num_tokens=2, token_dim=4, hidden_dim=3, num_layers=2, num_experts=2)
    # block: router 2·T·D·E = 32 matmul, bias + ReLU 2·T·E = 8; experts (T·E = 4 FFNs of D_h = 3):
    #        4·4·4·3 = 192 matmul, 5·4·3 + 4·4 = 76; combine 2·T·E·D = 32 matmul; norms 96
    assert (moe.flops().matmul, moe.flops().elementwise) == (120 + 2 * (32 + 192 + 32), 8 + 2 * (8 + 76 + 96))


@pytest.mark.parametrize(
    "fields, tokens, token_dim, hidden, experts, batch",
    [
        (7, 3, 6, 5, None, 4),  # two group sizes in the tokeniser
        (4, 4, 4, 1, None, 1),  # T = F, D_h = 1, batch 1
        (5, 1, 3, 2, None, 2),  # one token
        (5, 2, 4, 3, 1, 3),  # one expert
        (6, 3, 6, 2, 4, 1),
    ],
)
def test_matmul_flops_match_flop_counter(fields, tokens, token_dim, hidden, experts, batch):
    torch.manual_seed(0)
    if experts is None:
        net = RankMixer(fields, 2, tokens, token_dim, hidden, num_layers=2)
    else:
        net = SparseMoERankMixer(fields, 2, tokens, token_dim, hidden, num_layers=2, num_experts=experts)
    with FlopCounterMode(display=False) as counter:
        net(torch.randn(batch, fields, 2))
    assert counter.get_total_flops() == net.flops().matmul * batch


# --------------------------------------------------------------------------- config and family


def test_config_validation():
    with pytest.raises(ConfigError, match="token_dim"):
        RankMixerConfig(token_dim=0)
    with pytest.raises(ConfigError, match="num_experts"):
        SparseMoERankMixerConfig(num_experts=0)
    with pytest.raises(ConfigError, match="ffn_ratio"):
        model_config_from_dict({"preset": "rankmixer", "interaction": {"ffn_ratio": 0}})
    with pytest.raises(ConfigError, match="num_experts"):
        # the dense family has no experts
        model_config_from_dict({"preset": "rankmixer", "interaction": {"num_experts": 4}})


def test_effective_sizes_fit_any_schema():
    config = RankMixerConfig(num_tokens=8, token_dim=64, ffn_ratio=4.0)
    assert effective_sizes(config, 39) == (8, 64, 256)
    # 6 fields: 6 tokens, D rounded up to a multiple of 6 (66: 6 heads of width 11)
    assert effective_sizes(config, 6) == (6, 66, 264)
    assert effective_sizes(RankMixerConfig(num_tokens=4, token_dim=10, ffn_ratio=0.5), 20) == (4, 12, 6)
    model = create_model(get_preset("rankmixer"), _spec(6))
    assert (model.interaction.num_tokens, model.interaction.token_dim) == (6, 66)


def test_presets_use_the_papers_head_and_the_moe_variant():
    dense, moe = get_preset("rankmixer"), get_preset("rankmixer_moe")
    assert dense.head.structure == moe.head.structure == "stacked"  # pooled tokens into task towers
    model = create_model(moe, _spec(10))
    assert isinstance(model.interaction, SparseMoERankMixer)
    assert model.interaction.num_experts == moe.interaction.num_experts


# --------------------------------------------------------------------------- matched FLOPs


def _spec(num_fields: int) -> FeatureSpec:
    return FeatureSpec(categorical=tuple(CategoricalField(f"f{i}", 3) for i in range(num_fields)))


def _cost(name: str, config, fields: int, dim: int) -> int:
    tokens, token_dim, hidden = effective_sizes(config, fields)
    experts = getattr(config, "num_experts", None)
    return rankmixer_flops(fields, dim, tokens, token_dim, hidden, config.num_layers, experts).total


@pytest.mark.parametrize("name", ["rankmixer", "rankmixer_moe"])
@pytest.mark.parametrize("fields, dim", [(10, 10), (39, 16)])
def test_width_sets_token_dim_and_ffn_ratio_with_cost_non_decreasing(name, fields, dim):
    family = get_family(name)
    base = get_preset(name).interaction
    costs = []
    for width in range(1, 300):
        config = family.with_width(base, width, fields, dim)
        tokens, token_dim, hidden = effective_sizes(config, fields)
        assert token_dim == config.token_dim and token_dim % tokens == 0  # D = m·T, no rounding
        assert hidden <= 4 * token_dim  # FFN ratio (of each expert) <= the paper's k = 4
        costs.append(_cost(name, config, fields, dim))
        if width % 50 == 0:  # resizing a resized config gives the same config
            assert family.with_width(config, width, fields, dim) == config
    assert costs == sorted(costs)
    steps = [b / a - 1 for a, b in zip(costs, costs[1:]) if a >= 50_000]
    assert steps and max(steps) < 0.06  # every budget above 50k within ±3% by width alone


@pytest.mark.parametrize("name", ["rankmixer", "rankmixer_moe"])
@pytest.mark.parametrize("fields, dim", [(10, 10), (39, 16)])
@pytest.mark.parametrize("budget", [50_000, 200_000, 1_000_000, 3_000_000])
def test_match_budget(name, fields, dim, budget):
    base = get_preset(name).replace(embedding_dim=dim)
    spec = _spec(fields)
    config = match_budget(base, spec, budget)
    flops = interaction_flops(config, spec).total
    assert abs(flops / budget - 1) <= 0.03, (config.interaction, flops)
    # met by the width alone: tokens, blocks, experts and the head are as configured
    assert config.interaction.num_layers == base.interaction.num_layers
    assert config.interaction.num_tokens == base.interaction.num_tokens
    assert getattr(config.interaction, "num_experts", None) == getattr(base.interaction, "num_experts", None)
    assert config.head == base.head
