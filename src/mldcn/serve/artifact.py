"""The model artifact: one directory that takes a trained model to production.

    <artifact>/artifact.json                   format version, mldcn version, model config,
                                               feature spec, FLOPs and parameters, weights hash
    <artifact>/weights.safetensors             the fp32 weights (``state_dict``)
    <artifact>/preprocessing/feature_map.json  the fitted preprocessing (schema, statistics),
    <artifact>/preprocessing/vocab/*.parquet   written by :meth:`Encoder.save` (raw-data models only)

Nothing here is pickled: the weights are safetensors, everything else JSON or
Parquet, so loading an artifact never runs code from the file. A model trained on
data from ``mldcn prepare`` carries its :class:`~mldcn.data.encode.Encoder` and
takes raw rows; a model trained on already-encoded ids (the synthetic log) has
only its :class:`~mldcn.features.FeatureSpec` and takes ids.

An artifact written by another version either loads or is refused with a message
saying which format version it is and which this mldcn reads.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mldcn.config import ConfigError
from mldcn.data.encode import Encoder, read_feature_map
from mldcn.features import FeatureSpec
from mldcn.files import atomic_path
from mldcn.models.config import ModelConfig, model_config_from_dict
from mldcn.models.flops import model_cost
from mldcn.models.ranking import RankingModel
from mldcn.models.registry import create_model

#: The artifact layout this mldcn writes and reads. Raise it on any change that an
#: older reader would misread; a reader refuses every version but its own.
ARTIFACT_VERSION = 1
ARTIFACT_FILE = "artifact.json"
WEIGHTS_FILE = "weights.safetensors"
PREPROCESSING_DIR = "preprocessing"


class ArtifactError(ValueError):
    """A model artifact is missing, corrupt or of another format version; the message says which file."""


@dataclass(frozen=True)
class Artifact:
    """A loaded model artifact.

    Attributes:
        path: the artifact directory.
        model: the model in eval mode, fp32, on the CPU.
        features: what the model's input tensors hold.
        encoder: the fitted preprocessing (raw rows → ids), or None for a model
            that takes ids.
        info: the content of ``artifact.json``.
    """

    path: Path
    model: RankingModel
    features: FeatureSpec
    encoder: Encoder | None
    info: dict

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def weights_sha256(self) -> str:
        return self.info["weights_sha256"]


def save_artifact(
    directory: str | Path,
    model: RankingModel,
    encoder: Encoder | None = None,
    extra: dict | None = None,
) -> Path:
    """Write ``model`` (and its preprocessing) as an artifact in ``directory``; return the path.

    Args:
        directory: created, or replaced if it holds an artifact already.
        model: a :class:`RankingModel` built by ``create_model`` (it carries its config).
        encoder: the fitted preprocessing of the data the model was trained on;
            its feature spec must be the model's.
        extra: more JSON-serialisable facts for ``artifact.json`` (e.g. test metrics).
    """
    if model.config is None:
        raise ArtifactError("the model has no config; build it with mldcn.models.create_model")
    features = model.embedding.features
    # the model may learn a subset of the data's tasks (data.tasks): compare the input fields
    if encoder is not None and not encoder.features.same_inputs(features):
        raise ArtifactError("the encoder's feature spec differs from the model's; was it trained on this data?")
    directory = Path(directory)
    if directory.exists() and not (directory / ARTIFACT_FILE).exists() and any(directory.iterdir()):
        raise ArtifactError(f"{directory}: exists and is not a model artifact; not overwriting it")
    with atomic_path(directory) as tmp:  # the artifact appears only complete; an older one stays until then
        _write_artifact(tmp, model, encoder, features, extra)
    return directory


def _write_artifact(tmp: Path, model: RankingModel, encoder: Encoder | None, features: FeatureSpec, extra: dict | None) -> None:
    tmp.mkdir(parents=True)
    # fp32, contiguous CPU copies: what safetensors stores and every backend loads
    state = {
        name: (value.detach().float() if value.is_floating_point() else value.detach()).cpu().contiguous()
        for name, value in model.state_dict().items()
    }
    save_file(state, tmp / WEIGHTS_FILE, metadata={"format": "pt", "mldcn_artifact_version": str(ARTIFACT_VERSION)})
    (tmp / WEIGHTS_FILE).chmod(0o644)  # safetensors creates it owner-only; the other files are 0644 too
    if encoder is not None:
        encoder.save(tmp / PREPROCESSING_DIR)
    import mldcn  # noqa: PLC0415  (the package imports models, which must not import serve)

    info = {
        "format_version": ARTIFACT_VERSION,
        "mldcn_version": mldcn.__version__,
        "torch_version": torch.__version__.split("+")[0],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": model.config.to_dict(),
        "features": features.to_dict(),
        "inputs": "raw" if encoder is not None else "ids",
        "preprocessing": PREPROCESSING_DIR if encoder is not None else None,
        "weights": WEIGHTS_FILE,
        "weights_sha256": _sha256(tmp / WEIGHTS_FILE),
        "cost": model_cost(model).to_dict(),
        **(extra or {}),
    }
    (tmp / ARTIFACT_FILE).write_text(json.dumps(info, indent=2))


def save_run_artifact(result, directory: str | Path | None = None) -> Path:
    """The artifact of a finished run (:class:`mldcn.train.run.RunResult`): its model, tasks,
    test metrics and, for data prepared from a raw log, the fitted preprocessing; ``mldcn train``
    writes it to ``RUN/model`` (the default ``directory``). A model of generated data (the
    synthetic and industrial logs, in memory or written by ``mldcn synth``) takes encoded ids."""
    config = result.config
    encoder = None
    if config.data.source == "prepared" and "vocabularies" in read_feature_map(config.data.path):
        encoder = Encoder.load(config.data.path)
    directory = Path(directory) if directory is not None else Path(result.run_dir) / "model"
    return save_artifact(directory, result.model, encoder, extra={"test": result.test, "data": result.data})


def resolve_artifact_dir(path: str | Path) -> Path:
    """``path`` itself, or ``path/model`` when ``path`` is a run directory holding an artifact."""
    path = Path(path)
    if not (path / ARTIFACT_FILE).exists() and (path / "model" / ARTIFACT_FILE).exists():
        return path / "model"
    return path


def read_artifact_info(path: str | Path) -> dict:
    """``artifact.json`` of the artifact at ``path`` (or in run directory ``path``), version-checked."""
    directory = resolve_artifact_dir(path)
    file = directory / ARTIFACT_FILE
    if not directory.is_dir():
        raise ArtifactError(f"{directory}: no such model artifact directory")
    if not file.exists():
        raise ArtifactError(
            f"{directory}: not a model artifact (no {ARTIFACT_FILE}); `mldcn train --out RUN` writes one in RUN/model"
        )
    try:
        info = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArtifactError(f"{file}: not valid JSON ({error})") from None
    if not isinstance(info, dict):
        raise ArtifactError(f"{file}: expected a JSON object")
    version = info.get("format_version")
    if version != ARTIFACT_VERSION:
        written = f" (written by mldcn {info['mldcn_version']})" if "mldcn_version" in info else ""
        advice = "upgrade mldcn to load it" if isinstance(version, int) and version > ARTIFACT_VERSION else "export the model again with this mldcn"
        raise ArtifactError(
            f"{file}: artifact format version {version!r}{written}; this mldcn reads version "
            f"{ARTIFACT_VERSION}; {advice}"
        )
    for key in ("model", "features", "weights", "weights_sha256"):
        if key not in info:
            raise ArtifactError(f"{file}: missing key {key!r}")
    return info


def load_artifact(path: str | Path, verify: bool = True) -> Artifact:
    """Load the artifact at ``path`` (or in run directory ``path``).

    The model is built from its config with ``create_model`` and the weights are
    loaded with ``strict=True`` (buffers such as the embedding offsets are rebuilt
    from the feature spec, not stored). With ``verify`` the weights file's SHA-256
    is checked against ``artifact.json``.

    Raises:
        ArtifactError: naming the file and what is wrong with it.
    """
    directory = resolve_artifact_dir(path)
    info = read_artifact_info(directory)
    file = directory / ARTIFACT_FILE
    try:
        config = model_config_from_dict(info["model"], where=f"{file} model")
        features = FeatureSpec.from_dict(info["features"])
    except (ConfigError, ValueError, TypeError) as error:
        raise ArtifactError(f"{file}: {error}") from None
    encoder = None
    if info.get("preprocessing"):
        encoder = Encoder.load(directory / info["preprocessing"])
        if "tasks" not in info["features"]:  # made before tasks existed: its one task is the schema's label
            features = features.with_tasks(encoder.features.tasks)
        if not encoder.features.same_inputs(features):
            raise ArtifactError(f"{directory / info['preprocessing']}: its features differ from {file}'s")
    weights = directory / info["weights"]
    if not weights.exists():
        raise ArtifactError(f"{weights}: weights file missing")
    if verify and _sha256(weights) != info["weights_sha256"]:
        raise ArtifactError(f"{weights}: SHA-256 differs from {file}; the weights were changed or damaged")
    try:
        state = load_file(weights)
    except (SafetensorError, OSError) as error:
        raise ArtifactError(f"{weights}: not a readable safetensors file ({error})") from None
    model = create_model(config, features)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ArtifactError(f"{weights}: does not fit the model in {file}: {error}") from None
    model.eval()
    return Artifact(directory, model, features, encoder, info)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
