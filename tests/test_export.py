"""Export: ONNX (ONNX Runtime) and torch.export files match eager PyTorch for every preset.

Parity is on probabilities, max absolute difference <= 1e-5, on a batch (257)
other than the one the export traced (4), so the batch dimension must be dynamic.
The spec has two tasks, so every preset exports ``[B, 2]`` probabilities and the
multi-task presets (shared bottom, MMoE, PLE) are covered too.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from toy_log import make_toy_data, train_toy  # the shared toy click log

from mldcn.cli import main
from mldcn.features import CategoricalField, FeatureSpec, NumericField, SequenceField, TaskSpec
from mldcn.models import create_model, list_models
from mldcn.serve.artifact import ArtifactError, load_artifact, save_artifact
from mldcn.serve.export import (
    ProbabilityModel,
    example_inputs,
    export_model,
    input_names,
    load_exported,
    onnx_session,
    parity,
)
from mldcn.serve.predict import make_backend, predict_file, read_probabilities
from mldcn.train.loop import seed_everything

TOLERANCE = 1e-5
SPEC = FeatureSpec(
    categorical=(CategoricalField("user", 11), CategoricalField("item", 7)),
    numeric=(NumericField("price"), NumericField("age")),
    sequence=(SequenceField("genres", 6, 3), SequenceField("tags", 9, 4)),
    tasks=(TaskSpec("click"), TaskSpec("good_click")),
)
PRESETS = list_models()


def test_every_preset_is_covered():
    assert len(PRESETS) >= 13  # a new preset joins the parity tests below automatically


def trained_like(name: str, features: FeatureSpec = SPEC):
    """A preset with weights away from their initial values (tables start at ~1e-4)."""
    seed_everything(0)
    model = create_model(name, features)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
        for buffer_name, buffer in model.named_buffers():
            if buffer_name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("format", ["onnx", "pt2"])
@pytest.mark.parametrize("name", PRESETS)
def test_export_matches_eager_pytorch(name, format, tmp_path):
    model = trained_like(name)
    path = export_model(model, format, tmp_path / f"model.{format}")
    difference = parity(model, format, path, batch=257)
    assert difference <= TOLERANCE, f"{name} {format}: max |Δp| = {difference:.2e}"


def test_parity_detects_a_different_model(tmp_path):
    model = trained_like("dcnv2_lowrank")
    path = export_model(model, "onnx", tmp_path / "model.onnx")
    with torch.no_grad():
        model.head.output.bias.add_(1.0)
    assert parity(model, "onnx", path) > 1e-2


@pytest.mark.parametrize(
    "features, names",
    [
        (FeatureSpec(categorical=(CategoricalField("a", 5), CategoricalField("b", 3))), ("categorical",)),
        (FeatureSpec(categorical=(CategoricalField("a", 5),), numeric=(NumericField("x"),)), ("categorical", "numeric")),
        (FeatureSpec(numeric=(NumericField("x"), NumericField("y"))), ("numeric",)),
        (FeatureSpec(sequence=(SequenceField("s", 4, 2),)), ("sequence",)),
    ],
)
@pytest.mark.parametrize("format", ["onnx", "pt2"])
def test_the_exported_graph_takes_only_the_inputs_that_exist(features, names, format, tmp_path):
    model = trained_like("mldcn", features)
    assert input_names(features) == names
    path = export_model(model, format, tmp_path / f"model.{format}")
    if format == "onnx":
        session = onnx_session(path)
        assert tuple(i.name for i in session.get_inputs()) == names
        assert all(i.shape[0] not in (1, 4) and isinstance(i.shape[0], str) for i in session.get_inputs())
    assert parity(model, format, path, batch=33) <= TOLERANCE


def test_exported_model_scores_one_row_and_many(tmp_path):
    model = trained_like("mldcn_frappe")
    run = load_exported("onnx", export_model(model, "onnx", tmp_path / "m.onnx"))
    wrapper = ProbabilityModel(model)
    for batch in (1, 2, 1000):
        inputs = example_inputs(SPEC, batch=batch, seed=batch)
        args = [inputs[n] for n in wrapper.input_names]
        with torch.inference_mode():
            expected = wrapper(*args).numpy()
        got = run(*args)
        assert got.shape == (batch, 2)
        np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)


# ---------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("export")
    data = make_toy_data(base / "data")
    return {**data, "run": train_toy(base / "run", data)}


@pytest.mark.parametrize("format", ["onnx", "pt2"])
def test_export_command_writes_and_checks(toy_run, format, capsys):
    assert main(["export", str(toy_run["run"]), "--format", format]) == 0
    out = capsys.readouterr().out
    assert (toy_run["run"] / "model" / f"model.{format}").is_file()
    assert "parity with eager PyTorch: max |Δ probability| =" in out and "(ok, tolerance 1e-05)" in out


def test_an_export_that_fails_its_parity_check_is_not_left_behind(toy_run, tmp_path, monkeypatch, capsys):
    import mldcn.serve.export as export

    monkeypatch.setattr(export, "parity", lambda *args: 0.5)  # as if the exported graph computed something else
    out = tmp_path / "bad.onnx"
    assert main(["export", str(toy_run["run"]), "--format", "onnx", "--out", str(out)]) == 2
    assert "parity with eager PyTorch failed" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary one


def test_onnx_backend_uses_the_exported_file_and_refuses_a_stale_one(toy_run, tmp_path):
    assert main(["export", str(toy_run["run"]), "--format", "onnx", "--no-check"]) == 0
    artifact = load_artifact(toy_run["run"])
    predict_file(artifact, toy_run["test"], tmp_path / "torch.csv")
    predict_file(artifact, toy_run["test"], tmp_path / "onnx.csv", backend=make_backend(artifact, "onnx"))
    np.testing.assert_allclose(read_probabilities(tmp_path / "onnx.csv"), read_probabilities(tmp_path / "torch.csv"), atol=1e-6)

    # another model saved over the artifact, next to the old export
    stale = tmp_path / "stale"
    shutil.copytree(artifact.path, stale)
    model = artifact.model
    with torch.no_grad():
        model.head.output.bias.add_(0.5)
    save_artifact(tmp_path / "retrained", model, artifact.encoder)
    shutil.copy(stale / "model.onnx", tmp_path / "retrained" / "model.onnx")
    with pytest.raises(ArtifactError, match="exported from other weights"):
        make_backend(load_artifact(tmp_path / "retrained"), "onnx")
