"""Validated, frozen configuration dataclasses and their YAML form.

Every config in mldcn is a frozen dataclass deriving from :class:`Config`.
Loading from a dict or YAML goes through :func:`from_dict`, where an unknown key,
a wrong type or a value outside a ``Literal`` is an error naming the key, never
silently ignored (torchtune validates kwargs against signatures in the same spirit).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import dacite
import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names it."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Base for config dataclasses: checks ``Literal`` fields and positivity rules.

    Subclasses list fields that must be >= 1 in ``_positive`` and fields that must
    be >= 0 in ``_non_negative``.
    """

    _positive: typing.ClassVar[tuple[str, ...]] = ()
    _non_negative: typing.ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            hint = hints[field.name]
            if typing.get_origin(hint) is Literal and value not in typing.get_args(hint):
                raise ConfigError(
                    f"{type(self).__name__}.{field.name} must be one of "
                    f"{list(typing.get_args(hint))}, got {value!r}"
                )
            if isinstance(value, list):  # YAML gives lists; configs hold tuples
                object.__setattr__(self, field.name, tuple(value))
        for name in self._positive:
            value = getattr(self, name)
            values = value if isinstance(value, tuple) else (value,)
            if any(v is not None and v <= 0 for v in values):
                raise ConfigError(f"{type(self).__name__}.{name} must be > 0, got {value!r}")
        for name in self._non_negative:
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{type(self).__name__}.{name} must be >= 0, got {value!r}")


def from_dict(cls: type[T], data: dict | None, where: str = "") -> T:
    """Build config ``cls`` from ``data``; unknown keys and wrong types are errors."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"{where or cls.__name__}: unknown key(s) {unknown}; valid keys are {sorted(known)}"
        )
    hints = typing.get_type_hints(cls)
    for name, value in data.items():
        # dacite would call tuple(value) and fail with a bare TypeError on a scalar
        if typing.get_origin(hints[name]) is tuple and not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where or cls.__name__}.{name} must be a list, got {value!r}")
    try:
        return dacite.from_dict(
            cls, data, config=dacite.Config(strict=True, cast=[tuple], type_hooks={float: _to_float})
        )
    except dacite.WrongTypeError as error:
        raise ConfigError(f"{where or cls.__name__}.{error.field_path}: {_wrong_type(error.field_type, error.value)}") from None
    except dacite.DaciteError as error:
        raise ConfigError(f"{where or cls.__name__}: {error}") from None


def _wrong_type(hint: Any, value: Any) -> str:
    """What a value of the wrong type should have been, with the allowed values of a ``Literal``."""
    options = list(typing.get_args(hint)) if typing.get_origin(hint) in (typing.Union, types.UnionType) else [hint]
    allowed = [a for option in options if typing.get_origin(option) is Literal for a in typing.get_args(option)]
    if allowed:
        extra = " or null" if type(None) in options else ""
        return f"must be one of {allowed}{extra}, got {value!r}"
    names = " or ".join("null" if o is type(None) else getattr(o, "__name__", str(o)) for o in options)
    return f"must be {names}, got {value!r} ({type(value).__name__})"


def _to_float(value: Any) -> Any:
    # YAML reads `1e-3` as a string and `1` as an int; both mean a float here.
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, str)):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def to_dict(config: Any) -> dict:
    """A plain dict (lists, not tuples) suitable for YAML."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(config)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def save_yaml(data: dict, path: str | Path) -> None:
    """Write ``data`` as YAML; the file appears only complete (:func:`mldcn.files.write_text_atomic`)."""
    from mldcn.files import write_text_atomic  # noqa: PLC0415

    write_text_atomic(path, yaml.safe_dump(data, sort_keys=False))


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a nested dict copy."""
    import copy

    result = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = result
        for part in parts[:-1]:
            child = node.get(part)
            if child is None or isinstance(child, str):
                child = {} if child is None else {"preset": child}
                node[part] = child
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw)
    return result

