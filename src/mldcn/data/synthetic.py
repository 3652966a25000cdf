"""A synthetic click log with planted, instance-dependent feature interactions.

The embedded default data set. Every row's true click probability is known, so the
best achievable AUC on a split (the *ceiling*) is reported next to each model.

Generative model, for a row with categorical ids ``c_f`` and numeric values ``v_j``:

    u_f = T_f[c_f] (categorical) or v_f · P_f (numeric)        # latent vector, R^k
    logit = bias
          + α1 · Σ_f w_f[c_f] + Σ_j a_j v_j                     # first order
          + α2 · Σ_{(f,g)} (p·u_f)(q·u_g)                        # low-rank pairwise
          + α3 · Σ_{(f,g,h)} (p·u_f)(q·u_g)(s·u_h)               # third order
          + αg · Σ_{(f,g | h)} tanh(β q_h·u_h) · (p·u_f)(q·u_g)  # instance-gated pairwise
    click ~ Bernoulli(sigmoid(logit))

The gated terms are pairwise interactions whose strength, and sign, depend on a
third (context) field of the same row: a model must select interaction directions
per example, which is what ML-DCN's instance-conditioned mask is for. Each
component is scaled to the given standard deviation (α), and the bias is solved
so the mean click probability equals ``base_ctr``.

Several tasks (``tasks``, e.g. a click and a click-quality label): the first
task's logit is the one above; task t > 0 has a part shared with it and a part
of its own,

    logit_t = bias_t + ρ · z_0 + sqrt(1 − ρ²) · (σ_0 / σ_t) · z_t

where z_0 is the first task's logit without its bias (std σ_0), z_t a logit of
the same form over the same latent vectors u_f but with its own terms (own
first-order weights, own pairs, triples and gated triples; std σ_t), and ρ =
``task_correlation`` the correlation of the two logits. So the tasks share latent
structure and each has a part of its own; every task's ceiling is reported.

This log plants instance-gated interactions, the structure ML-DCN's mask and
MaskNet model, so it favours those families by construction: it is the
embedded default and the tests' data, not a neutral benchmark. For scaling
studies use the industrial-shape log of :mod:`mldcn.data.industrial`
(``mldcn synth``), whose teacher is shaped like no one family.

Categorical ids follow a Zipf law per field. Rows are generated in fixed chunks
with a generator seeded by (seed, chunk), so any row range is reproducible
without generating what comes before it, and memory stays bounded for any size.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from mldcn.batch import Batch
from mldcn.config import Config, ConfigError
from mldcn.data.dataset import Dataset, positive_rates
from mldcn.features import CategoricalField, FeatureSpec, NumericField, TaskSpec
from mldcn.metrics import auc, logloss

CHUNK_ROWS = 65_536
_CALIBRATION_ROWS = 65_536


@dataclass(frozen=True)
class SyntheticConfig(Config):
    """Size and shape of the synthetic click log.

    The defaults give a CTR problem of 10 categorical fields with vocabularies
    from 5 to 5,000 (Zipf-distributed) and 4 numeric fields, CTR ≈ 0.15, where
    the best models of 1M training rows get within about 0.03 AUC of the ceiling.
    """

    train_rows: int = 1_000_000
    valid_rows: int = 100_000
    test_rows: int = 100_000
    seed: int = 0
    vocab_sizes: tuple[int, ...] = (5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
    num_numeric: int = 4
    zipf_exponent: float = 1.05
    latent_dim: int = 4
    base_ctr: float = 0.15
    first_order: float = 0.8
    pairwise: float = 0.8
    higher_order: float = 0.5
    gated: float = 1.0
    gate_sharpness: float = 2.0
    num_pairs: int = 8
    num_triples: int = 4
    num_gated: int = 6
    tasks: tuple[str, ...] = ("click",)
    task_correlation: float = 0.5
    task_rates: tuple[float, ...] = ()

    _positive = ("train_rows", "valid_rows", "test_rows", "vocab_sizes", "latent_dim")
    _non_negative = (
        "num_numeric",
        "first_order",
        "pairwise",
        "higher_order",
        "gated",
        "num_pairs",
        "num_triples",
        "num_gated",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.base_ctr < 1.0:
            raise ValueError(f"base_ctr must be in (0, 1), got {self.base_ctr}")
        if len(self.vocab_sizes) + self.num_numeric < 3:
            raise ValueError("the synthetic log needs at least 3 fields")
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"SyntheticConfig.tasks must be distinct names, got {list(self.tasks)}")
        if not -1.0 <= self.task_correlation <= 1.0:
            raise ConfigError(f"SyntheticConfig.task_correlation must be in [-1, 1], got {self.task_correlation}")
        if self.task_rates and len(self.task_rates) != len(self.tasks) - 1:
            raise ConfigError(
                f"SyntheticConfig.task_rates gives the positive rate of each task after the first: "
                f"{len(self.tasks) - 1} values, got {len(self.task_rates)}"
            )
        if any(not 0.0 < r < 1.0 for r in self.task_rates):
            raise ConfigError(f"SyntheticConfig.task_rates must be in (0, 1), got {list(self.task_rates)}")


@dataclass
class _Terms:
    """One task's logit terms over the shared latent vectors (first order, pairs, triples, gated)."""

    first_order: list[np.ndarray]
    numeric_first: np.ndarray
    pairs: np.ndarray
    pair_dirs: np.ndarray
    triples: np.ndarray
    triple_dirs: np.ndarray
    gated: np.ndarray
    gated_dirs: np.ndarray
    scales: list[float] = field(default_factory=list)


class SyntheticClickLog:
    """The ground-truth model of a synthetic click log and a row generator.

    Example:
        >>> log = SyntheticClickLog(SyntheticConfig(vocab_sizes=(10, 20, 30), num_numeric=1))
        >>> categorical, numeric, prob, label = log.rows(0, 5)
        >>> categorical.shape, numeric.shape, prob.shape, label.shape
        ((5, 3), (5, 1), (5, 1), (5, 1))
    """

    def __init__(self, config: SyntheticConfig) -> None:
        self.config = config
        rng = np.random.default_rng([config.seed, 0])
        k = config.latent_dim
        self.num_fields = len(config.vocab_sizes) + config.num_numeric

        # Zipf frequencies per field, over a random permutation of the ids.
        self._cdfs = []
        self._perms = []
        for size in config.vocab_sizes:
            weights = 1.0 / np.arange(1, size + 1) ** config.zipf_exponent
            self._cdfs.append(np.cumsum(weights) / weights.sum())
            self._perms.append(rng.permutation(size))

        self._tables = [rng.normal(0.0, 1.0, (size, k)) for size in config.vocab_sizes]
        self._numeric_latent = rng.normal(0.0, 1.0, (config.num_numeric, k))
        # the first task's terms continue the same stream; each further task draws its own
        self._terms = [self._draw_terms(rng)]
        self._terms += [self._draw_terms(np.random.default_rng([config.seed, 10, t])) for t in range(1, len(config.tasks))]

        # Scale each component to its target std and solve the biases, on a fixed sample.
        sample = self._draw(np.random.default_rng([config.seed, 1]), _CALIBRATION_ROWS)
        targets = [config.first_order, config.pairwise, config.higher_order, config.gated]
        for terms in self._terms:
            parts = self._components(*sample, terms)
            terms.scales = [t / part.std() if part.std() > 0 else 0.0 for t, part in zip(targets, parts)]
        logits = [self._logit(*sample, terms) for terms in self._terms]
        self._spread = [float(z.std()) if z.std() > 0 else 1.0 for z in logits]
        mixed = self._mix(logits)
        rates = (config.base_ctr, *(config.task_rates or (config.base_ctr,) * (len(config.tasks) - 1)))
        self._biases = [_solve_bias(z, rate) for z, rate in zip(mixed, rates)]

    def _draw_terms(self, rng: np.random.Generator) -> _Terms:
        config, k = self.config, self.config.latent_dim

        def fields(count: int, arity: int) -> np.ndarray:
            return np.stack([rng.choice(self.num_fields, arity, replace=False) for _ in range(count)])

        def directions(count: int, arity: int) -> np.ndarray:
            return rng.normal(0.0, 1.0, (count, arity, k)) / np.sqrt(k)

        first_order = [rng.normal(0.0, 1.0, size) for size in config.vocab_sizes]
        numeric_first = rng.normal(0.0, 1.0, config.num_numeric)
        pairs, pair_dirs = fields(config.num_pairs, 2), directions(config.num_pairs, 2)
        triples, triple_dirs = fields(config.num_triples, 3), directions(config.num_triples, 3)
        gated, gated_dirs = fields(config.num_gated, 3), directions(config.num_gated, 3)
        return _Terms(first_order, numeric_first, pairs, pair_dirs, triples, triple_dirs, gated, gated_dirs)

    @property
    def features(self) -> FeatureSpec:
        return FeatureSpec(
            categorical=tuple(
                CategoricalField(f"c{i}", size) for i, size in enumerate(self.config.vocab_sizes)
            ),
            numeric=tuple(NumericField(f"n{j}") for j in range(self.config.num_numeric)),
            tasks=tuple(TaskSpec(name) for name in self.config.tasks),
        )

    def _draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        categorical = np.empty((n, len(self._cdfs)), dtype=np.int64)
        for f, (cdf, perm) in enumerate(zip(self._cdfs, self._perms)):
            rank = np.minimum(np.searchsorted(cdf, rng.random(n)), cdf.size - 1)
            categorical[:, f] = perm[rank]
        numeric = rng.normal(0.0, 1.0, (n, self.config.num_numeric)).astype(np.float32)
        return categorical, numeric

    def _latents(self, categorical: np.ndarray, numeric: np.ndarray) -> np.ndarray:
        """u ∈ R^{n × F × k}: each field's latent vector."""
        cat = [table[categorical[:, f]] for f, table in enumerate(self._tables)]
        num = [numeric[:, j, None].astype(np.float64) * self._numeric_latent[j] for j in range(numeric.shape[1])]
        return np.stack(cat + num, axis=1)

    def _components(self, categorical: np.ndarray, numeric: np.ndarray, terms: _Terms) -> list[np.ndarray]:
        n = categorical.shape[0]
        first = sum(w[categorical[:, f]] for f, w in enumerate(terms.first_order))
        first = first + numeric.astype(np.float64) @ terms.numeric_first
        u = self._latents(categorical, numeric)  # [n, F, k]

        def projections(fields: np.ndarray, dirs: np.ndarray) -> np.ndarray:
            # (dir_a · u_{field_a}) for each term and argument: [n, terms, arity]
            return np.einsum("ntak,tak->nta", u[:, fields], dirs)

        pair = projections(terms.pairs, terms.pair_dirs).prod(axis=2).sum(axis=1) if len(terms.pairs) else np.zeros(n)
        triple = (
            projections(terms.triples, terms.triple_dirs).prod(axis=2).sum(axis=1)
            if len(terms.triples)
            else np.zeros(n)
        )
        if len(terms.gated):
            proj = projections(terms.gated, terms.gated_dirs)  # [n, terms, 3]
            gate = np.tanh(self.config.gate_sharpness * proj[:, :, 2])
            gated = (gate * proj[:, :, 0] * proj[:, :, 1]).sum(axis=1)
        else:
            gated = np.zeros(n)
        return [first, pair, triple, gated]

    def _logit(self, categorical: np.ndarray, numeric: np.ndarray, terms: _Terms) -> np.ndarray:
        """A task's own logit without bias: its scaled components, summed."""
        return sum(s * part for s, part in zip(terms.scales, self._components(categorical, numeric, terms)))

    def _mix(self, logits: list[np.ndarray]) -> list[np.ndarray]:
        """Task 0 as it is; task t > 0 its correlation ρ with task 0 plus its own part (module docstring)."""
        rho = self.config.task_correlation
        first = logits[0]
        mixed = [first]
        for z, spread in zip(logits[1:], self._spread[1:]):
            mixed.append(rho * first + np.sqrt(1.0 - rho**2) * (self._spread[0] / spread) * z)
        return mixed

    def rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Rows ``start:stop``: categorical ids, numeric values, true probabilities ``[n, T]``, labels ``[n, T]``."""
        if not 0 <= start <= stop:
            raise ValueError(f"invalid row range {start}:{stop}")
        outputs = []
        tasks = len(self.config.tasks)
        for chunk in range(start // CHUNK_ROWS, (stop - 1) // CHUNK_ROWS + 1 if stop > start else 0):
            rng = np.random.default_rng([self.config.seed, 2, chunk])
            categorical, numeric = self._draw(rng, CHUNK_ROWS)
            uniform = rng.random(CHUNK_ROWS)[:, None]  # the first task's draws, as with one task
            if tasks > 1:
                uniform = np.hstack([uniform, rng.random((CHUNK_ROWS, tasks - 1))])
            lo = max(start - chunk * CHUNK_ROWS, 0)
            hi = min(stop - chunk * CHUNK_ROWS, CHUNK_ROWS)
            categorical, numeric, uniform = categorical[lo:hi], numeric[lo:hi], uniform[lo:hi]
            prob = self.probability(categorical, numeric)
            outputs.append((categorical, numeric, prob, (uniform < prob).astype(np.float32)))
        if not outputs:
            k = len(self._cdfs)
            return (np.empty((0, k), np.int64), np.empty((0, self.config.num_numeric), np.float32),
                    np.empty((0, tasks)), np.empty((0, tasks), np.float32))
        return tuple(np.concatenate(parts) for parts in zip(*outputs))  # type: ignore[return-value]

    def probability(self, categorical: np.ndarray, numeric: np.ndarray) -> np.ndarray:
        """The true probability of each row and task, ``[n, T]``."""
        logits = self._mix([self._logit(categorical, numeric, terms) for terms in self._terms])
        return np.stack([1.0 / (1.0 + np.exp(-(z + b))) for z, b in zip(logits, self._biases)], axis=1)

    def split(self, start: int, stop: int) -> tuple[Batch, np.ndarray]:
        """Rows ``start:stop`` as a :class:`~mldcn.batch.Batch`, with their true probabilities ``[n, T]``."""
        categorical, numeric, prob, labels = self.rows(start, stop)
        return Batch.from_numpy(categorical, numeric, labels=labels), prob


def make_synthetic(config: SyntheticConfig) -> Dataset:
    """Train / valid / test splits of a synthetic click log (consecutive row ranges).

    ``info["ceiling"][split][task]`` holds the ceiling: the AUC and logloss of the
    true probabilities of each task on each split.
    """
    log = SyntheticClickLog(config)
    bounds = np.cumsum([0, config.train_rows, config.valid_rows, config.test_rows])
    splits, ceiling = {}, {}
    for name, start, stop in zip(("train", "valid", "test"), bounds[:-1], bounds[1:]):
        split, prob = log.split(int(start), int(stop))
        splits[name] = split
        labels = split.labels.numpy()
        ceiling[name] = {}
        for t, task in enumerate(config.tasks):
            both_classes = 0 < labels[:, t].sum() < len(labels)
            ceiling[name][task] = {
                "auc": auc(labels[:, t], prob[:, t]) if both_classes else float("nan"),
                "logloss": logloss(labels[:, t], prob[:, t]),
            }
    info = {"source": "synthetic", "positive_rate": positive_rates(splits, log.features), "ceiling": ceiling}
    return Dataset(log.features, splits["train"], splits["valid"], splits["test"], info)


def _solve_bias(logit: np.ndarray, target: float) -> float:
    """The b with mean(sigmoid(logit + b)) = target, by bisection."""
    lo, hi = -30.0, 30.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if np.mean(1.0 / (1.0 + np.exp(-(logit + mid)))) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


# Criteo-like vocabulary sizes of C1..C26 (a mix of tiny and large fields).
CRITEO_VOCAB_SIZES = (
    1_400, 550, 100_000, 50_000, 300, 24, 12_000, 600, 3, 40_000, 5_000, 100_000, 3_000,
    27, 14_000, 100_000, 10, 5_000, 2_000, 4, 100_000, 18, 15, 60_000, 100, 45_000,
)


def criteo_like_config(rows: int, seed: int = 0) -> SyntheticConfig:
    """A synthetic log shaped like Criteo: 26 categorical fields and 13 numeric ones."""
    return SyntheticConfig(
        train_rows=rows, valid_rows=1, test_rows=1, seed=seed,
        vocab_sizes=CRITEO_VOCAB_SIZES, num_numeric=13, base_ctr=0.25,
    )


def write_criteo_tsv(path: str, rows: int, seed: int = 0, missing: float = 0.05) -> None:
    """Write ``rows`` synthetic rows in the raw Criteo format (no header, tab-separated):
    label, I1..I13 non-negative integers, C1..C26 8-hex-digit strings; a fraction
    ``missing`` of the values is empty. Generated and written chunk by chunk.
    """
    import pyarrow as pa
    import pyarrow.csv as pcsv

    log = SyntheticClickLog(criteo_like_config(rows, seed))
    hex_values = [
        pa.array([f"{zlib.crc32(f'{f}:{i}'.encode()):08x}" for i in range(size)])
        for f, size in enumerate(CRITEO_VOCAB_SIZES)
    ]
    rng = np.random.default_rng([seed, 3])
    options = pcsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    names = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
    with pcsv.CSVWriter(path, _criteo_schema(names), write_options=options) as writer:
        for start in range(0, rows, CHUNK_ROWS):
            categorical, numeric, _, labels = log.rows(start, min(start + CHUNK_ROWS, rows))
            n = len(labels)
            columns = [pa.array(labels[:, 0].astype(np.int8))]
            counts = np.floor(np.expm1(np.abs(numeric) * 2.0)).astype(np.int64)
            for j in range(13):
                columns.append(pa.array(counts[:, j], mask=rng.random(n) < missing))
            for f in range(26):
                values = hex_values[f].take(pa.array(categorical[:, f]))
                columns.append(pa.array(values.to_numpy(zero_copy_only=False), mask=rng.random(n) < missing))
            writer.write_table(pa.table(columns, names=names))


def _criteo_schema(names: list[str]):
    import pyarrow as pa

    return pa.schema(
        [(names[0], pa.int8())] + [(n, pa.int64()) for n in names[1:14]] + [(n, pa.string()) for n in names[14:]]
    )
