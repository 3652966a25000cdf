"""Model configuration: the shared parts (embedding, head) and the family's own."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from mldcn.config import Config, ConfigError, from_dict, to_dict

Activation = Literal["relu", "gelu", "tanh", "sigmoid", "identity"]


@dataclass(frozen=True)
class HeadConfig(Config):
    """The head shared by all families (see :mod:`mldcn.layers.head`).

    ``structure="parallel"``: ``logit = w^T [h ; MLP(x0)] + b``;
    ``structure="stacked"``: ``logit = w^T MLP(h) + b``.
    """

    structure: Literal["parallel", "stacked"] = "parallel"
    hidden: tuple[int, ...] = (400, 400, 400)
    activation: Activation = "relu"
    dropout: float = 0.0
    batch_norm: bool = False

    _positive = ("hidden",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"HeadConfig.dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class ModelConfig(Config):
    """A complete model: family, its interaction config, embedding size, head (the
    tower of each task) and multi-task structure (:mod:`mldcn.models.multitask`)."""

    family: str
    interaction: Any
    embedding_dim: int = 16
    head: HeadConfig = field(default_factory=HeadConfig)
    multitask: Any = field(default_factory=lambda: _single_task())

    _positive = ("embedding_dim",)

    def __post_init__(self) -> None:
        super().__post_init__()
        from mldcn.models.registry import get_family

        from mldcn.models.multitask import get_structure

        family = get_family(self.family)
        if not isinstance(self.interaction, family.config_cls):
            raise ConfigError(
                f"family {self.family!r} takes a {family.config_cls.__name__}, "
                f"got {type(self.interaction).__name__}"
            )
        structure = get_structure(getattr(self.multitask, "kind", None))
        if not isinstance(self.multitask, structure.config_cls):
            raise ConfigError(f"model.multitask: expected a {structure.config_cls.__name__}")

    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with top-level fields changed (``interaction=...``, ``head=...``)."""
        return dataclasses.replace(self, **changes)

    def with_interaction(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, interaction=dataclasses.replace(self.interaction, **changes))

    def to_dict(self) -> dict:
        from mldcn.models.multitask import multitask_to_dict

        return {**to_dict(self), "multitask": multitask_to_dict(self.multitask)}


def _single_task():
    from mldcn.models.multitask import SingleTaskConfig

    return SingleTaskConfig()


def model_config_from_dict(data: dict | str, where: str = "model") -> ModelConfig:
    """Build a :class:`ModelConfig` from YAML data.

    ``data`` is a preset name, or a mapping with ``family`` (and optionally
    ``interaction``, ``embedding_dim``, ``head``), or a mapping with ``preset``
    plus the keys to change in that preset.
    """
    from mldcn.models.registry import get_family, get_preset

    if isinstance(data, str):
        return get_preset(data)
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a preset name or a mapping")
    data = dict(data)
    if "preset" in data:
        base = get_preset(data.pop("preset")).to_dict()
        for key, value in data.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key] = {**base[key], **value}
            else:
                base[key] = value
        data = base
    if "family" not in data:
        raise ConfigError(f"{where}: missing key 'family' (or 'preset')")
    unknown = sorted(set(data) - {"family", "interaction", "embedding_dim", "head", "multitask"})
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown}; valid keys are "
            "['embedding_dim', 'family', 'head', 'interaction', 'multitask', 'preset']"
        )
    family = get_family(data["family"])
    interaction = from_dict(family.config_cls, data.get("interaction"), f"{where}.interaction")
    head = from_dict(HeadConfig, data.get("head"), f"{where}.head")
    embedding_dim = data.get("embedding_dim", 16)
    if not isinstance(embedding_dim, int) or isinstance(embedding_dim, bool):
        raise ConfigError(f"{where}.embedding_dim must be an integer, got {embedding_dim!r}")
    from mldcn.models.multitask import multitask_from_dict

    multitask = multitask_from_dict(data.get("multitask"), f"{where}.multitask")
    return ModelConfig(family=family.name, interaction=interaction, embedding_dim=embedding_dim, head=head, multitask=multitask)
