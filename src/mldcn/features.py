"""What a model's input tensors hold: the contract between data, models and serving.

Shape legend, used across the package:

    B  batch size                     F  number of fields (Fc + Fn + Fs)
    Fc categorical fields             Fn numeric fields
    Fs multi-valued (sequence) fields L  padded length of a multi-valued field
    D  embedding size                 d  F * D, width of the flattened input x0
    r  rank                           t  mask hidden width

A model is called as ``model(categorical, numeric, sequence)``:

    categorical  int64   [B, Fc]     per-field ids in [0, vocab_size)
    numeric      float32 [B, Fn]     already transformed (log, standardised, ...)
    sequence     int64   [B, Fs, L]  per-field ids, 0 = padding (optional)

Data code produces a :class:`FeatureSpec`; model code consumes it. Neither side
imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CategoricalField:
    """A single-valued categorical field; ids run from 0 to ``vocab_size - 1``."""

    name: str
    vocab_size: int

    def __post_init__(self) -> None:
        if self.vocab_size < 1:
            raise ValueError(f"field {self.name!r}: vocab_size must be >= 1, got {self.vocab_size}")


@dataclass(frozen=True)
class NumericField:
    """A numeric field, embedded as ``value * w_field``."""

    name: str


@dataclass(frozen=True)
class SequenceField:
    """A multi-valued field (e.g. genres ``Action|Comedy``), mean-pooled.

    Id 0 is padding; real values use ids 1 .. ``vocab_size - 1``.
    """

    name: str
    vocab_size: int
    max_len: int

    def __post_init__(self) -> None:
        if self.vocab_size < 2:
            raise ValueError(f"field {self.name!r}: vocab_size must be >= 2 (id 0 is padding)")
        if self.max_len < 1:
            raise ValueError(f"field {self.name!r}: max_len must be >= 1, got {self.max_len}")


@dataclass(frozen=True)
class FeatureSpec:
    """The fields a model embeds, in input order: categorical, numeric, sequence."""

    categorical: tuple[CategoricalField, ...] = ()
    numeric: tuple[NumericField, ...] = ()
    sequence: tuple[SequenceField, ...] = ()

    def __post_init__(self) -> None:
        names = [f.name for f in (*self.categorical, *self.numeric, *self.sequence)]
        if not names:
            raise ValueError("a FeatureSpec needs at least one field")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate field names: {duplicates}")

    @property
    def num_fields(self) -> int:
        return len(self.categorical) + len(self.numeric) + len(self.sequence)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in (*self.categorical, *self.numeric, *self.sequence))

    @property
    def sequence_length(self) -> int:
        """L: the padded length of the ``sequence`` input (0 without sequence fields)."""
        return max((f.max_len for f in self.sequence), default=0)

    def to_dict(self) -> dict:
        return {
            "categorical": [{"name": f.name, "vocab_size": f.vocab_size} for f in self.categorical],
            "numeric": [{"name": f.name} for f in self.numeric],
            "sequence": [
                {"name": f.name, "vocab_size": f.vocab_size, "max_len": f.max_len}
                for f in self.sequence
            ],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureSpec":
        unknown = set(data) - {"categorical", "numeric", "sequence"}
        if unknown:
            raise ValueError(f"unknown keys in feature spec: {sorted(unknown)}")
        return cls(
            categorical=tuple(CategoricalField(**f) for f in data.get("categorical", ())),
            numeric=tuple(NumericField(**f) for f in data.get("numeric", ())),
            sequence=tuple(SequenceField(**f) for f in data.get("sequence", ())),
        )
