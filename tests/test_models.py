"""Contract tests over the model registry (in the spirit of timm's ``test_models.py``).

Every registered preset, on a spec with two tasks (so every multi-task structure and
the single-task head's T outputs are covered): right output shape and dtype, finite
logits, a gradient for every parameter, a state-dict round trip, and analytic matmul
FLOPs equal to what ``torch.utils.flop_counter.FlopCounterMode`` counts.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools

import pytest
import torch
from torch import nn

from mldcn.features import CategoricalField, FeatureSpec, NumericField, SequenceField, TaskSpec
from mldcn.models import (
    HeadConfig,
    RankingModel,
    create_model,
    get_family,
    get_preset,
    list_families,
    list_models,
    measured_matmul_flops,
    model_cost,
)

MODELS = list_models()

#: Update when a preset is added or removed (timm-style discovery test).
EXPECTED_NUM_MODELS = 32

SPEC = FeatureSpec(
    categorical=(CategoricalField("user", 7), CategoricalField("item", 5)),
    numeric=(NumericField("price"), NumericField("age")),
    sequence=(SequenceField("tags", 6, 3), SequenceField("genres", 4, 2)),
    tasks=(TaskSpec("click"), TaskSpec("good_click", weight=0.5)),
)
VOCAB_TOTAL = 7 + 5 + 6 + 4
BATCH = 4



def make_inputs(spec: FeatureSpec = SPEC, batch: int = BATCH, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    categorical = torch.stack(
        [torch.randint(0, f.vocab_size, (batch,), generator=generator) for f in spec.categorical], dim=1
    )  # [B, Fc]
    numeric = torch.randn(batch, len(spec.numeric), generator=generator)  # [B, Fn]
    length = spec.sequence_length
    sequence = torch.stack(
        [torch.randint(0, f.vocab_size, (batch, length), generator=generator) for f in spec.sequence], dim=1
    )  # [B, Fs, L]
    # the padded tail of the shorter field, and one all-padding row
    for index, field in enumerate(spec.sequence):
        sequence[:, index, field.max_len :] = 0
    sequence[0, 0] = 0
    return categorical, numeric, sequence


def test_discovery():
    assert len(MODELS) == EXPECTED_NUM_MODELS, MODELS
    assert MODELS == sorted(set(MODELS))
    expected = {"mldcn", "dcnv2", "dcnv2_lowrank", "masknet_parallel", "masknet_serial", "lr", "dnn"}
    expected |= {"wukong", "rankmixer", "rankmixer_moe", "mldcn_mmoe", "mldcn_shared_bottom", "mldcn_ple"}
    assert expected <= set(MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_forward_shape_dtype_finite(name):
    torch.manual_seed(0)
    model = create_model(name, SPEC)
    assert isinstance(model, RankingModel)
    assert model.config == get_preset(name)
    model.eval()
    with torch.no_grad():
        logits = model(*make_inputs())
    assert logits.shape == (BATCH, SPEC.num_tasks)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = create_model(name, SPEC)
    model.train()  # dropout and batch norm active (B = 4)
    categorical, numeric, sequence = make_inputs()
    labels = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 1.0]])  # [B, T]
    loss = nn.functional.binary_cross_entropy_with_logits(model(categorical, numeric, sequence), labels)
    assert torch.isfinite(loss)
    loss.backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, f"{name}: {param_name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name}: {param_name} has a non-finite gradient"
    # and the gradient is not zero everywhere
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())
    outputs = [tower.output for tower in model.head.towers] if hasattr(model.head, "towers") else [model.head.output]
    assert all(output.weight.grad.abs().sum() > 0 for output in outputs)


@pytest.mark.parametrize("name", MODELS)
def test_state_dict_round_trip(name):
    torch.manual_seed(0)
    model = create_model(name, SPEC).eval()
    torch.manual_seed(1)
    fresh = create_model(name, SPEC).eval()
    inputs = make_inputs()
    with torch.no_grad():
        expected = model(*inputs)
        assert not torch.equal(fresh(*inputs), expected)  # a different init really differs
        fresh.load_state_dict(model.state_dict())
        assert torch.equal(fresh(*inputs), expected)


@pytest.mark.parametrize("name", MODELS)
def test_requires_sequence_input_when_spec_has_one(name):
    model = create_model(name, SPEC)
    categorical, numeric, _ = make_inputs()
    with pytest.raises(ValueError, match="sequence"):
        model(categorical, numeric)


# --------------------------------------------------------------------------- FLOPs


def _assert_matmul_flops_match(model: RankingModel, batch: int = BATCH) -> None:
    inputs = make_inputs(batch=batch)
    analytic = model_cost(model).total.matmul  # per example
    measured = measured_matmul_flops(model, inputs)  # FlopCounterMode total / batch
    assert analytic > 0
    assert measured * batch == analytic * batch, (measured, analytic)


@pytest.mark.parametrize("name", MODELS)
def test_matmul_flops_match_flop_counter(name):
    torch.manual_seed(0)
    model = create_model(name, SPEC)
    _assert_matmul_flops_match(model)
    assert model.training  # measuring does not leave the model in eval mode


def test_measured_flops_restores_eval_mode():
    model = create_model("dnn", SPEC).eval()
    measured_matmul_flops(model, make_inputs())
    assert not model.training


def _small(name: str):
    # the preset's head shrunk to keep the option grid cheap; the interaction is what varies
    config = get_preset(name)
    return config.replace(head=HeadConfig(structure=config.head.structure, hidden=(8,)))


MLDCN_VARIANTS = list(
    itertools.product(
        ["instance", "static", "none"],  # mask_kind
        ["rank", "input", "output"],  # mask_site
        ["x0", "xl"],  # mask_source
        [False, True],  # share_mask
        ["none", "layer"],  # layer_norm
    )
)


@pytest.mark.parametrize("mask_kind, mask_site, mask_source, share_mask, layer_norm", MLDCN_VARIANTS)
def test_mldcn_variant_flops_match_flop_counter(mask_kind, mask_site, mask_source, share_mask, layer_norm):
    torch.manual_seed(0)
    config = _small("mldcn").with_interaction(
        num_layers=2,
        rank=3,
        hidden_ratio=2.0,
        mask_kind=mask_kind,
        mask_site=mask_site,
        mask_source=mask_source,
        share_mask=share_mask,
        layer_norm=layer_norm,
    )
    _assert_matmul_flops_match(create_model(config, SPEC))


@pytest.mark.parametrize("mask_activation", ["identity", "sigmoid", "2sigmoid", "softplus"])
@pytest.mark.parametrize("structure", ["parallel", "stacked"])
def test_mldcn_activation_and_head_flops_match_flop_counter(mask_activation, structure):
    torch.manual_seed(0)
    config = get_preset("mldcn").with_interaction(num_layers=2, rank=4, mask_activation=mask_activation)
    config = config.replace(head=HeadConfig(structure=structure, hidden=(16, 8), batch_norm=True))
    _assert_matmul_flops_match(create_model(config, SPEC))


@pytest.mark.parametrize("nonlinear", [False, True])
@pytest.mark.parametrize("num_experts", [1, 3])
def test_mixture_flops_match_flop_counter(nonlinear, num_experts):
    torch.manual_seed(0)
    config = _small("dcnv2_mixture").with_interaction(
        num_layers=2, rank=3, num_experts=num_experts, nonlinear=nonlinear
    )
    _assert_matmul_flops_match(create_model(config, SPEC))


@pytest.mark.parametrize("emb_layer_norm", [False, True])
@pytest.mark.parametrize("name", ["masknet_serial", "masknet_parallel"])
def test_masknet_variant_flops_match_flop_counter(name, emb_layer_norm):
    torch.manual_seed(0)
    config = _small(name).with_interaction(emb_layer_norm=emb_layer_norm, reduction_ratio=0.5)
    _assert_matmul_flops_match(create_model(config, SPEC))


def test_flops_scale_with_rank():
    # the analytic count of the interaction follows 4dr per layer plus the mask
    small = create_model(get_preset("mldcn").with_interaction(rank=4, mask_kind="none"), SPEC)
    large = create_model(get_preset("mldcn").with_interaction(rank=8, mask_kind="none"), SPEC)
    d = SPEC.num_fields * 16
    layers = get_preset("mldcn").interaction.num_layers
    assert model_cost(small).interaction.matmul == layers * 4 * d * 4
    assert model_cost(large).interaction.matmul == layers * 4 * d * 8


# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("name", MODELS)
def test_model_cost_parameter_split(name):
    model = create_model(name, SPEC)
    cost = model_cost(model)
    dim = get_preset(name).embedding_dim
    assert cost.embedding_params == VOCAB_TOTAL * dim
    assert cost.dense_params + cost.embedding_params == sum(p.numel() for p in model.parameters())
    # numeric-field vectors are dense parameters (not lookup tables)
    assert cost.dense_params >= len(SPEC.numeric) * dim
    # bytes read: 2 categorical rows + 3 + 2 sequence slots (padded lengths), fp32
    assert cost.embedding_bytes_read == (2 + 3 + 2) * dim * 4
    assert cost.total == cost.interaction + cost.head + cost.embedding


@pytest.mark.parametrize("name", [f for f in list_families() if get_family(f).layer is not None])
def test_family_options_are_the_layers_arguments(name):
    """Each option is declared once, in the config; the layer takes it by the same name and default."""
    family = get_family(name)
    parameters = inspect.signature(family.layer.__init__).parameters
    for field in dataclasses.fields(family.config_cls):
        assert field.name in parameters, f"{name}: {field.name} is not an argument of {family.layer.__name__}"
        layer_default = parameters[field.name].default
        if layer_default is not inspect.Parameter.empty:
            assert layer_default == field.default, f"{name}.{field.name}: {field.default!r} vs the layer's {layer_default!r}"


def test_most_families_declare_their_options_once():
    declared = {f for f in list_families() if get_family(f).layer is not None}
    # WuKong's and RankMixer's configs derive their layers' sizes (token split, FFN widths)
    assert set(list_families()) - declared == {"dnn", "rankmixer", "rankmixer_moe", "wukong"}
