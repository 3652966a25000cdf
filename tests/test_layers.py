"""Golden tests by hand for mldcn.layers.

Each test builds a layer on tiny inputs, sets its weights to constants under
``torch.no_grad()``, and compares with numbers worked out on paper (the arithmetic
is in the comments). The docstring examples of every layer module are run as well.
"""

from __future__ import annotations

import doctest
import importlib
import math
import pkgutil

import pytest
import torch
from golden import assert_close as _assert_close
from golden import set_weights as _set
from torch import nn

import mldcn.layers
from mldcn.features import CategoricalField, FeatureSpec, NumericField, SequenceField
from mldcn.layers import (
    MLP,
    CrossNet,
    FeatureEmbedding,
    FlattenFields,
    InstanceGuidedMask,
    LowRankCrossNet,
    MaskBlock,
    MaskedLowRankCrossNet,
    MixtureCrossNet,
    ParallelHead,
    ParallelMaskNet,
    SerialMaskNet,
    StackedHead,
)

# --------------------------------------------------------------------------- docstrings

LAYER_MODULES = sorted(
    info.name for info in pkgutil.iter_modules(mldcn.layers.__path__, prefix="mldcn.layers.")
)


def test_layer_modules_found():
    # every file in layers/ is doctested; a new file is picked up automatically
    assert {"mldcn.layers.cross", "mldcn.layers.mask", "mldcn.layers.mldcn"} <= set(LAYER_MODULES)


@pytest.mark.parametrize("module_name", LAYER_MODULES)
def test_docstring_examples(module_name):
    torch.manual_seed(0)
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, verbose=False, report=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {module_name}"


def test_docstring_examples_exist():
    # the layers that teach with an example really have one (so the doctest above runs something)
    attempted = sum(
        doctest.testmod(importlib.import_module(name), verbose=False, report=False).attempted
        for name in LAYER_MODULES
    )
    assert attempted >= 10


# --------------------------------------------------------------------------- embedding


def _embedding_spec() -> FeatureSpec:
    return FeatureSpec(
        categorical=(CategoricalField("a", 3), CategoricalField("b", 2)),
        numeric=(NumericField("p"),),
        sequence=(SequenceField("s", 4, 3), SequenceField("t", 3, 2)),
    )


def test_feature_embedding_golden():
    emb = FeatureEmbedding(_embedding_spec(), dim=2)
    # fused categorical table, 3 + 2 = 5 rows: row i = [i, 10 + i]; field b starts at row 3
    _set(emb.categorical_table, [[i, 10 + i] for i in range(5)])
    _set(emb.numeric_weight, [[0.5, -1.0]])
    # fused sequence table, 4 + 3 = 7 rows: row j = [j, 2j], except the padding rows
    # (row 0 of s, row 4 of t) hold 100 to show padding is never read into the mean
    seq_rows = [[j, 2 * j] for j in range(7)]
    seq_rows[0] = [100.0, 100.0]
    seq_rows[4] = [100.0, 100.0]
    _set(emb.sequence_table, seq_rows)

    categorical = torch.tensor([[2, 1], [0, 0]])
    numeric = torch.tensor([[3.0], [-2.0]])
    sequence = torch.tensor(
        [
            [[1, 3, 0], [2, 0, 0]],  # s: mean(rows 1, 3); t: row 4 + 2 = 6
            [[0, 0, 0], [1, 1, 0]],  # s: all padding -> 0; t: mean(row 5, row 5)
        ]
    )
    out = emb(categorical, numeric, sequence)
    assert out.shape == (2, 5, 2)  # [B, F, D], F = 2 + 1 + 2
    expected = [
        [
            [2, 12],  # a = 2 -> row 0 + 2
            [4, 14],  # b = 1 -> row 3 + 1
            [1.5, -3],  # 3 * [0.5, -1]
            [2, 4],  # ([1, 2] + [3, 6]) / 2
            [6, 12],  # row 6
        ],
        [
            [0, 10],  # a = 0 -> row 0
            [3, 13],  # b = 0 -> row 3
            [-1, 2],  # -2 * [0.5, -1]
            [0, 0],  # all padding
            [5, 10],  # ([5, 10] + [5, 10]) / 2
        ],
    ]
    _assert_close(out, expected)
    assert emb.output_dim == 10


def test_feature_embedding_padding_gets_no_gradient():
    emb = FeatureEmbedding(_embedding_spec(), dim=2)
    out = emb(torch.tensor([[0, 0]]), torch.tensor([[1.0]]), torch.tensor([[[0, 0, 0], [1, 0, 0]]]))
    out.sum().backward()
    grad = emb.sequence_table.grad
    # rows 0 (padding of s) and 4 (padding of t) are masked out; row 5 (t id 1) is used
    assert torch.equal(grad[0], torch.zeros(2))
    assert torch.equal(grad[4], torch.zeros(2))
    assert torch.equal(grad[5], torch.ones(2))


def test_feature_embedding_requires_sequence_when_spec_has_one():
    emb = FeatureEmbedding(_embedding_spec(), dim=2)
    with pytest.raises(ValueError, match="sequence"):
        emb(torch.tensor([[0, 0]]), torch.tensor([[1.0]]))


def test_feature_embedding_bytes_and_flops():
    emb = FeatureEmbedding(_embedding_spec(), dim=2)
    # rows read: 2 categorical + 3 + 2 sequence slots = 7 rows of 2 floats of 4 bytes
    assert emb.bytes_read() == 7 * 2 * 4
    # numeric: 1 field * 2; pooling: per field D * (2L + 1) with L = 3 (padded length)
    assert emb.flops().elementwise == 1 * 2 + 2 * 2 * (2 * 3 + 1)
    assert emb.flops().matmul == 0


# --------------------------------------------------------------------------- MLP


def test_mlp_golden():
    mlp = MLP(2, (2, 1))
    _set(mlp.layers[0].weight, [[1, 2], [-1, 1]])
    _set(mlp.layers[0].bias, [0.5, -0.5])
    _set(mlp.layers[2].weight, [[1, -2]])
    _set(mlp.layers[2].bias, [1])
    x = torch.tensor([[1.0, 1.0], [-1.0, 2.0]])
    # ex 1: [1+2+0.5, -1+1-0.5] = [3.5, -0.5] -> relu [3.5, 0] -> 3.5 - 0 + 1 = 4.5 -> relu 4.5
    # ex 2: [-1+4+0.5, 1+2-0.5] = [3.5, 2.5] -> 3.5 - 5 + 1 = -0.5 -> relu 0
    _assert_close(mlp(x), [[4.5], [0.0]])


def test_mlp_batch_norm_eval():
    mlp = MLP(2, (2,), batch_norm=True)
    linear, bn = mlp.layers[0], mlp.layers[1]
    assert isinstance(bn, nn.BatchNorm1d)
    _set(linear.weight, [[1, 2], [-1, 1]])
    _set(linear.bias, [0.5, -0.5])
    _set(bn.running_mean, [1.0, 0.0])
    _set(bn.running_var, [4.0, 1.0])
    _set(bn.weight, [2.0, 1.0])
    _set(bn.bias, [0.0, 1.0])
    bn.eps = 0.0
    mlp.eval()
    # linear: [3.5, -0.5]; BN: [(3.5-1)/2*2 + 0, (-0.5-0)/1*1 + 1] = [2.5, 0.5]; relu keeps both
    _assert_close(mlp(torch.tensor([[1.0, 1.0]])), [[2.5, 0.5]])


def test_mlp_empty_is_identity_and_dropout_is_off_in_eval():
    x = torch.tensor([[1.0, -2.0, 3.0]])
    assert torch.equal(MLP(3)(x), x)
    assert MLP(3).out_dim == 3
    mlp = MLP(3, (4,), dropout=0.5).eval()
    torch.manual_seed(0)
    assert torch.equal(mlp(x), mlp(x))


# --------------------------------------------------------------------------- DCNv2 cross


def test_crossnet_full_rank_golden():
    net = CrossNet(in_dim=3, num_layers=2)
    for linear in net.weights:
        _set(linear.weight, torch.ones(3, 3))
        _set(linear.bias, [0, 0, 1])
    x0 = torch.tensor([[1.0, 2.0, 3.0]])
    # layer 1: W x0 = [6, 6, 6]; + b = [6, 6, 7]; x0 ⊙ = [6, 12, 21]; + x0 = [7, 14, 24]
    # layer 2: W x1 = [45, 45, 45]; + b = [45, 45, 46]; x0 ⊙ = [45, 90, 138]; + x1 = [52, 104, 162]
    _assert_close(net(x0), [[52.0, 104.0, 162.0]])
    # [B, F, D] input is flattened first
    _assert_close(net(x0.reshape(1, 3, 1)), [[52.0, 104.0, 162.0]])


def test_lowrank_crossnet_golden():
    net = LowRankCrossNet(in_dim=3, num_layers=2, rank=1)
    for down, up in zip(net.down, net.up):
        _set(down.weight, [[1, 0, -1]])  # V^T
        _set(up.weight, [[1], [2], [0]])  # U
        _set(up.bias, [0, 1, 0])  # b
    x0 = torch.tensor([[1.0, 2.0, 3.0]])
    # layer 1: z = 1 - 3 = -2; U z = [-2, -4, 0]; + b = [-2, -3, 0]; x0 ⊙ = [-2, -6, 0]
    #          + x0 = [-1, -4, 3]
    # layer 2: z = -1 - 3 = -4; U z = [-4, -8, 0]; + b = [-4, -7, 0]; x0 ⊙ = [-4, -14, 0]
    #          + x1 = [-5, -18, 3]
    _assert_close(net(x0), [[-5.0, -18.0, 3.0]])


def test_lowrank_equals_full_rank_with_w_equal_u_vt():
    torch.manual_seed(0)
    low = LowRankCrossNet(in_dim=4, num_layers=2, rank=2)
    full = CrossNet(in_dim=4, num_layers=2)
    for down, up, linear in zip(low.down, low.up, full.weights):
        _set(linear.weight, up.weight @ down.weight)  # W = U V^T
        _set(linear.bias, up.bias)
    x = torch.randn(3, 4)
    torch.testing.assert_close(low(x), full(x), atol=1e-5, rtol=1e-5)


def _mixture_golden_weights(net: MixtureCrossNet) -> None:
    # d = 2, r = 1, K = 2, one layer
    _set(net.down[0], [[[1], [0]], [[0], [1]]])  # V_1 = [1, 0]^T, V_2 = [0, 1]^T   [K, d, r]
    _set(net.up[0], [[[1, 1]], [[2, 0]]])  # U_1 = [1, 1]^T, U_2 = [2, 0]^T         [K, r, d]
    _set(net.bias[0], [1, 0])
    _set(net.gates[0].weight, torch.zeros(2, 2))  # equal gates: softmax(0, 0) = [1/2, 1/2]


def test_mixture_crossnet_equal_gates_average_experts():
    net = MixtureCrossNet(2, num_layers=1, rank=1, num_experts=2)
    _mixture_golden_weights(net)
    x0 = torch.tensor([[1.0, 2.0]])
    # E_1: z = 1; U z = [1, 1]; + b = [2, 1]; x0 ⊙ = [2, 2]
    # E_2: z = 2; U z = [4, 0]; + b = [5, 0]; x0 ⊙ = [5, 0]
    # (E_1 + E_2) / 2 = [3.5, 1]; + x0 = [4.5, 3]
    _assert_close(net(x0), [[4.5, 3.0]])


def test_mixture_crossnet_unequal_gates():
    net = MixtureCrossNet(2, num_layers=1, rank=1, num_experts=2)
    _mixture_golden_weights(net)
    _set(net.gates[0].weight, [[math.log(3.0), 0.0], [0.0, 0.0]])
    x0 = torch.tensor([[1.0, 2.0]])
    # gate logits [ln 3 * 1, 0] -> softmax [3/4, 1/4]
    # 3/4 [2, 2] + 1/4 [5, 0] = [2.75, 1.5]; + x0 = [3.75, 3.5]
    _assert_close(net(x0), [[3.75, 3.5]])


def test_mixture_crossnet_nonlinear():
    net = MixtureCrossNet(2, num_layers=1, rank=1, num_experts=2, nonlinear=True, activation="relu")
    _mixture_golden_weights(net)
    _set(net.inner[0], [[[-1]], [[2]]])  # C_1 = -1, C_2 = 2
    x0 = torch.tensor([[1.0, 2.0]])
    # E_1: relu(V^T x) = 1; relu(C 1) = relu(-1) = 0; U 0 + b = [1, 0]; x0 ⊙ = [1, 0]
    # E_2: relu(V^T x) = 2; relu(C 2) = 4; U 4 = [8, 0]; + b = [9, 0]; x0 ⊙ = [9, 0]
    # (E_1 + E_2) / 2 = [5, 0]; + x0 = [6, 2]
    _assert_close(net(x0), [[6.0, 2.0]])


def test_mixture_single_expert_equals_lowrank():
    torch.manual_seed(0)
    mix = MixtureCrossNet(4, num_layers=2, rank=2, num_experts=1)
    low = LowRankCrossNet(4, num_layers=2, rank=2)
    for layer in range(2):
        _set(low.down[layer].weight, mix.down[layer][0].T)
        _set(low.up[layer].weight, mix.up[layer][0].T)
        _set(low.up[layer].bias, mix.bias[layer])
    x = torch.randn(3, 4)
    # one expert: its gate is softmax of one logit = 1
    torch.testing.assert_close(mix(x), low(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "factory",
    [
        lambda: CrossNet(4, 0),
        lambda: LowRankCrossNet(4, 1, 0),
        lambda: LowRankCrossNet(0, 1, 1),
        lambda: MixtureCrossNet(4, 1, 2, num_experts=0),
    ],
)
def test_cross_invalid_sizes(factory):
    with pytest.raises(ValueError):
        factory()


# --------------------------------------------------------------------------- MaskNet


def _golden_mask_weights(mask: InstanceGuidedMask) -> None:
    _set(mask.hidden.weight, [[1, -1], [0, 1]])  # W1
    _set(mask.hidden.bias, [0, -1])  # c1
    _set(mask.output.weight, [[1, 1], [-0.5, 2]])  # W2
    _set(mask.output.bias, [1, 0])  # c2


def test_instance_guided_mask_golden_identity():
    mask = InstanceGuidedMask(2, 2, 2, activation="identity")
    _golden_mask_weights(mask)
    # W1 s + c1 = [3 - 1 + 0, 1 - 1] = [2, 0]; relu [2, 0]
    # W2 h + c2 = [2 + 0 + 1, -1 + 0 + 0] = [3, -1]
    _assert_close(mask(torch.tensor([[3.0, 1.0]])), [[3.0, -1.0]])


def test_instance_guided_mask_golden_sigmoid():
    mask = InstanceGuidedMask(2, 2, 2, activation="sigmoid")
    _golden_mask_weights(mask)
    # sigmoid([3, -1]) = [1 / (1 + e^-3), 1 / (1 + e^1)] = [0.95257413, 0.26894142]
    _assert_close(mask(torch.tensor([[3.0, 1.0]])), [[0.95257413, 0.26894142]])


@pytest.mark.parametrize("activation", ["identity", "2sigmoid", "softplus"])
def test_instance_guided_mask_unit_init(activation):
    torch.manual_seed(0)
    mask = InstanceGuidedMask(5, 4, 3, activation=activation, unit_init=True)
    # the output bias is g^-1(1): g(c2) = 1 exactly
    assert torch.equal(mask.activation(mask.output.bias), torch.ones(3))
    # W2 starts small (N(0, 0.01^2)), so the mask is 1 + O(0.01) for any input ...
    s = torch.randn(64, 5)
    m = mask(s)
    assert m.shape == (64, 3)
    assert (m - 1).abs().max() < 0.2
    assert (m - 1).abs().max() > 0  # ... but W2 is not zero: the mask does depend on s
    # ... exactly 1 where the hidden layer is 0 (zero input, c1 = 0) ...
    assert torch.equal(mask(torch.zeros(2, 5)), torch.ones(2, 3))
    # ... and exactly 1 for every input once W2 is 0
    with torch.no_grad():
        mask.output.weight.zero_()
    assert torch.equal(mask(s), torch.ones(64, 3))


def test_instance_guided_mask_sigmoid_unit_init_starts_at_half():
    # sigmoid cannot reach 1; its "unit" init starts at g(0) = 1/2 (documented)
    mask = InstanceGuidedMask(2, 2, 2, activation="sigmoid", unit_init=True)
    assert torch.equal(mask.output.bias, torch.zeros(2))
    assert torch.equal(mask(torch.zeros(1, 2)), torch.full((1, 2), 0.5))


def test_maskblock_golden_without_layer_norm():
    block = MaskBlock(emb_dim=2, in_dim=2, out_dim=2, layer_norm=False)
    _set(block.mask.hidden.weight, torch.zeros(2, 2))
    _set(block.mask.hidden.bias, [0, 0])
    _set(block.mask.output.weight, torch.zeros(2, 2))
    _set(block.mask.output.bias, [2, 0.5])  # mask = [2, 0.5] for every e
    _set(block.projection.weight, [[1, 1], [1, -1]])
    e = torch.tensor([[7.0, -7.0]])
    h = torch.tensor([[1.0, 4.0]])
    # mask ⊙ h = [2, 2]; W [2, 2] = [4, 0]; relu [4, 0]
    _assert_close(block(e, h), [[4.0, 0.0]])


def test_maskblock_golden_with_layer_norm():
    block = MaskBlock(emb_dim=2, in_dim=2, out_dim=3, layer_norm=True)
    _set(block.mask.hidden.weight, [[1, 0], [0, 1]])  # hidden width = 1.0 * in_dim = 2
    _set(block.mask.hidden.bias, [0, 0])
    _set(block.mask.output.weight, [[1, 0], [0, 0]])
    _set(block.mask.output.bias, [0, 2])  # mask = [relu(e_1), 2]
    _set(block.projection.weight, [[1, 0], [0, 1], [1, 1]])
    block.norm.eps = 0.0
    e = torch.tensor([[2.0, -5.0]])
    h = torch.tensor([[1.0, 1.0]])
    # mask = [2, 2]; mask ⊙ h = [2, 2]; W = [2, 2, 4]
    # LN: mean 8/3, var ((2/3)^2 + (2/3)^2 + (4/3)^2) / 3 = 8/9, std 2√2/3
    #     -> [-2/3, -2/3, 4/3] / (2√2/3) = [-1/√2, -1/√2, √2]; relu -> [0, 0, √2]
    _assert_close(block(e, h), [[0.0, 0.0, math.sqrt(2.0)]])


def test_serial_masknet_shape_and_golden():
    torch.manual_seed(0)
    assert SerialMaskNet(3, 4, block_dims=(8, 6))(torch.randn(5, 3, 4)).shape == (5, 6)

    net = SerialMaskNet(1, 2, block_dims=(2, 1), layer_norm=False, emb_layer_norm=True)
    first, second = net.blocks
    # block 1: mask = c2 = [2, 3]; projection [[1, 1], [0, 1]]
    _set(first.mask.hidden.weight, torch.zeros(2, 2))
    _set(first.mask.hidden.bias, [0, 0])
    _set(first.mask.output.weight, torch.zeros(2, 2))
    _set(first.mask.output.bias, [2, 3])
    _set(first.projection.weight, [[1, 1], [0, 1]])
    # block 2: mask = [relu(e_1), 2]; projection [[0.5, 1]]
    _set(second.mask.hidden.weight, [[1, 0], [0, 1]])
    _set(second.mask.hidden.bias, [0, 0])
    _set(second.mask.output.weight, [[1, 0], [0, 0]])
    _set(second.mask.output.bias, [0, 2])
    _set(second.projection.weight, [[0.5, 1]])
    x = torch.tensor([[[1.0, 3.0]]])  # [B=1, F=1, D=2]
    # LN_EMB([1, 3]) = [-1, 1] * k, k = 1 / sqrt(1 + 1e-5) (mean 2, var 1, eps 1e-5)
    k = 1.0 / math.sqrt(1.0 + 1e-5)
    # block 1: [2, 3] ⊙ [-k, k] = [-2k, 3k]; W -> [k, 3k]; relu [k, 3k]
    # block 2: mask = [relu(1), 2] = [1, 2]; ⊙ [k, 3k] = [k, 6k]; W -> 0.5k + 6k = 6.5k
    _assert_close(net(x), [[6.5 * k]], atol=1e-5)


def test_parallel_masknet_shape_and_golden():
    torch.manual_seed(0)
    assert ParallelMaskNet(3, 4, num_blocks=2, block_dim=5)(torch.randn(5, 3, 4)).shape == (5, 10)

    net = ParallelMaskNet(1, 2, num_blocks=2, block_dim=1, layer_norm=False)
    for block, c2, w in zip(net.blocks, ([1, 1], [2, 0.5]), ([[1, 1]], [[1, -1]])):
        _set(block.mask.hidden.weight, torch.zeros(2, 2))
        _set(block.mask.hidden.bias, [0, 0])
        _set(block.mask.output.weight, torch.zeros(2, 2))
        _set(block.mask.output.bias, c2)
        _set(block.projection.weight, w)
    x = torch.tensor([[[1.0, 2.0]], [[4.0, 2.0]]])  # [B=2, F=1, D=2]
    # ex 1: block 1: [1, 2] -> 1 + 2 = 3;       block 2: [2, 1] -> 2 - 1 = 1
    # ex 2: block 1: [4, 2] -> 6;               block 2: [8, 1] -> 7
    _assert_close(net(x), [[3.0, 1.0], [6.0, 7.0]])
    # a negative projection is cut by the relu: block 2 with x = [0, 4] -> [0, 2] -> -2 -> 0
    _assert_close(net(torch.tensor([[[0.0, 4.0]]])), [[4.0, 0.0]])


# --------------------------------------------------------------------------- ML-DCN layer


def test_masked_lowrank_crossnet_golden_rank_site():
    net = MaskedLowRankCrossNet(in_dim=2, num_layers=1, rank=1, mask_site="rank", layer_norm="none")
    # the mask reads x_l: its W1 is stacked under V^T in one [r + t, d] weight
    _set(net.down[0].weight, [[1, 1], [1, 0]])  # [V^T ; W1], t = r = 1
    _set(net.up[0].weight, [[1], [2]])  # U
    _set(net.up[0].bias, [0, 0])
    mask = net.masks[0]
    _set(mask.hidden_bias, [0])  # c1
    _set(mask.output.weight, [[1]])
    _set(mask.output.bias, [0.5])  # m = relu(x0_1) + 0.5
    x0 = torch.tensor([[2.0, 1.0], [-1.0, 4.0]])
    # ex 1: z = 3; m = 2.5; m z = 7.5; U (m z) = [7.5, 15]; x0 ⊙ = [15, 15]; + x0 = [17, 16]
    # ex 2: z = 3; m = 0.5; m z = 1.5; U = [1.5, 3]; x0 ⊙ = [-1.5, 12]; + x0 = [-2.5, 16]
    _assert_close(net(x0), [[17.0, 16.0], [-2.5, 16.0]])


def test_masked_lowrank_crossnet_golden_output_site_static():
    net = MaskedLowRankCrossNet(
        in_dim=2, num_layers=2, rank=1, mask_kind="static", mask_site="output", share_mask=True,
        layer_norm="none",
    )
    assert len(net.masks) == 1
    for down, up in zip(net.down, net.up):
        _set(down.weight, [[1, 0]])
        _set(up.weight, [[1], [1]])
        _set(up.bias, [0, 1])
    _set(net.masks[0].logits, [2, 0])  # m = [2, 0] (identity), shared by both layers
    x0 = torch.tensor([[1.0, 3.0]])
    # layer 1: z = 1; U z + b = [1, 2]; m ⊙ = [2, 0]; x0 ⊙ = [2, 0]; + x0 = [3, 3]
    # layer 2: z = 3; U z + b = [3, 4]; m ⊙ = [6, 0]; x0 ⊙ = [6, 0]; + x1 = [9, 3]
    _assert_close(net(x0), [[9.0, 3.0]])


# --------------------------------------------------------------------------- heads


def test_parallel_head_golden():
    head = ParallelHead(interaction_dim=1, input_dim=2, hidden=(1,))
    _set(head.deep.layers[0].weight, [[1, 1]])
    _set(head.deep.layers[0].bias, [0])
    _set(head.output.weight, [[2, 3]])
    _set(head.output.bias, [0.5])
    h = torch.tensor([[1.0], [-1.0]])
    x0 = torch.tensor([[1.0, -3.0], [2.0, 1.0]])
    # ex 1: MLP(x0) = relu(1 - 3) = 0; [h ; 0] = [1, 0]; 2 * 1 + 3 * 0 + 0.5 = 2.5
    # ex 2: MLP(x0) = relu(2 + 1) = 3; [-1, 3]; -2 + 9 + 0.5 = 7.5
    out = head(h, x0)
    assert out.shape == (2, 1)  # [B, T]: one task
    _assert_close(out, [[2.5], [7.5]])


def test_parallel_head_without_dnn_reads_only_h():
    head = ParallelHead(interaction_dim=2, input_dim=3, hidden=())
    assert head.output.in_features == 2
    _set(head.output.weight, [[1, -1]])
    _set(head.output.bias, [0.25])
    # 3 - 1 + 0.25 = 2.25; x0 is not read
    _assert_close(head(torch.tensor([[3.0, 1.0]]), torch.full((1, 3), 99.0)), [[2.25]])


def test_stacked_head_golden():
    head = StackedHead(interaction_dim=2, hidden=(2,))
    _set(head.deep.layers[0].weight, [[1, 0], [0, 1]])
    _set(head.deep.layers[0].bias, [0, -1])
    _set(head.output.weight, [[1, 1]])
    _set(head.output.bias, [0])
    h = torch.tensor([[3.0, 0.5], [1.0, 4.0]])
    # ex 1: [3, -0.5] -> relu [3, 0] -> 3;  ex 2: [1, 3] -> 4
    out = head(h, torch.full((2, 7), 99.0))  # x0 is unused
    assert out.shape == (2, 1)
    _assert_close(out, [[3.0], [4.0]])

    linear = StackedHead(interaction_dim=2, hidden=())
    _set(linear.output.weight, [[2, -1]])
    _set(linear.output.bias, [1])
    _assert_close(linear(h, None), [[6.5], [-1.0]])  # 6 - 0.5 + 1; 2 - 4 + 1


def test_flatten_fields():
    x = torch.arange(12.0).reshape(2, 3, 2)
    out = FlattenFields(6)(x)
    assert torch.equal(out, torch.arange(12.0).reshape(2, 6))
    assert FlattenFields(6).flops().total == 0
