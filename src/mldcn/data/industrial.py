"""An industrial-shape click log: grouped ads-log fields, long-tail ids, two labels, a neutral teacher.

The log for scaling studies (``docs/industrial.md``). Every row's true click and
good-click probabilities are known, so each split reports its *ceiling*: the AUC
and logloss of the true probabilities against the sampled labels.

Fields, in the groups an ads log has (catalogues below; ``user_fields`` etc. take
the first N of each group):

* user: ``user_id`` (the largest vocabulary, ``largest_vocab``) and attributes that
  are a deterministic function of it: age, gender, city → region → country →
  language, device model → device type, segment, income, tenure, activity;
* ad: ``ad_id`` and a hierarchy determined by it: ad → campaign → advertiser →
  landing domain, campaign → category → vertical, creative type, format, age;
* context: hour, weekday, slot position, page type, os (of the device model),
  app → publisher, connection, surface, query category;
* user × ad crosses: ``a × b`` exactly when ``|a|·|b|`` fits the field's size,
  else hashed into it (segment × category, country × advertiser, user × advertiser, ...);
* numeric: per-entity values (bid of the advertiser, historical rates of the ad,
  user, advertiser; ad age) with per-row estimation noise, and a per-row one,
  all standardised;
* multi-valued: the user's recent categories (around the user's own favourites) and
  recent ads, 1 + id per position, 0 = padding, a variable number of positions
  ``l ∈ [0, L]`` per row.

Ids drawn per row follow a bounded power law (Zipf) over a seeded shuffle of the
field's ids, sampled by its inverse CDF; a derived field is the same law sampled
at a hash of its parent's id, so it is a fixed function of the parent.

The teacher. Each field has a random teacher embedding ``e_f(id) ∈ R^k``
(``k = teacher_dim``): a table of N(0, 1) rows for a vocabulary up to
``TEACHER_TABLE_ROWS``, else compositional (quotient-remainder, so no 10^7-row
table exists): ``e(id) = (Q[id // m] + R[id mod m]) / √2`` with ``m = ⌈√V⌉``. A
numeric field's is ``v · P_f``; a multi-valued field's the mean of its items'
embeddings (the item field's table). With ``x = [g_f e_f]_f ∈ R^{F k}`` (field
importances ``g_f`` log-normal, mean square 1), for task t:

    first_t = w_t · x                                               # first order
    deep_t  = a_t · tanh(W_L … tanh(W_1 x))                         # a random deep network, shared by the tasks
    high_t  = Σ_j Π_{f ∈ S_tj} (p_tjf · e_f) / √k                   # sparse products of order 2..4
    z_t     = b_t + α1 first_t + α2 deep_t + α3 high_t

with random N(0, 1) weights (``W_l`` scaled by gain 1.5 / √fan-in, so tanh is in
its nonlinear range), ``num_products`` product terms per task over random field
subsets ``S_tj`` of random order in [``min_order``, ``max_order``], each component
scaled to its stated std (α = ``first_order``, ``deep``, ``high_order``) on a fixed
calibration sample. Labels:

    click      ~ Bernoulli(σ(z_click)),       b_click solved so the mean is ``base_ctr``
    good_click = click · Bernoulli(σ(z_good)), b_good solved so P(good | click) = ``good_click_rate``

so ``good_click ≤ click`` and the true probability of a good click is
``σ(z_click) σ(z_good)``. No component is the shape of one model family:
first-order terms suit logistic regression, the random network a DNN, the
products cross networks and FMs; there are no instance-gated terms (the shape of
ML-DCN's mask and MaskNet, planted in :mod:`mldcn.data.synthetic`).

Rows are generated in chunks of ``CHUNK_ROWS`` with a generator seeded by
``(seed, split, chunk)``: any chunk is reproducible on its own, chunks can be made
in any order, and memory stays bounded for any number of rows. A split of n rows
is the first n rows of its chunks, so a smaller log is a prefix of a larger one.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
import statistics
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mldcn.batch import Batch
from mldcn.config import Config, ConfigError, to_dict
from mldcn.data.dataset import Dataset
from mldcn.features import CategoricalField, FeatureSpec, NumericField, SequenceField, TaskSpec
from mldcn.files import atomic_path, process_alive, temporary_sibling

CHUNK_ROWS = 65_536
CALIBRATION_ROWS = 65_536
#: a field with more ids than this gets a compositional teacher embedding
TEACHER_TABLE_ROWS = 1 << 14
TASKS = ("click", "good_click")
SPLITS = ("train", "valid", "test")
FORMAT_VERSION = 2  # mldcn.data.encode.FORMAT_VERSION; asserted equal by the tests
_BLOCK_ROWS = 4_096  # the teacher runs on blocks of rows, to stay in cache
_GAIN = 1.5
_AUC_BINS = 1 << 16  # ceiling AUC from a histogram of the true logit: bins of 4.9e-4 over [-16, 16]
_AUC_RANGE = 16.0
_INT32_MAX = 2**31 - 1


# ---------------------------------------------------------------------------- the field catalogue


@dataclass(frozen=True)
class _Categorical:
    """A categorical field: ``size`` ids (or that fraction of ``largest_vocab``), drawn per
    row (``parent`` None) or a function of ``parent``'s id; power-law ``exponent`` (None:
    the config's); ``ordered``: the most frequent id is 0, 1, ... (no shuffle)."""

    name: str
    size: int | float
    parent: str | None = None
    exponent: float | None = None
    ordered: bool = False


@dataclass(frozen=True)
class _Cross:
    """``a × b``: exact when ``|a|·|b| <= size`` (ids or a fraction of ``largest_vocab``), else hashed."""

    name: str
    a: str
    b: str
    size: int | float


@dataclass(frozen=True)
class _Numeric:
    """``√(1 − noise²) · N(entity) + noise · ε``: a fixed normal value of the entity's id
    (None: none) plus per-row noise; standard normal overall."""

    name: str
    entity: str | None
    noise: float


@dataclass(frozen=True)
class _Sequence:
    """Recent items of field ``item`` (ids 1 + item, 0 = padding); ``personal``: drawn
    around the user's own favourite items rather than the globally popular ones."""

    name: str
    item: str
    personal: bool


USER_FIELDS = (
    _Categorical("user_id", 1.0),
    _Categorical("age_bucket", 8, "user_id", 0.5),
    _Categorical("gender", 3, "user_id", 0.3),
    _Categorical("city", 5_000, "user_id"),
    _Categorical("region", 500, "city"),
    _Categorical("country", 50, "region"),
    _Categorical("device_model", 3_000, "user_id"),
    _Categorical("device_type", 5, "device_model", 0.8),
    _Categorical("segment", 200, "user_id"),
    _Categorical("income_bucket", 10, "user_id", 0.5),
    _Categorical("language", 30, "country"),
    _Categorical("tenure_bucket", 12, "user_id", 0.3),
    _Categorical("activity_level", 6, "user_id", 0.5),
)
AD_FIELDS = (
    _Categorical("ad_id", 0.2),
    _Categorical("campaign_id", 0.05, "ad_id"),
    _Categorical("advertiser_id", 0.01, "campaign_id"),
    _Categorical("category", 400, "campaign_id"),
    _Categorical("vertical", 30, "category"),
    _Categorical("creative_type", 6, "ad_id", 0.8),
    _Categorical("ad_format", 5, "ad_id", 0.8),
    _Categorical("landing_domain", 0.008, "advertiser_id"),
    _Categorical("ad_language", 30, "advertiser_id"),
    _Categorical("ad_age_bucket", 10, "ad_id", 0.3),
)
CONTEXT_FIELDS = (
    _Categorical("hour", 24, None, 0.3),
    _Categorical("weekday", 7, None, 0.1),
    _Categorical("slot_position", 12, None, 1.2, ordered=True),
    _Categorical("page_type", 10, None, 0.8),
    _Categorical("os", 6, "device_model", 0.8),
    _Categorical("app_id", 0.01),
    _Categorical("publisher_id", 0.002, "app_id"),
    _Categorical("connection_type", 5, None, 0.8),
    _Categorical("surface", 4, None, 0.8),
    _Categorical("query_category", 400),
)
CROSS_FIELDS = (
    _Cross("segment_x_category", "segment", "category", 0.05),
    _Cross("country_x_advertiser", "country", "advertiser_id", 0.2),
    _Cross("user_x_advertiser", "user_id", "advertiser_id", 0.5),
    _Cross("age_x_creative_type", "age_bucket", "creative_type", 1.0),
    _Cross("hour_x_vertical", "hour", "vertical", 1.0),
    _Cross("device_type_x_ad_format", "device_type", "ad_format", 1.0),
    _Cross("app_x_category", "app_id", "category", 0.1),
)
NUMERIC_FIELDS = (
    _Numeric("bid", "advertiser_id", 0.5),
    _Numeric("ad_ctr", "ad_id", 0.3),
    _Numeric("user_ctr", "user_id", 0.3),
    _Numeric("advertiser_ctr", "advertiser_id", 0.2),
    _Numeric("ad_age", "ad_id", 0.0),
    _Numeric("session_depth", None, 1.0),
)
SEQUENCE_FIELDS = (
    _Sequence("recent_categories", "category", personal=True),
    _Sequence("recent_ads", "ad_id", personal=False),
)
_GROUPS = {
    "user_fields": USER_FIELDS,
    "ad_fields": AD_FIELDS,
    "context_fields": CONTEXT_FIELDS,
    "cross_fields": CROSS_FIELDS,
    "numeric_fields": NUMERIC_FIELDS,
    "sequence_fields": SEQUENCE_FIELDS,
}


@dataclass(frozen=True)
class IndustrialConfig(Config):
    """Size and shape of the industrial-shape click log (module docstring).

    The defaults: 48 fields (13 user, 10 ad, 10 context, 7 crosses, 6 numeric,
    2 multi-valued of up to 10 items), 2.34M ids over all fields with 1M user ids,
    1M / 100k / 100k rows (311 MiB of arrays), CTR 0.1 with 40% of the clicks
    good: sized to train a DCNv2 on in memory on a CPU. ``largest_vocab=10_000_000``
    gives 10^7 user ids (22.9M ids in all).

    Attributes:
        largest_vocab: ids of ``user_id``, the largest field; the other id fields
            are fixed fractions of it, every field's size is clipped to [2, this].
        user_fields ... sequence_fields: how many of each group's catalogue to emit.
        sequence_length: L, the most items of a multi-valued field.
        zipf_exponent: the power law of the id fields (attribute fields have their own).
        teacher_dim: k, the teacher embedding size; teacher_hidden: its network's widths.
        first_order, deep, high_order: the std of each component of the logit.
        num_products: sparse product terms per task, of order min_order..max_order.
        base_ctr: the mean click probability; good_click_rate: P(good click | click).
    """

    train_rows: int = 1_000_000
    valid_rows: int = 100_000
    test_rows: int = 100_000
    seed: int = 0
    largest_vocab: int = 1_000_000
    user_fields: int = len(USER_FIELDS)
    ad_fields: int = len(AD_FIELDS)
    context_fields: int = len(CONTEXT_FIELDS)
    cross_fields: int = len(CROSS_FIELDS)
    numeric_fields: int = len(NUMERIC_FIELDS)
    sequence_fields: int = len(SEQUENCE_FIELDS)
    sequence_length: int = 10
    zipf_exponent: float = 1.05
    teacher_dim: int = 4
    teacher_hidden: tuple[int, ...] = (32, 16)
    first_order: float = 0.6
    deep: float = 1.0
    high_order: float = 0.6
    num_products: int = 6
    min_order: int = 2
    max_order: int = 4
    base_ctr: float = 0.1
    good_click_rate: float = 0.4

    _positive = ("train_rows", "valid_rows", "test_rows", "teacher_dim", "teacher_hidden")
    _non_negative = (
        "seed",
        *_GROUPS,
        "sequence_length",
        "zipf_exponent",
        "first_order",
        "deep",
        "high_order",
        "num_products",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        if not 2 <= self.largest_vocab <= _INT32_MAX - 1:
            raise ConfigError(
                f"{name}.largest_vocab must be in [2, {_INT32_MAX - 1}] (ids are int32), got {self.largest_vocab}"
            )
        for key, catalogue in _GROUPS.items():
            if getattr(self, key) > len(catalogue):
                raise ConfigError(
                    f"{name}.{key}: the group has {len(catalogue)} fields "
                    f"({', '.join(f.name for f in catalogue)}), got {getattr(self, key)}"
                )
        fields = sum(getattr(self, key) for key in _GROUPS)
        if fields == 0:
            raise ConfigError(f"{name}: every field count is 0; the log needs at least one field")
        if self.sequence_fields and self.sequence_length == 0:
            raise ConfigError(
                f"{name}.sequence_length is 0 but sequence_fields is {self.sequence_fields}: "
                "multi-valued fields need at least one position"
            )
        if not self.teacher_hidden:
            raise ConfigError(f"{name}.teacher_hidden: the teacher network needs at least one hidden layer")
        for key in ("base_ctr", "good_click_rate"):
            if not 0.0 < getattr(self, key) < 1.0:
                raise ConfigError(f"{name}.{key} must be in (0, 1), got {getattr(self, key)}")
        if self.num_products:
            if not 2 <= self.min_order <= self.max_order:
                raise ConfigError(
                    f"{name}: product orders need 2 <= min_order <= max_order, got {self.min_order}..{self.max_order}"
                )
            if self.max_order > fields:
                raise ConfigError(
                    f"{name}.max_order {self.max_order}: a product takes distinct fields, the log has {fields}"
                )

    @property
    def num_rows(self) -> dict[str, int]:
        return {"train": self.train_rows, "valid": self.valid_rows, "test": self.test_rows}


# ---------------------------------------------------------------------------- vectorised primitives

_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_QUANTILES = 1 << 16  # a law of few ids, and a fixed normal value, come from a table of this many quantiles
_LOOKUP_IDS = 512  # fields up to this many ids draw from their quantile table
_CACHE_PARENT = 1 << 18  # a derived field of a parent up to this many ids is cached as a table


def _hash(values: np.ndarray, salt: np.uint64) -> np.ndarray:
    """splitmix64 of ``values + salt``: uint64, a fixed pseudo-random function of each value."""
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps modulo 2^64, as intended
        x = values.astype(np.uint64) + salt
        x ^= x >> np.uint64(30)
        x *= _MIX1
        x ^= x >> np.uint64(27)
        x *= _MIX2
        x ^= x >> np.uint64(31)
    return x


def _uniform(hashed: np.ndarray) -> np.ndarray:
    """A hash as a uniform number in [0, 1)."""
    return (hashed >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def _quantile(hashed: np.ndarray) -> np.ndarray:
    """A hash as a quantile index in [0, 2^16)."""
    return (hashed >> np.uint64(48)).astype(np.intp)


@functools.cache
def _normal_quantiles() -> np.ndarray:
    """Φ⁻¹ at the midpoints of 2^16 equal-probability bins: a standard normal value per quantile index."""
    normal = statistics.NormalDist()
    return np.array([normal.inv_cdf((q + 0.5) / _QUANTILES) for q in range(_QUANTILES)], dtype=np.float32)


def power_law_rank(u: np.ndarray, size: int, exponent: float) -> np.ndarray:
    """Inverse CDF of a bounded power law: ranks in [0, size), P(r) ∝ ∫_{r+1}^{r+2} x^-exponent dx.

    ``u`` uniform in [0, 1); rank 0 is the most frequent. Vectorised, O(1) per draw.

    Example:
        >>> power_law_rank(np.array([0.0, 0.5, 0.999]), 1000, 1.0).tolist()
        [0, 30, 993]
    """
    if exponent == 1.0:
        x = np.exp(u * math.log(size + 1.0))
    else:
        one_minus = 1.0 - exponent
        span = math.expm1(one_minus * math.log(size + 1.0))  # (size + 1)^(1 - a) - 1
        x = np.exp(np.log1p(u * span) / one_minus)
    return np.clip(x.astype(np.int64) - 1, 0, size - 1)


class _Law:
    """A field's id law: a power-law rank, shuffled by ``id = (rank · step + shift) mod size``.

    A field of up to ``_LOOKUP_IDS`` ids draws from a table of the law at 2^16
    quantiles (so each id's probability is a multiple of 2^-16); a larger one by
    the closed-form inverse CDF.
    """

    def __init__(self, size: int, exponent: float, ordered: bool, rng: np.random.Generator) -> None:
        self.size, self.exponent = size, exponent
        self.step, self.shift = (1, 0) if ordered else (_coprime_step(rng, size), int(rng.integers(size)))
        self.lookup = None
        if size <= _LOOKUP_IDS:
            self.lookup = self.at((np.arange(_QUANTILES) + 0.5) / _QUANTILES).astype(np.int32)

    def shuffle(self, rank: np.ndarray) -> np.ndarray:
        if self.step == 1 and self.shift == 0:
            return rank
        return (rank * self.step + self.shift) % self.size

    def at(self, u: np.ndarray) -> np.ndarray:
        """The ids at uniform numbers ``u`` (closed form)."""
        return self.shuffle(power_law_rank(u, self.size, self.exponent))

    def draw(self, rng: np.random.Generator, shape) -> np.ndarray:
        if self.lookup is not None:
            return self.lookup.take(rng.integers(0, _QUANTILES, shape, dtype=np.uint16))
        return self.at(rng.random(shape))

    def at_hash(self, hashed: np.ndarray) -> np.ndarray:
        """The ids at hashes: a fixed function of whatever was hashed."""
        if self.lookup is not None:
            return self.lookup.take(_quantile(hashed))
        return self.at(_uniform(hashed))


def _coprime_step(rng: np.random.Generator, size: int) -> int:
    while True:
        step = int(rng.integers(1, max(size, 2)))
        if math.gcd(step, size) == 1:
            return step


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Torch's intra-op threads for the duration (the generator parallelises over chunks instead)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ---------------------------------------------------------------------------- rows and the log


@dataclass(frozen=True)
class IndustrialRows:
    """Rows of the log: model inputs, labels ``[n, T]`` and the true probabilities ``[n, T]``."""

    categorical: np.ndarray  # int32 [n, Fc]
    numeric: np.ndarray  # float32 [n, Fn]
    sequence: np.ndarray | None  # int32 [n, Fs, L], 0 = padding
    labels: np.ndarray  # float32 [n, T]
    probability: np.ndarray  # float64 [n, T]

    def __len__(self) -> int:
        return self.categorical.shape[0]

    def head(self, n: int) -> "IndustrialRows":
        if n >= len(self):
            return self
        return IndustrialRows(
            self.categorical[:n], self.numeric[:n], None if self.sequence is None else self.sequence[:n],
            self.labels[:n], self.probability[:n],
        )  # fmt: skip


@dataclass(frozen=True)
class _Slot:
    """Rows ``offset + (id // divisor) % modulus`` of the flat teacher table (a table or one compositional half)."""

    offset: int
    divisor: int = 1
    modulus: int | None = None


class IndustrialClickLog:
    """The ground truth of an industrial-shape click log and its chunked row generator.

    Example:
        >>> log = IndustrialClickLog(IndustrialConfig(largest_vocab=1_000, train_rows=10, valid_rows=10, test_rows=10))
        >>> rows = log.chunk("train", 0)
        >>> len(rows) == CHUNK_ROWS, rows.labels.shape[1], log.features.num_fields
        (True, 2, 48)
    """

    def __init__(self, config: IndustrialConfig) -> None:
        self.config = config
        rng = np.random.default_rng([config.seed, 0])
        largest = config.largest_vocab

        def resolve(size: int | float) -> int:
            ids = round(size * largest) if isinstance(size, float) else size
            return int(min(max(ids, 2), largest))

        emitted = [
            *USER_FIELDS[: config.user_fields],
            *AD_FIELDS[: config.ad_fields],
            *CONTEXT_FIELDS[: config.context_fields],
        ]
        self._crosses = CROSS_FIELDS[: config.cross_fields]
        self._numerics = NUMERIC_FIELDS[: config.numeric_fields]
        self._sequences = SEQUENCE_FIELDS[: config.sequence_fields]
        catalogue = {f.name: f for f in (*USER_FIELDS, *AD_FIELDS, *CONTEXT_FIELDS)}

        # the fields to compute: the emitted ones and everything they are made from
        needed = {f.name for f in emitted} | {n for c in self._crosses for n in (c.a, c.b)}
        needed |= {f.entity for f in self._numerics if f.entity} | {s.item for s in self._sequences}
        if self._sequences:
            needed.add("user_id")  # a row's history length and favourites are the user's
        for name in list(needed):
            while catalogue[name].parent:
                name = catalogue[name].parent
                needed.add(name)
        self._computed = [f for f in catalogue.values() if f.name in needed]  # catalogue order: parents first

        self.sizes: dict[str, int] = {}
        self._laws: dict[str, _Law] = {}
        self._salts: dict[str, np.uint64] = {}
        self._derived: dict[str, np.ndarray] = {}  # child id of every parent id, for small parents
        for f in self._computed:
            self.sizes[f.name] = resolve(f.size)
            exponent = config.zipf_exponent if f.exponent is None else f.exponent
            self._laws[f.name] = _Law(self.sizes[f.name], exponent, f.ordered, rng)
            self._salts[f.name] = np.uint64(rng.integers(2**63))
            if f.parent and self.sizes[f.parent] <= _CACHE_PARENT:
                self._derived[f.name] = self._derive(f.name, np.arange(self.sizes[f.parent])).astype(np.int32)
        self._cross_exact: dict[str, bool] = {}
        for c in self._crosses:
            pairs = self.sizes[c.a] * self.sizes[c.b]
            self._cross_exact[c.name] = pairs <= resolve(c.size)
            self.sizes[c.name] = pairs if self._cross_exact[c.name] else resolve(c.size)
            self._salts[c.name] = np.uint64(rng.integers(2**63))
        self._entity_values: dict[str, np.ndarray] = {}  # the fixed part of a numeric, for small entities
        for f in self._numerics:
            self._salts[f.name] = np.uint64(rng.integers(2**63))
            if f.entity and self.sizes[f.entity] <= _CACHE_PARENT:
                self._entity_values[f.name] = self._entity_value(f, np.arange(self.sizes[f.entity]))
        self._user_salt = np.uint64(rng.integers(2**63))

        self.categorical_names = [f.name for f in emitted] + [c.name for c in self._crosses]
        self.features = FeatureSpec(
            categorical=tuple(CategoricalField(n, self.sizes[n]) for n in self.categorical_names),
            numeric=tuple(NumericField(f.name) for f in self._numerics),
            sequence=tuple(
                SequenceField(s.name, self.sizes[s.item] + 1, config.sequence_length) for s in self._sequences
            ),
            tasks=tuple(TaskSpec(t) for t in TASKS),
        )
        self._build_teacher(np.random.default_rng([config.seed, 0, 1]))
        self._calibrate()

    def _derive(self, name: str, parent: np.ndarray) -> np.ndarray:
        return self._laws[name].at_hash(_hash(parent, self._salts[name]))

    def _entity_value(self, f: _Numeric, entity: np.ndarray) -> np.ndarray:
        return _normal_quantiles().take(_quantile(_hash(entity, self._salts[f.name])))

    # ------------------------------------------------------------------ the teacher

    def _build_teacher(self, rng: np.random.Generator) -> None:
        """Teacher tables (one flat table of k-vectors), the slots that read them, and the weights."""
        config, k = self.config, self.config.teacher_dim
        tables: list[np.ndarray] = []
        rows = 0

        def table(n: int) -> int:
            """n random rows after a zero row (which a padding position of a multi-valued field reads)."""
            nonlocal rows
            tables.extend([np.zeros((1, k), np.float32), rng.standard_normal((n, k), dtype=np.float32)])
            rows += n + 1
            return rows - n

        def slots_of(size: int) -> list[_Slot]:
            if size <= TEACHER_TABLE_ROWS:
                return [_Slot(table(size))]
            m = math.isqrt(size - 1) + 1  # ⌈√size⌉: quotient and remainder tables of about √size rows
            return [_Slot(table(-(-size // m)), divisor=m), _Slot(table(m), modulus=m)]

        cat_slots = [slots_of(self.sizes[n]) for n in self.categorical_names]
        item_slots: dict[str, list[_Slot]] = {}
        for s in self._sequences:
            if s.item not in item_slots:  # a multi-valued field shares its item field's table
                known = s.item in self.categorical_names
                item_slots[s.item] = cat_slots[self.categorical_names.index(s.item)] if known else slots_of(self.sizes[s.item])
        self._seq_slots = [item_slots[s.item] for s in self._sequences]
        # categorical slots: each field's first, in field order, then the second halves of compositional ones
        self._cat_slots = [(f, slots[0]) for f, slots in enumerate(cat_slots)]
        self._cat_slots += [(f, slots[1]) for f, slots in enumerate(cat_slots) if len(slots) == 2]
        self._cat_offsets = np.array([slots[0].offset for slots in cat_slots], dtype=np.int32)
        self._numeric_rows = table(len(self._numerics))
        self._table = np.concatenate(tables)
        # compositional fields: their columns, divisors and the offsets of their two halves
        halved = [(f, slots) for f, slots in enumerate(cat_slots) if len(slots) == 2]
        self._halved = np.array([f for f, _ in halved], dtype=np.intp)
        self._halved_divisor = np.array([slots[0].divisor for _, slots in halved], dtype=np.int32)
        self._halved_offsets = np.array([[slots[0].offset, slots[1].offset] for _, slots in halved], dtype=np.int32).reshape(-1, 2)

        fields = self.features.num_fields
        importance = np.exp(0.5 * rng.standard_normal(fields))
        importance /= np.sqrt(np.mean(importance**2))
        self.importance = dict(zip(self.features.names, importance.tolist()))

        # x · [first order (T) | product factors | first layer], one matmul: weights [F k, T + factors + H1]
        hidden = config.teacher_hidden
        first = rng.standard_normal((fields, k, len(TASKS))) / np.sqrt(k) * importance[:, None, None]
        self._products: list[list[list[int]]] = []  # per task, per term: its factor columns
        factor_fields = []
        factors = []
        for _task in TASKS:
            terms = []
            for _ in range(config.num_products):
                order = int(rng.integers(config.min_order, config.max_order + 1))
                terms.append(list(range(len(factor_fields), len(factor_fields) + order)))
                for f in rng.choice(fields, order, replace=False):
                    column = np.zeros((fields, k))
                    column[f] = rng.standard_normal(k) / np.sqrt(k)  # p · e_f / √k
                    factor_fields.append(int(f))
                    factors.append(column)
            self._products.append(terms)
        factors = np.stack(factors, axis=-1) if factors else np.zeros((fields, k, 0))
        layer1 = rng.standard_normal((fields, k, hidden[0])) * (_GAIN / np.sqrt(fields * k)) * importance[:, None, None]
        weights = np.concatenate([first, factors, layer1], axis=-1)  # per field: [k, columns]

        # x is a sum of blocks of k values; a block's weights are its field's times its scale (1/√2 for a half)
        def block_weights(blocks: list[tuple[int, float]]) -> torch.Tensor | None:
            if not blocks:
                return None
            owners, scales = zip(*blocks)
            w = weights[list(owners)] * np.asarray(scales)[:, None, None]
            return torch.from_numpy(w.reshape(len(blocks) * k, -1).astype(np.float32))

        halves = {f for f, slots in enumerate(cat_slots) if len(slots) == 2}
        self._cat_weights = block_weights([(f, 1 / math.sqrt(2) if f in halves else 1.0) for f, _ in self._cat_slots])
        fc, fn = len(cat_slots), len(self._numerics)
        rest = [(fc + j, 1.0) for j in range(fn)]
        for j, slots in enumerate(self._seq_slots):
            rest += [(fc + fn + j, 1 / math.sqrt(len(slots)))] * len(slots)
        self._rest_weights = block_weights(rest)
        self._sum_positions = torch.from_numpy(np.tile(np.eye(k, dtype=np.float32), (config.sequence_length, 1)))
        self._num_factors = len(factor_fields)
        self._layers = [
            torch.from_numpy((rng.standard_normal((a, b)) * (_GAIN / np.sqrt(a))).astype(np.float32))
            for a, b in zip(hidden[:-1], hidden[1:])
        ]
        self._head = torch.from_numpy((rng.standard_normal((hidden[-1], len(TASKS))) / np.sqrt(hidden[-1])).astype(np.float32))
        self.product_fields = [[[self.features.names[factor_fields[c]] for c in term] for term in terms] for terms in self._products]
        self._scales = np.ones((len(TASKS), 3))
        self._biases = np.zeros(len(TASKS))

    def _projected(self, categorical: np.ndarray, numeric: np.ndarray, sequence: np.ndarray | None) -> torch.Tensor:
        """``x · [first order | product factors | first layer]`` of a block of rows, ``[n, columns]``.

        x is never assembled: the categorical slots are one gather times their weights,
        the numeric and pooled multi-valued blocks another product.
        """
        n = categorical.shape[0]
        out = None
        if self._cat_weights is not None:
            index = categorical + self._cat_offsets  # [n, Fc] int32: rows of the table fields
            if self._halved.size:  # Q[id // m] in the field's column, R[id mod m] appended
                ids = categorical[:, self._halved]
                quotient = ids // self._halved_divisor
                index[:, self._halved] = quotient + self._halved_offsets[:, 0]
                index = np.concatenate([index, ids - quotient * self._halved_divisor + self._halved_offsets[:, 1]], axis=1)
            slots = self._table.take(index, axis=0)  # [n, slots, k]
            out = torch.from_numpy(slots.reshape(n, -1)) @ self._cat_weights
        if self._rest_weights is not None:
            blocks = []
            if self._numerics:
                rows = self._table[self._numeric_rows : self._numeric_rows + numeric.shape[1]]
                blocks.append(torch.from_numpy((numeric[:, :, None] * rows[None]).reshape(n, -1)))  # v_f · P_f
            for j, slots in enumerate(self._seq_slots):
                ids = sequence[:, j]  # [n, L], 0 = padding
                scale = torch.from_numpy(1.0 / np.maximum(np.count_nonzero(ids, axis=1), 1).astype(np.float32))
                items = ids - 1  # padding: -1, which reads the zero row before each table
                for slot in slots:  # the mean of the present items' embeddings (0 for none)
                    rows = items // slot.divisor if slot.divisor > 1 else items
                    if slot.modulus is not None:
                        rows = np.fmod(rows, slot.modulus)  # fmod keeps -1 at -1
                    gathered = torch.from_numpy(self._table.take(rows + slot.offset, axis=0).reshape(n, -1))
                    blocks.append((gathered @ self._sum_positions) * scale[:, None])
            projected = torch.cat(blocks, dim=1) @ self._rest_weights
            out = projected if out is None else out + projected
        return out

    def _components(self, categorical: np.ndarray, numeric: np.ndarray, sequence: np.ndarray | None) -> np.ndarray:
        """The unscaled components (first order, deep, products) of every task: ``[n, T, 3]``."""
        n, tasks, nf = categorical.shape[0], len(TASKS), self._num_factors
        linear = np.empty((n, tasks + nf), dtype=np.float32)  # first order, then the product factors
        deep = np.empty((n, tasks), dtype=np.float32)
        for start in range(0, n, _BLOCK_ROWS):
            stop = min(start + _BLOCK_ROWS, n)
            projected = self._projected(  # [b, T + factors + H1]
                categorical[start:stop], numeric[start:stop], None if sequence is None else sequence[start:stop]
            )
            h = torch.tanh(projected[:, tasks + nf :])
            for layer in self._layers:
                h = torch.tanh(h @ layer)
            linear[start:stop] = projected[:, : tasks + nf].numpy()
            deep[start:stop] = (h @ self._head).numpy()
        out = np.empty((n, tasks, 3))
        out[:, :, 0] = linear[:, :tasks]
        out[:, :, 1] = deep
        factors = np.ascontiguousarray(linear[:, tasks:].T, dtype=np.float64)  # [factors, n]: rows contiguous
        for t, terms in enumerate(self._products):
            high = np.zeros(n)
            for term in terms:
                product = factors[term[0]].copy()
                for c in term[1:]:
                    product *= factors[c]
                high += product
            out[:, t, 2] = high
        return out

    def _calibrate(self) -> None:
        """Scale each component to its std and solve the biases, on a fixed sample."""
        config = self.config
        with _torch_threads(1):
            categorical, numeric, sequence = self._draw(np.random.default_rng([config.seed, 1]), CALIBRATION_ROWS)
            parts = self._components(categorical, numeric, sequence)  # [n, T, 3]
        targets = np.array([config.first_order, config.deep, config.high_order])
        spread = parts.std(axis=0)
        self._scales = np.where(spread > 0, targets / np.where(spread > 0, spread, 1.0), 0.0)
        z = (parts * self._scales).sum(axis=2)
        self._biases[0] = _solve_bias(z[:, 0], config.base_ctr)
        click = _sigmoid(z[:, 0] + self._biases[0])
        self._biases[1] = _solve_bias(z[:, 1], config.good_click_rate, weights=click)

    def logits(self, categorical: np.ndarray, numeric: np.ndarray, sequence: np.ndarray | None) -> np.ndarray:
        """``[n, T]``: z_click and z_good (the logit of P(good | click))."""
        return (self._components(categorical, numeric, sequence) * self._scales).sum(axis=2) + self._biases

    def probability(self, categorical: np.ndarray, numeric: np.ndarray, sequence: np.ndarray | None) -> np.ndarray:
        """The true probability of each row and task ``[n, T]``: a click, and a good click."""
        z = self.logits(categorical, numeric, sequence)
        click = _sigmoid(z[:, 0])
        return np.stack([click, click * _sigmoid(z[:, 1])], axis=1)

    # ------------------------------------------------------------------ rows

    def _draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """n rows of model inputs: categorical int32 [n, Fc], numeric float32 [n, Fn], sequence int32 [n, Fs, L]."""
        values: dict[str, np.ndarray] = {}
        for f in self._computed:
            if f.parent is None:
                values[f.name] = self._laws[f.name].draw(rng, n)
            elif f.name in self._derived:
                values[f.name] = self._derived[f.name].take(values[f.parent])
            else:
                values[f.name] = self._derive(f.name, values[f.parent])
        for c in self._crosses:
            pair = values[c.a].astype(np.int64) * self.sizes[c.b] + values[c.b]
            if self._cross_exact[c.name]:
                values[c.name] = pair
            else:
                values[c.name] = _hash(pair, self._salts[c.name]) % np.uint64(self.sizes[c.name])
        columns = np.empty((len(self.categorical_names), n), dtype=np.int32)  # filled by rows, then transposed
        for j, name in enumerate(self.categorical_names):
            columns[j] = values[name]
        categorical = np.ascontiguousarray(columns.T)

        numeric = np.empty((len(self._numerics), n), dtype=np.float32)
        for j, f in enumerate(self._numerics):
            numeric[j] = rng.standard_normal(n, dtype=np.float32)
            if f.entity is None:
                continue
            entity = values[f.entity]
            fixed = self._entity_values[f.name].take(entity) if f.name in self._entity_values else self._entity_value(f, entity)
            numeric[j] *= np.float32(f.noise)
            numeric[j] += np.float32(math.sqrt(1.0 - f.noise**2)) * fixed
        numeric = np.ascontiguousarray(numeric.T)

        sequence = None
        if self._sequences:
            length = self.config.sequence_length
            sequence = np.empty((n, len(self._sequences), length), dtype=np.int32)
            user = _hash(values["user_id"], self._user_salt)
            activity = 0.25 + 0.75 * _uniform(user)  # how much history the user has
            position = np.arange(length, dtype=np.int32)
            for j, s in enumerate(self._sequences):
                count = ((length + 1) * activity * rng.random(n)).astype(np.int32)  # items present: 0..L
                law = self._laws[s.item]
                items = law.draw(rng, (n, length)).astype(np.int32, copy=False)
                if s.personal:  # the user's favourites: the id space rotated by a per-user offset
                    offset = ((user & np.uint64(0xFFFFFFFF)) % np.uint64(law.size)).astype(np.int32)
                    items += offset[:, None]
                    items -= law.size * (items >= law.size)
                items += 1
                items *= position[None, :] < count[:, None]
                sequence[:, j] = items
        return categorical, numeric, sequence

    def chunk(self, split: str, index: int) -> IndustrialRows:
        """Chunk ``index`` of ``split`` (``CHUNK_ROWS`` rows), from the generator seeded by (seed, split, chunk)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        if index < 0:
            raise ValueError(f"chunk index must be >= 0, got {index}")
        rng = np.random.default_rng([self.config.seed, 2, SPLITS.index(split), index])
        categorical, numeric, sequence = self._draw(rng, CHUNK_ROWS)
        uniform = rng.random((CHUNK_ROWS, 2))
        with _torch_threads(1) if torch.get_num_threads() != 1 else contextlib.nullcontext():
            z = self.logits(categorical, numeric, sequence)
        click_prob, good_given_click = _sigmoid(z[:, 0]), _sigmoid(z[:, 1])
        click = uniform[:, 0] < click_prob
        good = click & (uniform[:, 1] < good_given_click)
        labels = np.stack([click, good], axis=1).astype(np.float32)
        prob = np.stack([click_prob, click_prob * good_given_click], axis=1)
        return IndustrialRows(categorical, numeric, sequence, labels, prob)

    def chunks(self, split: str, rows: int | None = None, workers: int = 1) -> Iterator[IndustrialRows]:
        """The first ``rows`` rows of ``split`` (default: the config's), chunk by chunk, in order;
        ``workers`` threads make chunks in parallel (the same rows for any number)."""
        rows = self.config.num_rows[split] if rows is None else rows
        count = -(-rows // CHUNK_ROWS)

        def make(index: int) -> IndustrialRows:
            return self.chunk(split, index).head(rows - index * CHUNK_ROWS)

        with _torch_threads(1):  # set once here: the workers then leave it alone
            if workers <= 1:
                yield from (make(i) for i in range(count))
            else:
                yield from _in_parallel(make, count, workers)


def _in_parallel(make: Callable[[int], IndustrialRows], count: int, workers: int) -> Iterator[IndustrialRows]:
    """``make(0), make(1), ...`` in order, made by ``workers`` threads, at most ``2 · workers`` ahead."""
    with ThreadPoolExecutor(workers) as pool:
        pending = [pool.submit(make, i) for i in range(min(count, 2 * workers))]
        for index in range(count):
            part = pending.pop(0).result()
            if index + len(pending) + 1 < count:
                pending.append(pool.submit(make, index + len(pending) + 1))
            yield part


def _solve_bias(logit: np.ndarray, target: float, weights: np.ndarray | None = None) -> float:
    """The b with the (weighted) mean of sigmoid(logit + b) equal to ``target``, by bisection."""
    weights = np.ones_like(logit) if weights is None else weights
    lo, hi = -40.0, 40.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if np.average(_sigmoid(logit + mid), weights=weights) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


# ---------------------------------------------------------------------------- ceilings


class _SplitStats:
    """Rows, positives, and the ceiling (AUC from a histogram of the true logit, logloss) of a split."""

    def __init__(self) -> None:
        self.rows = 0
        self.positives = np.zeros(len(TASKS), dtype=np.int64)
        self.loss = np.zeros(len(TASKS))
        self.counts = np.zeros((len(TASKS), 2 * _AUC_BINS), dtype=np.int64)  # [task, 2 · bin + label]

    def update(self, rows: IndustrialRows) -> None:
        p = np.clip(rows.probability, 1e-300, 1.0 - 1e-16)
        y = rows.labels.astype(np.float64)
        self.rows += len(rows)
        self.positives += rows.labels.sum(axis=0).astype(np.int64)
        self.loss -= (y * np.log(p) + (1.0 - y) * np.log1p(-p)).sum(axis=0)
        z = np.log(p) - np.log1p(-p)
        bins = np.clip(((z + _AUC_RANGE) * (_AUC_BINS / (2 * _AUC_RANGE))).astype(np.int64), 0, _AUC_BINS - 1)
        cell = (2 * bins + rows.labels.astype(np.int64)) + 2 * _AUC_BINS * np.arange(len(TASKS))
        self.counts += np.bincount(cell.ravel(), minlength=self.counts.size).reshape(self.counts.shape)

    def ceiling(self) -> dict[str, dict[str, float]]:
        result = {}
        for t, task in enumerate(TASKS):
            negative, positive = self.counts[t, 0::2].astype(np.float64), self.counts[t, 1::2].astype(np.float64)
            n_pos, n_neg = positive.sum(), negative.sum()
            below = np.cumsum(negative) - negative
            auc = float((positive * (below + 0.5 * negative)).sum() / (n_pos * n_neg)) if n_pos and n_neg else float("nan")
            result[task] = {"auc": auc, "logloss": float(self.loss[t] / max(self.rows, 1))}
        return result

    def positive_rate(self) -> dict[str, float]:
        return {task: float(self.positives[t] / max(self.rows, 1)) for t, task in enumerate(TASKS)}


def _summary(config: IndustrialConfig, stats: dict[str, _SplitStats]) -> dict:
    return {
        "config": to_dict(config),
        "rows": {name: s.rows for name, s in stats.items()},
        "ceiling": {name: s.ceiling() for name, s in stats.items()},
        "positive_rate": {name: s.positive_rate() for name, s in stats.items()},
    }


# ---------------------------------------------------------------------------- in memory and on disk


def default_workers() -> int:
    """Threads that make chunks: one per core, at most 4."""
    return max(1, min(4, os.cpu_count() or 1))


def make_industrial(config: IndustrialConfig, workers: int | None = None) -> Dataset:
    """Train / valid / test splits of an industrial-shape log, in memory.

    ``info``: ``source`` ``industrial``, ``ceiling[split][task]`` (``auc`` and
    ``logloss`` of the true probabilities, as :func:`mldcn.data.synthetic.make_synthetic`
    reports them), ``positive_rate[split][task]``, ``<split>_rows``.
    """
    log = IndustrialClickLog(config)
    workers = default_workers() if workers is None else workers
    features = log.features
    splits, stats = {}, {}
    for name in SPLITS:
        rows = config.num_rows[name]
        categorical = np.empty((rows, len(features.categorical)), dtype=np.int32)
        numeric = np.empty((rows, len(features.numeric)), dtype=np.float32)
        sequence = np.empty((rows, len(features.sequence), features.sequence_length), dtype=np.int32) if features.sequence else None
        labels = np.empty((rows, features.num_tasks), dtype=np.float32)
        stats[name] = _SplitStats()
        start = 0
        for part in log.chunks(name, workers=workers):
            stop = start + len(part)
            categorical[start:stop], numeric[start:stop], labels[start:stop] = part.categorical, part.numeric, part.labels
            if sequence is not None:
                sequence[start:stop] = part.sequence
            stats[name].update(part)
            start = stop
        splits[name] = Batch.from_numpy(categorical, numeric, sequence, labels)
    summary = _summary(config, stats)
    info = {
        "source": "industrial",
        "ceiling": summary["ceiling"],
        "positive_rate": summary["positive_rate"],
        **{f"{name}_rows": n for name, n in summary["rows"].items()},
    }
    return Dataset(features, splits["train"], splits["valid"], splits["test"], info)


def write_industrial(
    config: IndustrialConfig,
    out_dir: str | Path,
    progress: Callable[[str], None] | None = None,
    workers: int | None = None,
) -> dict:
    """Stream the log to ``out_dir`` in the prepared format; return its report.

    ``<out>/feature_map.json`` and ``<out>/<split>/{categorical,numeric,labels,sequence}.bin``,
    as :func:`mldcn.data.prepared.load_prepared` reads them, with a ``generator`` entry
    (the config, ceilings, positive rates, the teacher's field importances and
    product terms). Chunks are written as they are made by ``workers`` threads, so
    memory is a few chunks whatever the size. The directory is built in a hidden
    sibling and moved into place when whole: an interrupt leaves ``out_dir`` as it
    was. An existing ``out_dir`` is replaced only when it is empty or an earlier
    log of this generator.

    The report: ``rows``, ``ceiling``, ``positive_rate`` (per split), ``seconds``,
    ``rows_per_second``, ``bytes`` (the arrays and feature map) and ``path``.
    """
    out_dir = Path(out_dir)
    _check_replaceable(out_dir)
    _remove_stale_builds(out_dir)
    workers = default_workers() if workers is None else workers
    echo = progress or (lambda message: None)
    start = time.perf_counter()
    log = IndustrialClickLog(config)
    stats = {}
    with atomic_path(out_dir) as building:
        for name in SPLITS:
            (building / name).mkdir(parents=True)
            stats[name] = _SplitStats()
            arrays = ["categorical", "numeric", "labels"] + (["sequence"] if log.features.sequence else [])
            with contextlib.ExitStack() as stack:
                files = {a: stack.enter_context(open(building / name / f"{a}.bin", "wb")) for a in arrays}
                for part in log.chunks(name, workers=workers):
                    part.categorical.astype("<i4", copy=False).tofile(files["categorical"])
                    part.numeric.astype("<f4", copy=False).tofile(files["numeric"])
                    part.labels.astype("<f4", copy=False).tofile(files["labels"])
                    if part.sequence is not None:
                        part.sequence.astype("<i4", copy=False).tofile(files["sequence"])
                    stats[name].update(part)
            echo(f"{name}: {stats[name].rows:,} rows")
        seconds = time.perf_counter() - start
        summary = _summary(config, stats)
        feature_map = {
            "format_version": FORMAT_VERSION,
            "schema": {"name": "industrial", "weight": None},
            "features": log.features.to_dict(),
            "rows": summary["rows"],
            "generator": {
                "name": "industrial",
                **summary,
                "importance": log.importance,
                "products": dict(zip(TASKS, log.product_fields)),
            },
        }
        (building / "feature_map.json").write_text(json.dumps(feature_map, indent=2))
        size = sum(f.stat().st_size for f in building.rglob("*") if f.is_file())
    rows = sum(summary["rows"].values())
    return {**summary, "path": str(out_dir), "seconds": seconds, "rows_per_second": rows / seconds, "bytes": size}


def _check_replaceable(out_dir: Path) -> None:
    """Refuse to replace a directory that is neither empty nor an earlier log of this generator."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ConfigError(f"{out_dir} exists and is not a directory")
    entries = {p.name for p in out_dir.iterdir()}
    if not entries:
        return
    ours = entries <= {"feature_map.json", *SPLITS}
    try:
        ours = ours and json.loads((out_dir / "feature_map.json").read_text())["schema"]["name"] == "industrial"
    except (OSError, ValueError, KeyError, TypeError):
        ours = False
    if not ours:
        raise ConfigError(
            f"{out_dir} exists and is not an industrial log written by `mldcn synth`; "
            "choose a new directory or remove it"
        )


def _remove_stale_builds(out_dir: Path) -> None:
    """Remove the hidden build folders of earlier runs that were killed (their process is gone)."""
    pattern = temporary_sibling(out_dir).name.rsplit("-", 1)[0] + "-*"
    for folder in out_dir.parent.glob(pattern) if out_dir.parent.exists() else ():
        pid = folder.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
