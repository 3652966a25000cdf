"""Registry of model families and named presets (timm-style ``create_model``/``list_models``).

A *family* is an interaction module with its config class and builder
(``register_family``); a *preset* is a named :class:`ModelConfig`
(``register_model``). ``create_model("mldcn", features)`` builds a preset;
``create_model(config, features)`` builds any config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from mldcn.config import ConfigError
from mldcn.features import FeatureSpec
from mldcn.layers.embedding import FeatureEmbedding
from mldcn.layers.head import ParallelHead, StackedHead
from mldcn.models.config import ModelConfig
from mldcn.models.multitask import get_structure
from mldcn.models.ranking import RankingModel

InteractionBuilder = Callable[[Any, int, int], nn.Module]
WidthScaler = Callable[[Any, int, int, int], Any]


@dataclass(frozen=True)
class Family:
    """An interaction family.

    Attributes:
        name: registry name (``ModelConfig.family``).
        config_cls: its frozen config dataclass.
        build: ``build(config, num_fields, dim) -> module`` mapping ``[B, F, D]`` to ``[B, h]``.
        width: the config field a FLOPs budget is met with (rank, block width, ...).
        description: one line for ``mldcn models``.
        scale: ``scale(config, w, num_fields, dim) -> config`` sets the family's
            widths from one integer ``w``, with cost non-decreasing in ``w``
            (default: ``width = w``).
        depth: the config field counting layers or blocks, which the budget
            solver may change when no width alone lands within tolerance (a tuple
            field, e.g. MaskNet's ``block_dims``, is resized by repeating its first entry).
        layer: the layer class ``build`` makes, when the config's fields are that
            layer's keyword arguments (``build`` passes them with :func:`options`):
            the options are declared once, in the config, and a test checks them
            against the layer's signature.
    """

    name: str
    config_cls: type
    build: InteractionBuilder
    width: str | None
    description: str
    scale: WidthScaler | None = None
    depth: str | None = None
    layer: type | None = None

    def with_width(self, config: Any, width: int, num_fields: int, dim: int) -> Any:
        """``config`` resized to width ``width`` (see ``scale``)."""
        if self.scale is not None:
            return self.scale(config, width, num_fields, dim)
        if self.width is None:
            raise ConfigError(f"family {self.name!r} has no width to match a FLOPs budget with")
        return dataclasses.replace(config, **{self.width: width})

    def depth_of(self, config: Any) -> int | None:
        if self.depth is None:
            return None
        value = getattr(config, self.depth)
        return len(value) if isinstance(value, tuple) else value

    def with_depth(self, config: Any, depth: int) -> Any:
        """``config`` with ``depth`` layers / blocks."""
        value = getattr(config, self.depth)
        new = (value[0],) * depth if isinstance(value, tuple) else depth
        return dataclasses.replace(config, **{self.depth: new})


_FAMILIES: dict[str, Family] = {}
_PRESETS: dict[str, tuple[ModelConfig, str]] = {}


def register_family(
    name: str,
    config_cls: type,
    width: str | None,
    description: str,
    scale: WidthScaler | None = None,
    depth: str | None = None,
    layer: type | None = None,
):
    """Decorator registering an interaction builder under ``name``."""

    def decorator(build: InteractionBuilder) -> InteractionBuilder:
        if name in _FAMILIES:
            raise ValueError(f"family {name!r} is registered twice")
        _FAMILIES[name] = Family(name, config_cls, build, width, description, scale, depth, layer)
        return build

    return decorator


def options(config: Any) -> dict[str, Any]:
    """A family config's fields as the keyword arguments of its layer."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def register_model(name: str, config: ModelConfig, description: str = "") -> None:
    """Register a named preset."""
    if name in _PRESETS:
        raise ValueError(f"model preset {name!r} is registered twice")
    _PRESETS[name] = (config, description)


def get_family(name: str) -> Family:
    if name not in _FAMILIES:
        raise ConfigError(f"unknown model family {name!r}; known: {sorted(_FAMILIES)}")
    return _FAMILIES[name]


def list_families() -> list[str]:
    return sorted(_FAMILIES)


def get_preset(name: str) -> ModelConfig:
    if name not in _PRESETS:
        raise ConfigError(f"unknown model {name!r}; known: {list_models()}")
    return _PRESETS[name][0]


def preset_description(name: str) -> str:
    get_preset(name)
    return _PRESETS[name][1]


def list_models(pattern: str = "") -> list[str]:
    """Preset names containing ``pattern``, sorted."""
    return sorted(name for name in _PRESETS if pattern in name)


def create_model(model: str | ModelConfig, features: FeatureSpec) -> RankingModel:
    """Build a :class:`RankingModel` from a preset name or a :class:`ModelConfig`.

    The model returns one logit per task of ``features`` (``[B, T]``), arranged by
    ``config.multitask`` (:mod:`mldcn.models.multitask`).
    """
    config = get_preset(model) if isinstance(model, str) else model
    embedding = FeatureEmbedding(features, config.embedding_dim)
    interaction = build_interaction(config, features)
    head_cfg = config.head
    deep = dict(
        hidden=head_cfg.hidden,
        activation=head_cfg.activation,
        dropout=head_cfg.dropout,
        batch_norm=head_cfg.batch_norm,
    )

    def make_tower(width: int, outputs: int) -> nn.Module:
        if head_cfg.structure == "parallel":
            return ParallelHead(width, embedding.output_dim, **deep, num_outputs=outputs)
        return StackedHead(width, **deep, num_outputs=outputs)

    structure = get_structure(config.multitask.kind)
    head = structure.towers(config.multitask, make_tower, interaction.out_dim, features.num_tasks)
    return RankingModel(embedding, interaction, head, config=config)


def build_interaction(config: ModelConfig, features: FeatureSpec) -> nn.Module:
    """The interaction part of ``config`` for ``features``: the family's module, or its
    experts and gates for a multi-task structure (``[B, F, D] → [B, h]`` or ``[B, T, h]``)."""
    family = get_family(config.family)

    def make_expert() -> nn.Module:
        return family.build(config.interaction, features.num_fields, config.embedding_dim)

    structure = get_structure(config.multitask.kind)
    return structure.interaction(config.multitask, make_expert, features.num_fields * config.embedding_dim, features.num_tasks)
