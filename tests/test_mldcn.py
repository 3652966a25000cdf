"""ML-DCN's masked low-rank cross network: equivalences and reference parity.

* with m ≡ 1 the layer is DCNv2's low-rank cross exactly (bit for bit);
* a naive per-example implementation written straight from the equations in the
  docstring of :class:`MaskedLowRankCrossNet` matches the vectorised layer for
  every combination of its options.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from mldcn.layers import LowRankCrossNet, MaskedLowRankCrossNet
from mldcn.layers.mask import InstanceGuidedMask
from mldcn.layers.mldcn import StaticMask


def _copy_cross_weights(src: LowRankCrossNet, dst: MaskedLowRankCrossNet) -> None:
    with torch.no_grad():
        for layer in range(src.num_layers):
            dst.down[layer].weight.copy_(src.down[layer].weight)  # V^T
            dst.up[layer].weight.copy_(src.up[layer].weight)  # U
            dst.up[layer].bias.copy_(src.up[layer].bias)  # b


SHAPES = [  # (B, F, D, num_layers, rank)
    (1, 1, 1, 1, 1),
    (3, 2, 3, 2, 4),
    (5, 4, 2, 3, 2),
    (2, 3, 4, 4, 12),  # rank > d
]


@pytest.mark.parametrize("batch, fields, dim, num_layers, rank", SHAPES)
def test_no_mask_equals_lowrank_cross_exactly(batch, fields, dim, num_layers, rank):
    torch.manual_seed(0)
    d = fields * dim
    reference = LowRankCrossNet(d, num_layers, rank)
    # make the bias non-zero so that it is really compared
    with torch.no_grad():
        for up in reference.up:
            up.bias.normal_()
    masked = MaskedLowRankCrossNet(d, num_layers, rank, mask_kind="none", layer_norm="none")
    assert len(masked.masks) == 0
    _copy_cross_weights(reference, masked)
    x = torch.randn(batch, fields, dim)
    assert torch.equal(masked(x), reference(x))


@pytest.mark.parametrize("batch, fields, dim, num_layers, rank", SHAPES)
@pytest.mark.parametrize("mask_site", ["rank", "input", "output"])
@pytest.mark.parametrize("mask_source", ["x0", "xl"])
def test_instance_mask_with_zero_w2_equals_lowrank_cross_exactly(
    batch, fields, dim, num_layers, rank, mask_site, mask_source
):
    torch.manual_seed(1)
    d = fields * dim
    reference = LowRankCrossNet(d, num_layers, rank)
    with torch.no_grad():
        for up in reference.up:
            up.bias.normal_()
    masked = MaskedLowRankCrossNet(
        d,
        num_layers,
        rank,
        mask_kind="instance",
        mask_source=mask_source,
        mask_site=mask_site,
        mask_activation="identity",
        layer_norm="none",
    )
    _copy_cross_weights(reference, masked)
    # at initialisation c2 = 1; W2 is small but not 0. Zero it: the mask is then 1 exactly
    for mask in masks_of(masked):
        assert torch.equal(mask.output.bias, torch.ones_like(mask.output.bias))
        with torch.no_grad():
            mask.output.weight.zero_()
    x = torch.randn(batch, fields, dim)
    assert torch.equal(masked(x), reference(x))


@pytest.mark.parametrize("mask_activation", ["identity", "2sigmoid"])
@pytest.mark.parametrize("share_mask", [False, True])
def test_static_mask_at_init_equals_lowrank_cross_exactly(mask_activation, share_mask):
    torch.manual_seed(2)
    reference = LowRankCrossNet(6, 3, 2)
    masked = MaskedLowRankCrossNet(
        6, 3, 2, mask_kind="static", mask_activation=mask_activation, share_mask=share_mask,
        layer_norm="none",
    )
    _copy_cross_weights(reference, masked)
    x = torch.randn(4, 6)
    # a static mask starts at g(g^-1(1)) = 1 exactly (identity: 1; 2sigmoid: 2 * sigmoid(0))
    assert torch.equal(masked(x), reference(x))


def test_untrained_mldcn_is_close_to_lowrank_cross():
    # W2 ~ N(0, 0.01^2) at init: every mask is 1 + O(0.01), so the layer is near DCNv2
    # low-rank but not equal to it
    torch.manual_seed(3)
    reference = LowRankCrossNet(8, 2, 4)
    masked = MaskedLowRankCrossNet(8, 2, 4, layer_norm="none")
    _copy_cross_weights(reference, masked)
    x = torch.randn(16, 8)
    assert not torch.equal(masked(x), reference(x))
    for mask in masks_of(masked):
        m = mask(x)  # s = x0
        assert m.shape == (16, 4)
        assert 0 < (m - 1).abs().max() < 0.1


def masks_of(net: MaskedLowRankCrossNet) -> list[InstanceGuidedMask]:
    return [m for m in net.masks if isinstance(m, InstanceGuidedMask)]


# --------------------------------------------------------------------------- reference parity


def _g(name: str, v: torch.Tensor) -> torch.Tensor:
    """The mask activation g, elementwise, written out."""
    if name == "identity":
        return v
    if name == "sigmoid":
        return 1.0 / (1.0 + torch.exp(-v))
    if name == "2sigmoid":
        return 2.0 / (1.0 + torch.exp(-v))
    if name == "softplus":
        return torch.log(1.0 + torch.exp(v))
    raise AssertionError(name)


def _relu(v: torch.Tensor) -> torch.Tensor:
    return torch.where(v > 0, v, torch.zeros_like(v))


def _layer_norm(v: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float) -> torch.Tensor:
    mean = sum(v[i] for i in range(len(v))) / len(v)
    var = sum((v[i] - mean) ** 2 for i in range(len(v))) / len(v)  # biased, as LayerNorm
    return (v - mean) / torch.sqrt(var + eps) * gamma + beta


@torch.no_grad()
def _mask_value(net: MaskedLowRankCrossNet, layer: int, s: torch.Tensor) -> torch.Tensor:
    """m_l = g(W2_l relu(W1_l s + c1_l) + c2_l), or g(c) for a static mask. Float64, [mask_dim]."""
    mask = net.masks[0 if net.share_mask else layer]
    if isinstance(mask, StaticMask):
        return _g(net.mask_activation, mask.logits.double())
    W1 = mask.hidden.weight.double()  # [t, d_s]
    c1 = mask.hidden.bias.double()
    W2 = mask.output.weight.double()  # [mask_dim, t]
    c2 = mask.output.bias.double()
    hidden = _relu(W1 @ s + c1)  # [t]
    return _g(net.mask_activation, W2 @ hidden + c2)


@torch.no_grad()
def reference_forward(net: MaskedLowRankCrossNet, x: torch.Tensor) -> torch.Tensor:
    """Per example, per layer, from the docstring:

        z_l     = V_l^T x_l
        m_l     = g(W2_l relu(W1_l s + c1_l) + c2_l),  s = x0 or x_l
        x_{l+1} = x0 ⊙ (U_l (m_l ⊙ z_l) + b_l) + x_l      (site "rank")
        site "input":  z_l = V_l^T (m_l ⊙ x_l)
        site "output": x_{l+1} = x0 ⊙ (m_l ⊙ (U_l z_l + b_l)) + x_l
        then LayerNorm(x_{l+1}) if layer_norm == "layer"
    """
    x = x.detach().reshape(x.shape[0], -1).double()
    outputs = []
    for example in range(x.shape[0]):
        x0 = x[example]  # [d]
        xl = x0
        for layer in range(net.num_layers):
            Vt = net.down[layer].weight.double()  # [r, d]  (V^T)
            U = net.up[layer].weight.double()  # [d, r]
            b = net.up[layer].bias.double()  # [d]
            m = None
            if net.mask_kind != "none":
                s = x0 if net.mask_source == "x0" else xl
                m = _mask_value(net, layer, s)
            if m is not None and net.mask_site == "input":
                assert m.shape == xl.shape
                z = Vt @ (m * xl)
            else:
                z = Vt @ xl
            if m is not None and net.mask_site == "rank":
                assert m.shape == z.shape
                z = m * z
            cross = U @ z + b
            if m is not None and net.mask_site == "output":
                assert m.shape == cross.shape
                cross = m * cross
            xl = x0 * cross + xl
            if len(net.norms):
                norm = net.norms[layer]
                xl = _layer_norm(xl, norm.weight.double(), norm.bias.double(), norm.eps)
        outputs.append(xl)
    return torch.stack(outputs)


def _randomise(net: torch.nn.Module, std: float = 0.4) -> None:
    with torch.no_grad():
        for param in net.parameters():
            param.normal_(0.0, std)


OPTIONS = list(
    itertools.product(
        ["instance", "static"],  # mask_kind
        ["x0", "xl"],  # mask_source
        ["rank", "input", "output"],  # mask_site
        ["identity", "sigmoid", "2sigmoid", "softplus"],  # mask_activation
        [False, True],  # share_mask
        ["none", "layer"],  # layer_norm
    )
)


def test_option_grid_is_complete():
    assert len(OPTIONS) == 2 * 2 * 3 * 4 * 2 * 2


@pytest.mark.parametrize(
    "mask_kind, mask_source, mask_site, mask_activation, share_mask, layer_norm", OPTIONS
)
def test_matches_naive_reference(mask_kind, mask_source, mask_site, mask_activation, share_mask, layer_norm):
    torch.manual_seed(0)
    fields, dim, num_layers, rank = 3, 2, 3, 2
    net = MaskedLowRankCrossNet(
        fields * dim,
        num_layers,
        rank,
        mask_kind=mask_kind,
        mask_source=mask_source,
        mask_site=mask_site,
        mask_activation=mask_activation,
        hidden_ratio=1.5,  # t = 3
        share_mask=share_mask,
        layer_norm=layer_norm,
    )
    assert len(net.masks) == (1 if share_mask else num_layers)
    assert len(net.norms) == (num_layers if layer_norm == "layer" else 0)
    _randomise(net)
    x = torch.randn(4, fields, dim)

    # the mask is really not 1 (else the test could not tell a missing mask)
    s = x.flatten(1)[0].double()
    m = _mask_value(net, 0, s)
    assert (m - 1).abs().max() > 0.05

    expected = reference_forward(net, x).float()
    actual = net(x)
    assert actual.shape == (4, fields * dim)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mask_source", ["x0", "xl"])
def test_mask_source_matters(mask_source):
    # x0 vs xl masks give different outputs with the same weights (after layer 1)
    torch.manual_seed(0)
    net = MaskedLowRankCrossNet(6, 2, 2, mask_source=mask_source, layer_norm="none")
    _randomise(net)
    other = MaskedLowRankCrossNet(6, 2, 2, mask_source="xl" if mask_source == "x0" else "x0", layer_norm="none")
    other.load_state_dict(net.state_dict())
    x = torch.randn(3, 6)
    assert not torch.allclose(net(x), other(x))


# --------------------------------------------------------------------------- invalid options


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mask_kind": "dynamic"},
        {"mask_source": "x1"},
        {"mask_site": "hidden"},
        {"mask_activation": "relu"},
        {"mask_activation": "tanh"},
        {"layer_norm": "batch"},
        {"hidden_ratio": 0.0},
        {"hidden_ratio": -1.0},
        {"rank": 0},
        {"num_layers": 0},
        {"in_dim": 0},
    ],
)
def test_invalid_options_raise(kwargs):
    arguments = {"in_dim": 6, "num_layers": 2, "rank": 2, **kwargs}
    with pytest.raises(ValueError):
        MaskedLowRankCrossNet(**arguments)


def test_invalid_option_message_names_the_option():
    with pytest.raises(ValueError, match="mask_site"):
        MaskedLowRankCrossNet(6, 2, 2, mask_site="everywhere", layer_norm="none")


# --------------------------------------------------------------------------- structure


@pytest.mark.parametrize("mask_site, mask_dim", [("rank", 2), ("input", 6), ("output", 6)])
def test_mask_width_follows_site(mask_site, mask_dim):
    net = MaskedLowRankCrossNet(6, 2, 2, mask_site=mask_site, hidden_ratio=2.0, layer_norm="none")
    assert net.mask_dim == mask_dim
    mask = net.masks[0]
    assert mask.hidden.in_features == 6  # d_s = d
    assert mask.hidden.out_features == 4  # t = hidden_ratio * r
    assert mask.output.out_features == mask_dim


def test_shared_x0_mask_is_evaluated_once():
    torch.manual_seed(0)
    net = MaskedLowRankCrossNet(6, 3, 2, share_mask=True, mask_source="x0", layer_norm="none")
    calls = []
    net.masks[0].register_forward_hook(lambda module, inputs, output: calls.append(1))
    net(torch.randn(2, 6))
    assert len(calls) == 1
    net_xl = MaskedLowRankCrossNet(6, 3, 2, share_mask=True, mask_source="xl", layer_norm="none")
    calls.clear()
    net_xl.masks[0].register_forward_hook(lambda module, inputs, output: calls.append(1))
    net_xl(torch.randn(2, 6))
    assert len(calls) == 3
