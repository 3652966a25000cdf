"""The model artifact: what it holds, that it round-trips, that loading never unpickles,
and that an artifact of another format version is refused with a clear message."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from toy_log import (  # the shared toy click log
    TINY_MODEL,
    make_toy_data,
    train_toy,
)

import mldcn
from mldcn.data.encode import Encoder
from mldcn.features import CategoricalField, FeatureSpec, NumericField, SequenceField
from mldcn.models import create_model, list_models, model_cost
from mldcn.serve.artifact import (
    ARTIFACT_FILE,
    ARTIFACT_VERSION,
    WEIGHTS_FILE,
    ArtifactError,
    load_artifact,
    read_artifact_info,
    save_artifact,
)
from mldcn.serve.export import example_inputs
from mldcn.train.loop import seed_everything

SPEC = FeatureSpec(
    categorical=(CategoricalField("user", 11), CategoricalField("item", 7)),
    numeric=(NumericField("price"),),
    sequence=(SequenceField("genres", 6, 3),),
)


def outputs(model, features=SPEC):
    inputs = example_inputs(features, batch=32)
    model.eval()
    with torch.inference_mode():
        return model(inputs["categorical"], inputs["numeric"], inputs["sequence"])


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("artifact")
    data = make_toy_data(base / "data")
    return {**data, "run": train_toy(base / "run", data)}


@pytest.mark.parametrize("name", list_models())
def test_every_preset_round_trips_exactly(name, tmp_path):
    seed_everything(0)
    model = create_model(name, SPEC)
    with torch.no_grad():  # move BatchNorm statistics off their defaults, so they must be saved too
        for buffer_name, buffer in model.named_buffers():
            if buffer_name.endswith("running_mean"):
                buffer.uniform_(-1, 1)
    save_artifact(tmp_path / "model", model)
    loaded = load_artifact(tmp_path / "model")
    assert loaded.config == model.config
    assert loaded.features == SPEC
    assert not loaded.model.training
    torch.testing.assert_close(outputs(loaded.model), outputs(model), rtol=0, atol=0)


def test_artifact_json_holds_version_config_features_and_cost(tmp_path):
    seed_everything(0)
    model = create_model("mldcn", SPEC)
    save_artifact(tmp_path / "model", model, extra={"test": {"auc": 0.75}})
    info = json.loads((tmp_path / "model" / ARTIFACT_FILE).read_text())
    cost = model_cost(model)
    assert info["format_version"] == ARTIFACT_VERSION
    assert info["mldcn_version"] == mldcn.__version__
    assert info["model"] == model.config.to_dict()
    assert info["features"] == SPEC.to_dict()
    assert info["inputs"] == "ids" and info["preprocessing"] is None
    assert info["cost"]["interaction_flops"] == cost.interaction.total
    assert info["cost"]["total_flops"] == cost.total.total
    assert info["cost"]["dense_params"] == cost.dense_params
    assert info["test"] == {"auc": 0.75}


def test_weights_are_fp32_safetensors_without_rebuilt_buffers(tmp_path):
    seed_everything(0)
    model = create_model("mldcn", SPEC)
    save_artifact(tmp_path / "model", model)
    weights = load_file(tmp_path / "model" / WEIGHTS_FILE)
    assert set(weights) == set(model.state_dict())
    assert "embedding.categorical_offsets" not in weights  # non-persistent: rebuilt from the spec
    assert all(t.dtype == torch.float32 for t in weights.values() if t.is_floating_point())


def test_training_run_writes_an_artifact_with_its_preprocessing(toy_run):
    artifact = load_artifact(toy_run["run"])  # a run directory resolves to run/model
    assert artifact.path == toy_run["run"] / "model"
    assert artifact.info["inputs"] == "raw"
    prepared = Encoder.load(toy_run["prepared"])
    assert artifact.encoder.features == prepared.features == artifact.features
    assert artifact.encoder.schema == prepared.schema
    result = json.loads((toy_run["run"] / "result.json").read_text())
    assert artifact.info["test"] == result["test"]
    best = torch.load(toy_run["run"] / "best.pt", weights_only=True)  # the run's own checkpoint
    for name, value in artifact.model.state_dict().items():
        torch.testing.assert_close(value, best[name], rtol=0, atol=0)


def test_loading_never_unpickles(toy_run, monkeypatch):
    files = {p.suffix for p in (toy_run["run"] / "model").rglob("*") if p.is_file()}
    assert files <= {".json", ".safetensors", ".parquet"}

    def refuse(*args, **kwargs):
        raise AssertionError("an artifact must load without unpickling")

    import pickle

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    assert load_artifact(toy_run["run"]).encoder is not None


def _rewrite_info(directory, **changes):
    path = directory / ARTIFACT_FILE
    info = json.loads(path.read_text())
    info.update(changes)
    path.write_text(json.dumps(info))


@pytest.fixture
def saved(tmp_path):
    seed_everything(0)
    return save_artifact(tmp_path / "model", create_model("dcnv2_lowrank", SPEC))


def test_a_newer_format_version_is_refused_naming_both_versions(saved):
    _rewrite_info(saved, format_version=ARTIFACT_VERSION + 1, mldcn_version="9.0.0")
    message = f"artifact format version {ARTIFACT_VERSION + 1} \\(written by mldcn 9.0.0\\); this mldcn reads version {ARTIFACT_VERSION}; upgrade mldcn"
    with pytest.raises(ArtifactError, match=message):
        load_artifact(saved)


@pytest.mark.parametrize("version", [0, "1", None])
def test_an_unknown_format_version_is_refused(saved, version):
    _rewrite_info(saved, format_version=version)
    with pytest.raises(ArtifactError, match=f"artifact format version {version!r}.*this mldcn reads version {ARTIFACT_VERSION}"):
        read_artifact_info(saved)


def test_a_directory_without_artifact_json_is_not_an_artifact(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(ArtifactError, match="not a model artifact"):
        load_artifact(tmp_path / "x")
    with pytest.raises(ArtifactError, match="no such model artifact directory"):
        load_artifact(tmp_path / "missing")


def test_changed_weights_are_refused(saved):
    weights = load_file(saved / WEIGHTS_FILE)
    weights["head.output.bias"] += 1
    save_file(weights, saved / WEIGHTS_FILE)
    with pytest.raises(ArtifactError, match="SHA-256 differs"):
        load_artifact(saved)


def test_weights_that_do_not_fit_the_config_are_refused(saved):
    _rewrite_info(saved, model={**json.loads((saved / ARTIFACT_FILE).read_text())["model"], "embedding_dim": 8})
    with pytest.raises(ArtifactError, match="does not fit the model"):
        load_artifact(saved)


def test_a_corrupt_artifact_json_names_the_file(saved):
    (saved / ARTIFACT_FILE).write_text("{not json")
    with pytest.raises(ArtifactError, match="artifact.json: not valid JSON"):
        load_artifact(saved)


def test_an_unknown_model_family_is_refused(saved):
    _rewrite_info(saved, model={"family": "quantum_cross"})
    with pytest.raises(ArtifactError, match="unknown model family 'quantum_cross'"):
        load_artifact(saved)


def test_saving_refuses_to_overwrite_a_foreign_directory(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "notes.txt").write_text("mine")
    with pytest.raises(ArtifactError, match="not a model artifact; not overwriting"):
        save_artifact(tmp_path / "model", create_model("lr", SPEC))
    assert (tmp_path / "model" / "notes.txt").read_text() == "mine"


def test_saving_again_replaces_the_artifact(tmp_path):
    seed_everything(0)
    first = create_model("lr", SPEC)
    seed_everything(1)
    second = create_model("lr", SPEC)
    save_artifact(tmp_path / "model", first)
    save_artifact(tmp_path / "model", second)
    torch.testing.assert_close(outputs(load_artifact(tmp_path / "model").model), outputs(second), rtol=0, atol=0)


def test_an_encoder_for_other_features_is_refused(toy_run, tmp_path):
    encoder = Encoder.load(toy_run["prepared"])
    with pytest.raises(ArtifactError, match="feature spec differs"):
        save_artifact(tmp_path / "model", create_model(TINY_MODEL, SPEC), encoder)


def test_a_single_task_artifact_made_before_tasks_existed_still_loads(toy_run, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(toy_run["run"] / "model", old)
    # what an artifact of mldcn 0.1.0 held: features without tasks, a version-1 feature map with `label:`
    info = json.loads((old / "artifact.json").read_text())
    del info["features"]["tasks"]
    (old / "artifact.json").write_text(json.dumps(info))
    feature_map = json.loads((old / "preprocessing" / "feature_map.json").read_text())
    feature_map["format_version"] = 1
    labels = feature_map["schema"].pop("labels")
    feature_map["schema"]["label"] = {"name": labels[0]["name"], "threshold": None}
    del feature_map["features"]["tasks"]
    (old / "preprocessing" / "feature_map.json").write_text(json.dumps(feature_map))
    artifact = load_artifact(old)
    assert artifact.features.task_names == ("label",)  # its one task: the schema's label
    new = load_artifact(toy_run["run"])
    torch.testing.assert_close(outputs(artifact.model, artifact.features), outputs(new.model, new.features), rtol=0, atol=0)
