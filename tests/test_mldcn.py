"""ML-DCN's masked low-rank cross network: equivalences and reference parity.

* with m ≡ 1 the layer is DCNv2's low-rank cross exactly (bit for bit);
* a naive per-example implementation written straight from the equations in the
  docstring of :class:`MaskedLowRankCrossNet` matches the vectorised layer (which
  stacks V^T and W1 into one product where it can) for every combination of its
  options;
* a state dict of either weight layout (W1 stacked under V^T or apart) loads.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from mldcn.layers import LowRankCrossNet, MaskedLowRankCrossNet
from mldcn.layers.mask import InstanceGuidedMask
from mldcn.layers.mldcn import StackedMask, StaticMask


def _copy_cross_weights(src: LowRankCrossNet, dst: MaskedLowRankCrossNet) -> None:
    with torch.no_grad():
        for layer in range(src.num_layers):
            dst.down[layer].weight[: src.rank].copy_(src.down[layer].weight)  # V^T (W1 stacked below)
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
def test_instance_mask_with_zero_w2_equals_lowrank_cross(
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
    if masked.stacked:
        # z comes out of the stacked product [V^T ; W1] x_l: another GEMM shape, whose kernel
        # may sum in another order (it does for small batches), so equal to float rounding only;
        # the m ≡ 1 identity itself is shown bit for bit by the unstacked options
        torch.testing.assert_close(masked(x), reference(x), rtol=1e-6, atol=1e-6)
    else:
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
    assert masked.stacked  # each layer's W1 sits under its V^T: the mask module reads W1 x_l
    for layer, mask in enumerate(masks_of(masked)):
        m = mask(torch.relu(x @ masked.down[layer].weight[masked.rank :].T + mask.hidden_bias))  # s = x0
        assert m.shape == (16, 4)
        assert 0 < (m - 1).abs().max() < 0.1


def masks_of(net: MaskedLowRankCrossNet) -> list[InstanceGuidedMask | StackedMask]:
    return [m for m in net.masks if isinstance(m, (InstanceGuidedMask, StackedMask))]


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


def _layer_weights(net: MaskedLowRankCrossNet, layer: int) -> dict[str, torch.Tensor]:
    """The weights of the equations for one layer, float64, read from either layout.

    Stacked (``net.stacked``): ``down[l].weight = [V^T ; W1]``, the mask holds c1, W2, c2.
    Unstacked: ``down[l].weight = V^T`` and the mask module holds W1, c1, W2, c2.
    """
    r = net.rank
    down = net.down[layer].weight.detach().double()
    weights = {
        "Vt": down[:r],  # [r, d]  (V^T)
        "U": net.up[layer].weight.detach().double(),  # [d, r]
        "b": net.up[layer].bias.detach().double(),  # [d]
    }
    if net.mask_kind == "none":
        return weights
    mask = net.masks[0 if net.share_mask else layer]
    if isinstance(mask, StaticMask):
        weights["logits"] = mask.logits.detach().double()
        return weights
    if net.stacked:
        assert isinstance(mask, StackedMask) and down.shape[0] == r + net.hidden_dim
        weights["W1"], weights["c1"] = down[r:], mask.hidden_bias.detach().double()
    else:
        assert isinstance(mask, InstanceGuidedMask) and down.shape[0] == r
        weights["W1"], weights["c1"] = mask.hidden.weight.detach().double(), mask.hidden.bias.detach().double()
    weights["W2"] = mask.output.weight.detach().double()  # [mask_dim, t]
    weights["c2"] = mask.output.bias.detach().double()
    return weights


@torch.no_grad()
def _mask_value(net: MaskedLowRankCrossNet, layer: int, s: torch.Tensor) -> torch.Tensor:
    """m_l = g(W2_l relu(W1_l s + c1_l) + c2_l), or g(c) for a static mask. Float64, [mask_dim]."""
    w = _layer_weights(net, layer)
    if "logits" in w:
        return _g(net.mask_activation, w["logits"])
    hidden = _relu(w["W1"] @ s + w["c1"])  # [t]
    return _g(net.mask_activation, w["W2"] @ hidden + w["c2"])


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
            w = _layer_weights(net, layer)
            m = None
            if net.mask_kind != "none":
                s = x0 if net.mask_source == "x0" else xl
                m = _mask_value(net, layer, s)
            if m is not None and net.mask_site == "input":
                assert m.shape == xl.shape
                z = w["Vt"] @ (m * xl)
            else:
                z = w["Vt"] @ xl
            if m is not None and net.mask_site == "rank":
                assert m.shape == z.shape
                z = m * z
            cross = w["U"] @ z + w["b"]
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


#: the whole option grid: every mask kind (none included) × source × site × g × sharing ×
#: LayerNorm × two mask widths (t < r and t > r); the stacked and unstacked layouts both occur
OPTIONS = list(
    itertools.product(
        ["instance", "static", "none"],  # mask_kind
        ["x0", "xl"],  # mask_source
        ["rank", "input", "output"],  # mask_site
        ["identity", "sigmoid", "2sigmoid", "softplus"],  # mask_activation
        [False, True],  # share_mask
        ["none", "layer"],  # layer_norm
        [0.5, 1.5],  # hidden_ratio: t = 2 and 6 with r = 4
    )
)


def test_option_grid_is_complete():
    assert len(OPTIONS) == 3 * 2 * 3 * 4 * 2 * 2 * 2
    stacked = [o for o in OPTIONS if o[0] == "instance" and o[1] == "xl" and not o[4] and o[2] != "input"]
    assert len(stacked) == 2 * 4 * 2 * 2  # rank and output site, every g, LayerNorm, t


@pytest.mark.parametrize(
    "mask_kind, mask_source, mask_site, mask_activation, share_mask, layer_norm, hidden_ratio", OPTIONS
)
def test_matches_naive_reference(
    mask_kind, mask_source, mask_site, mask_activation, share_mask, layer_norm, hidden_ratio
):
    torch.manual_seed(0)
    fields, dim, num_layers, rank = 3, 2, 3, 4
    net = MaskedLowRankCrossNet(
        fields * dim,
        num_layers,
        rank,
        mask_kind=mask_kind,
        mask_source=mask_source,
        mask_site=mask_site,
        mask_activation=mask_activation,
        hidden_ratio=hidden_ratio,
        share_mask=share_mask,
        layer_norm=layer_norm,
    )
    num_masks = 0 if mask_kind == "none" else (1 if share_mask else num_layers)
    assert len(net.masks) == num_masks
    assert len(net.norms) == (num_layers if layer_norm == "layer" else 0)
    assert net.stacked == (mask_kind == "instance" and mask_source == "xl" and not share_mask and mask_site != "input")
    _randomise(net)
    x = torch.randn(4, fields, dim)

    if mask_kind != "none":
        # the mask is really not 1 (else the test could not tell a missing mask)
        s = x.flatten(1)[0].double()
        m = _mask_value(net, 0, s)
        assert (m - 1).abs().max() > 0.05

    expected = reference_forward(net, x).float()
    actual = net(x)
    assert actual.shape == (4, fields * dim)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    # without autograd the element-wise steps run in place and a stacked layer runs
    # [V^T ; W1] x_l as one product (with autograd: two products on the weight's two
    # row blocks): the same values, to the rounding of a different GEMM shape
    for no_autograd in (torch.inference_mode, torch.no_grad):
        with no_autograd():
            inferred = net(x)
        torch.testing.assert_close(inferred, expected, atol=1e-5, rtol=1e-5)
        if net.stacked:
            torch.testing.assert_close(inferred, actual, atol=1e-6, rtol=1e-6)
        else:
            assert torch.equal(inferred, actual)

    # the gradient reaches every weight, W1 inside the stacked one included (on a larger
    # batch: with t = 2 both hidden units of a mask can be cut by the relu for 4 examples)
    net(torch.randn(64, fields, dim)).square().sum().backward()
    for name, param in net.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    if net.stacked:
        assert net.down[0].weight.grad[rank:].abs().sum() > 0  # W1's rows


@pytest.mark.parametrize(
    "mask_source, mask_site, share_mask",
    [("xl", "rank", False), ("xl", "output", False), ("xl", "input", False), ("x0", "rank", True)],
)
def test_unstacked_state_dict_loads_into_either_layout(mask_source, mask_site, share_mask):
    # a state dict as ML-DCN saved it before W1 was stacked under V^T (down.l.weight [r, d],
    # masks.l.hidden.{weight,bias}) loads into the stacked layer with the same outputs, and
    # a stacked one loads back into an unstacked layer (another mask_source, say)
    torch.manual_seed(0)
    kwargs = {"mask_source": mask_source, "mask_site": mask_site, "share_mask": share_mask, "hidden_ratio": 1.5}
    net = MaskedLowRankCrossNet(6, 3, 2, **kwargs)
    _randomise(net)
    x = torch.randn(5, 6)
    state = net.state_dict()
    unstacked = dict(state)
    if net.stacked:
        for layer in range(3):
            stacked = unstacked.pop(f"down.{layer}.weight")
            unstacked[f"down.{layer}.weight"] = stacked[:2].clone()  # V^T
            unstacked[f"masks.{layer}.hidden.weight"] = stacked[2:].clone()  # W1
            unstacked[f"masks.{layer}.hidden.bias"] = unstacked.pop(f"masks.{layer}.hidden_bias")  # c1
        assert unstacked.keys() != state.keys()
    fresh = MaskedLowRankCrossNet(6, 3, 2, **kwargs)
    fresh.load_state_dict(unstacked)  # strict
    with torch.no_grad():
        assert torch.equal(fresh(x), net(x))
    assert fresh.state_dict().keys() == state.keys()
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key]), key
    # and back: the stacked state into an unstacked layer reads the same weights
    other = MaskedLowRankCrossNet(6, 3, 2, **{**kwargs, "mask_source": "x0"})
    other.load_state_dict(state)
    for layer in range(3):
        torch.testing.assert_close(_layer_weights(other, layer), _layer_weights(net, layer), rtol=0, atol=0)


def test_stacking_keeps_the_initial_weights():
    # the stacked layer is made in the unstacked layout and then stacked: the same seed gives
    # the same weights as an unstacked layer (an x0 mask, otherwise the same options)
    torch.manual_seed(7)
    stacked = MaskedLowRankCrossNet(10, 2, 3, mask_source="xl")
    torch.manual_seed(7)
    unstacked = MaskedLowRankCrossNet(10, 2, 3, mask_source="x0")
    assert stacked.stacked and not unstacked.stacked
    for layer in range(2):
        torch.testing.assert_close(_layer_weights(stacked, layer), _layer_weights(unstacked, layer), rtol=0, atol=0)


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
    if net.stacked:  # W1 sits under V^T in the layer's weight: [r + t, d]
        assert net.down[0].weight.shape == (2 + 4, 6)
        assert mask.hidden_bias.shape == (4,)  # t = hidden_ratio * r
    else:
        assert mask.hidden.in_features == 6  # d_s = d
        assert mask.hidden.out_features == 4  # t = hidden_ratio * r
    assert mask.output.out_features == mask_dim


@pytest.mark.parametrize(
    "mask_kind, mask_source, mask_site, share_mask, stacked",
    [
        ("instance", "xl", "rank", False, True),  # the default
        ("instance", "xl", "output", False, True),
        ("instance", "xl", "input", False, False),  # V^T reads m ⊙ x_l, not x_l
        ("instance", "xl", "rank", True, False),  # one W1 for all layers
        ("instance", "x0", "rank", False, False),
        ("static", "xl", "rank", False, False),
        ("none", "xl", "rank", False, False),
    ],
)
def test_which_options_stack_v_and_w1(mask_kind, mask_source, mask_site, share_mask, stacked):
    net = MaskedLowRankCrossNet(6, 2, 2, mask_kind, mask_source, mask_site, share_mask=share_mask)
    assert net.stacked == stacked
    assert net.down[1].weight.shape == ((2 + 2) if stacked else 2, 6)


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
