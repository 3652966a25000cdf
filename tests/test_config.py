"""Model configuration: YAML round trip, strict keys and values, presets with changes."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from mldcn.config import ConfigError, apply_overrides, load_yaml, save_yaml
from mldcn.models import (
    HeadConfig,
    ModelConfig,
    get_preset,
    list_models,
    model_config_from_dict,
)
from mldcn.models.mldcn import MLDCNConfig


@pytest.mark.parametrize("name", list_models())
def test_yaml_round_trip(name, tmp_path):
    config = get_preset(name)
    data = config.to_dict()
    # plain YAML types only: lists, not tuples
    text = yaml.safe_dump(data, sort_keys=False)
    assert model_config_from_dict(yaml.safe_load(text)) == config
    # and through the files the CLI writes and reads
    path = tmp_path / "model.yaml"
    save_yaml({"model": data}, path)
    assert model_config_from_dict(load_yaml(path)["model"]) == config


@pytest.mark.parametrize("name", list_models())
def test_preset_by_name(name):
    assert model_config_from_dict(name) == get_preset(name)
    assert model_config_from_dict({"preset": name}) == get_preset(name)


def test_round_trip_keeps_tuples_and_floats():
    config = get_preset("masknet_serial")
    back = model_config_from_dict(yaml.safe_load(yaml.safe_dump(config.to_dict())))
    assert isinstance(back.interaction.block_dims, tuple)
    assert isinstance(back.head.hidden, tuple)
    assert isinstance(back.interaction.reduction_ratio, float)


# --------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    "data, key",
    [
        ({"preset": "mldcn", "layers": 3}, "layers"),
        ({"family": "mldcn", "interaction": {}, "embeding_dim": 8}, "embeding_dim"),
        ({"preset": "mldcn", "interaction": {"rnak": 8}}, "rnak"),
        ({"family": "dcnv2_lowrank", "interaction": {"mask_kind": "none"}}, "mask_kind"),
        ({"preset": "mldcn", "head": {"hiden": [8]}}, "hiden"),
        ({"preset": "dnn", "head": {"dropout": 0.1, "drop_out": 0.1}}, "drop_out"),
    ],
)
def test_unknown_key_is_an_error_naming_it(data, key):
    with pytest.raises(ConfigError, match=key):
        model_config_from_dict(data)


def test_missing_family_is_an_error():
    with pytest.raises(ConfigError, match="family"):
        model_config_from_dict({"interaction": {"rank": 8}})


@pytest.mark.parametrize(
    "data, name",
    [({"preset": "no_such_model"}, "no_such_model"), ({"family": "no_such_family"}, "no_such_family")],
)
def test_unknown_preset_or_family_is_an_error(data, name):
    with pytest.raises(ConfigError, match=name):
        model_config_from_dict(data)


# --------------------------------------------------------------------------- wrong values


@pytest.mark.parametrize(
    "data, field",
    [
        ({"preset": "mldcn", "interaction": {"mask_site": "everywhere"}}, "mask_site"),
        ({"preset": "mldcn", "interaction": {"mask_activation": "relu"}}, "mask_activation"),
        ({"preset": "mldcn", "interaction": {"layer_norm": "batch"}}, "layer_norm"),
        ({"preset": "dcnv2_mixture", "interaction": {"activation": "swish"}}, "activation"),
        ({"preset": "mldcn", "head": {"structure": "diagonal"}}, "structure"),
        ({"preset": "mldcn", "head": {"activation": "swish"}}, "activation"),
    ],
)
def test_wrong_literal_value_is_an_error_naming_the_field(data, field):
    with pytest.raises(ConfigError, match=field):
        model_config_from_dict(data)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.optimizer=adagrad", "train.optimizer: must be one of ['adam', 'adamw'], got 'adagrad'"),
        ("train.device=tpu", "train.device: must be one of ['cpu', 'cuda', 'auto'], got 'tpu'"),
        ("model.interaction.mask_source=x1", "model.interaction.mask_source: must be one of ['x0', 'xl'], got 'x1'"),
        ("train.embedding_lr=fast", "train.embedding_lr: must be float or null, got 'fast' (str)"),
    ],
)
def test_a_bad_override_lists_what_is_allowed(override, message):
    from mldcn.config import apply_overrides
    from mldcn.train.run import run_config_from_dict

    with pytest.raises(ConfigError) as error:
        run_config_from_dict(apply_overrides({"model": "mldcn"}, [override]))
    assert str(error.value) == message


def test_wrong_literal_in_constructor_is_an_error():
    with pytest.raises(ConfigError, match="mask_kind"):
        MLDCNConfig(mask_kind="dynamic")
    with pytest.raises(ConfigError, match="structure"):
        HeadConfig(structure="diagonal")


@pytest.mark.parametrize(
    "data, field",
    [
        ({"preset": "mldcn", "interaction": {"rank": "8"}}, "rank"),
        ({"preset": "mldcn", "interaction": {"share_mask": "yes"}}, "share_mask"),
        ({"preset": "mldcn", "head": {"hidden": 8}}, "hidden"),
        ({"preset": "mldcn", "head": {"hidden": [8, "wide"]}}, "hidden"),
        ({"preset": "mldcn", "embedding_dim": 8.5}, "embedding_dim"),
        ({"preset": "mldcn", "interaction": [8]}, "interaction"),
    ],
)
def test_wrong_type_is_an_error_naming_the_field(data, field):
    with pytest.raises(ConfigError, match=field):
        model_config_from_dict(data)


@pytest.mark.parametrize(
    "data, field",
    [
        ({"preset": "mldcn", "interaction": {"rank": 0}}, "rank"),
        ({"preset": "mldcn", "interaction": {"num_layers": -1}}, "num_layers"),
        ({"preset": "mldcn", "interaction": {"hidden_ratio": 0.0}}, "hidden_ratio"),
        ({"preset": "mldcn", "embedding_dim": 0}, "embedding_dim"),
        ({"preset": "mldcn", "head": {"hidden": [400, 0]}}, "hidden"),
        ({"preset": "mldcn", "head": {"dropout": 1.0}}, "dropout"),
        ({"preset": "masknet_parallel", "interaction": {"block_dim": 0}}, "block_dim"),
        ({"preset": "masknet_serial", "interaction": {"block_dims": []}}, "block_dims"),
        ({"preset": "dcnv2_mixture", "interaction": {"num_experts": 0}}, "num_experts"),
    ],
)
def test_non_positive_values_raise(data, field):
    with pytest.raises(ConfigError, match=field):
        model_config_from_dict(data)


def test_interaction_must_match_family():
    with pytest.raises(ConfigError, match="MLDCNConfig"):
        ModelConfig("dcnv2", MLDCNConfig())


# --------------------------------------------------------------------------- presets with changes


def test_preset_with_one_change():
    config = model_config_from_dict({"preset": "mldcn", "interaction": {"rank": 8}})
    preset = get_preset("mldcn")
    assert config.interaction.rank == 8
    assert config == preset.with_interaction(rank=8)
    assert config.head == preset.head
    assert config.embedding_dim == preset.embedding_dim
    # every other interaction field is the preset's
    for field in dataclasses.fields(preset.interaction):
        if field.name != "rank":
            assert getattr(config.interaction, field.name) == getattr(preset.interaction, field.name)


def test_preset_with_head_and_top_level_changes():
    config = model_config_from_dict(
        {"preset": "dcnv2_frappe_bars", "head": {"dropout": 0.2}, "embedding_dim": 8}
    )
    preset = get_preset("dcnv2_frappe_bars")
    assert config.head == dataclasses.replace(preset.head, dropout=0.2)
    assert config.embedding_dim == 8
    assert config.interaction == preset.interaction


def test_yaml_float_forms_are_read_as_floats():
    config = model_config_from_dict(yaml.safe_load("preset: dnn\nhead: {dropout: 1e-1}\n"))
    assert config.head.dropout == pytest.approx(0.1)
    config = model_config_from_dict({"preset": "mldcn", "interaction": {"hidden_ratio": 2}})
    assert config.interaction.hidden_ratio == 2.0


def test_configs_are_frozen():
    config = get_preset("mldcn")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.embedding_dim = 4  # type: ignore[misc]


# --------------------------------------------------------------------------- overrides


def test_apply_overrides_nested_keys():
    data = {"model": {"preset": "mldcn"}, "seed": 1}
    result = apply_overrides(data, ["model.interaction.rank=8", "model.head.hidden=[16, 8]", "seed=3"])
    assert result == {
        "model": {"preset": "mldcn", "interaction": {"rank": 8}, "head": {"hidden": [16, 8]}},
        "seed": 3,
    }
    assert data == {"model": {"preset": "mldcn"}, "seed": 1}  # the input is not changed
    config = model_config_from_dict(result["model"])
    assert config.interaction.rank == 8
    assert config.head.hidden == (16, 8)


def test_apply_overrides_on_a_preset_name():
    # `model: mldcn` becomes `model: {preset: mldcn, ...}` when a key below it is set
    result = apply_overrides({"model": "mldcn"}, ["model.interaction.mask_site=output"])
    assert result == {"model": {"preset": "mldcn", "interaction": {"mask_site": "output"}}}
    assert model_config_from_dict(result["model"]).interaction.mask_site == "output"


def test_apply_overrides_creates_missing_sections_and_parses_yaml():
    result = apply_overrides({}, ["a.b.c=0.5", "a.flag=true", "a.name=x", "a.sizes=[1, 2]"])
    assert result == {"a": {"b": {"c": 0.5}, "flag": True, "name": "x", "sizes": [1, 2]}}
    assert result["a"]["flag"] is True


@pytest.mark.parametrize(
    "data, override",
    [({}, "no_equals_sign"), ({"a": 1}, "a.b=2"), ({"a": [1, 2]}, "a.b=2")],
)
def test_apply_overrides_errors(data, override):
    with pytest.raises(ConfigError):
        apply_overrides(data, [override])


def test_override_with_unknown_key_fails_when_built():
    result = apply_overrides({"model": "mldcn"}, ["model.interaction.rnak=8"])
    with pytest.raises(ConfigError, match="rnak"):
        model_config_from_dict(result["model"])


# --------------------------------------------------------------------------- files


def test_load_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="YAML"):
        load_yaml(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(listing)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_yaml(empty) == {}
