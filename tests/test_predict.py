"""``mldcn predict``: raw rows in, probabilities out, with exactly the training preprocessing.

The toy click log lives in tests/helpers/toy_log.py (shared with the artifact,
export and serving tests).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
import torch
from toy_log import (
    HEADER,
    TINY_MODEL,
    TINY_TRAIN,
    make_toy_data,
    toy_rows,
    train_toy,
    write_csv,
)

from mldcn.cli import main
from mldcn.data.encode import Encoder
from mldcn.data.prepared import load_split
from mldcn.data.readers import DataError
from mldcn.data.synthetic import SyntheticConfig
from mldcn.serve.artifact import load_artifact, save_run_artifact
from mldcn.serve.predict import (
    TorchBackend,
    make_backend,
    predict_file,
    predict_prepared,
    read_probabilities,
)
from mldcn.data.source import DataConfig
from mldcn.train.run import RunConfig, run


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("toy")
    data = make_toy_data(base / "data")
    return {**data, "run": train_toy(base / "run", data)}


@pytest.fixture(scope="module")
def artifact(toy):
    return load_artifact(toy["run"])


def eager_probabilities(model, categorical, numeric, sequence) -> np.ndarray:
    with torch.inference_mode():
        return torch.sigmoid(model(categorical.long(), numeric, None if sequence is None else sequence.long())).numpy()


# ---------------------------------------------------------------------------- the preprocessing


def test_raw_rows_get_exactly_the_training_preprocessing(toy, artifact, tmp_path):
    out = predict_file(artifact, toy["test"], tmp_path / "p.csv")
    test = load_split(toy["prepared"], "test")
    expected = eager_probabilities(artifact.model, *test.inputs())
    got = read_probabilities(tmp_path / "p.csv")
    assert out.rows_read == out.rows_written == len(test) == 400
    assert out.rows_skipped == 0
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert np.std(got) > 0.01  # a trained model, not a constant


def test_prepared_split_prediction_matches_raw_file(toy, artifact, tmp_path):
    raw = predict_file(artifact, toy["test"], tmp_path / "raw.csv")
    prepared = predict_prepared(artifact, toy["prepared"], "test", tmp_path / "prepared.parquet")
    assert prepared.rows_read == prepared.rows_written == raw.rows_written
    table = pq.read_table(tmp_path / "prepared.parquet")
    assert table.column_names == ["label_label", "probability_label"]  # per task; the toy's task is `label`
    np.testing.assert_array_equal(table["label_label"].to_numpy(), load_split(toy["prepared"], "test").labels[:, 0].numpy())
    np.testing.assert_allclose(read_probabilities(tmp_path / "prepared.parquet"), read_probabilities(tmp_path / "raw.csv"), atol=1e-6)


def test_unknown_categories_map_to_the_oov_id(toy, artifact, tmp_path):
    rows = toy_rows(5, seed=7)
    unseen = [[r[0], "never-seen-user", "never-seen-item", r[3], "zzz|a"] for r in rows]
    write_csv(tmp_path / "unseen.csv", unseen)
    predict_file(artifact, tmp_path / "unseen.csv", tmp_path / "p.csv")

    columns = {name: pa.array([r[i] for r in unseen]) for i, name in enumerate(HEADER)}
    encoded = artifact.encoder.encode(columns)
    assert (encoded.categorical[:, :2] == 0).all()  # user, item: OOV
    assert (encoded.sequence[:, 0, 0] == 1).all()  # 'zzz': the multi-valued OOV id
    expected = eager_probabilities(artifact.model, *encoded.inputs())
    np.testing.assert_allclose(read_probabilities(tmp_path / "p.csv"), expected, atol=1e-6)


def test_input_without_label_column(toy, artifact, tmp_path):
    rows = toy_rows(50, seed=3)
    write_csv(tmp_path / "with.csv", rows)
    write_csv(tmp_path / "without.csv", [r[1:] for r in rows], header=HEADER[1:])
    predict_file(artifact, tmp_path / "with.csv", tmp_path / "a.csv")
    report = predict_file(artifact, tmp_path / "without.csv", tmp_path / "b.csv")
    assert report.rows_written == 50
    np.testing.assert_array_equal(read_probabilities(tmp_path / "a.csv"), read_probabilities(tmp_path / "b.csv"))


def test_streams_in_chunks_with_the_same_result(toy, artifact, tmp_path):
    whole = predict_file(artifact, toy["test"], tmp_path / "whole.csv")
    chunked = predict_file(artifact, toy["test"], tmp_path / "chunked.csv", chunk_bytes=1024, batch_size=7)
    assert chunked.rows_read == chunked.rows_written == whole.rows_written
    np.testing.assert_allclose(read_probabilities(tmp_path / "chunked.csv"), read_probabilities(tmp_path / "whole.csv"), atol=1e-6)


def test_parquet_in_parquet_out_with_kept_columns(toy, artifact, tmp_path):
    table = pcsv.read_csv(toy["test"], convert_options=pcsv.ConvertOptions(column_types={c: pa.string() for c in HEADER}))
    pq.write_table(table.drop(["label"]).append_column("request_id", pa.array([f"r{i}" for i in range(len(table))])), tmp_path / "in.parquet")
    report = predict_file(artifact, tmp_path / "in.parquet", tmp_path / "out.parquet", keep_columns=("request_id",), line_numbers=True)
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.column_names == ["request_id", "line", "probability_label"]
    assert out["request_id"].to_pylist() == [f"r{i}" for i in range(400)]
    assert out["line"].to_pylist() == list(range(1, 401))
    assert report.rows_written == 400
    predict_file(artifact, toy["test"], tmp_path / "csv.csv")
    np.testing.assert_allclose(out["probability_label"].to_numpy(), read_probabilities(tmp_path / "csv.csv")[:, 0], atol=1e-6)


def test_bad_rows_stop_with_file_line_and_field(toy, artifact, tmp_path):
    rows = toy_rows(10, seed=4)
    rows[5][3] = "cheap"  # line 7 (after the header)
    write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(DataError, match=r"bad\.csv:7: field 'price': 'cheap' is not a number"):
        predict_file(artifact, tmp_path / "bad.csv", tmp_path / "p.csv")


def test_skipped_bad_rows_are_counted_and_rows_add_up(toy, artifact, tmp_path):
    rows = toy_rows(10, seed=4)
    rows[5][3] = "cheap"
    write_csv(tmp_path / "bad.csv", rows)
    lines = (tmp_path / "bad.csv").read_text().splitlines()
    lines.insert(3, "1,u1")  # a short row: line 4
    (tmp_path / "bad.csv").write_text("\n".join(lines) + "\n")
    report = predict_file(artifact, tmp_path / "bad.csv", tmp_path / "p.csv", on_bad_rows="skip", line_numbers=True)
    assert (report.rows_read, report.rows_written, report.rows_skipped) == (11, 9, 2)
    assert sorted(b["line"] for b in report.skipped_examples) == [4, 8]
    out = pcsv.read_csv(tmp_path / "p.csv")
    assert out["line"].to_pylist() == [2, 3, 5, 6, 7, 9, 10, 11, 12]


def test_empty_input_is_an_error_and_writes_nothing(artifact, tmp_path):
    (tmp_path / "empty.csv").write_text(",".join(HEADER) + "\n")
    with pytest.raises(DataError, match="no data rows"):
        predict_file(artifact, tmp_path / "empty.csv", tmp_path / "p.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.csv"]  # no header-only file, no temporary


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_late_bad_row_leaves_no_partial_output(toy, artifact, tmp_path, suffix):
    rows = toy_rows(3000, seed=5)
    rows[2500][3] = "cheap"  # line 2502, several chunks after the first predictions were written
    write_csv(tmp_path / "bad.csv", rows)
    out = tmp_path / f"p{suffix}"
    with pytest.raises(DataError, match=r"bad\.csv:2502:"):
        predict_file(artifact, tmp_path / "bad.csv", out, chunk_bytes=4096, batch_size=64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]
    # an earlier output at the same path is left as it was
    predict_file(artifact, toy["test"], out)
    before = out.read_bytes()
    with pytest.raises(DataError):
        predict_file(artifact, tmp_path / "bad.csv", out, chunk_bytes=4096)
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", out.name]


def test_bf16_precision_is_close_to_fp32(toy, artifact, tmp_path):
    predict_file(artifact, toy["test"], tmp_path / "fp32.csv")
    predict_file(artifact, toy["test"], tmp_path / "bf16.csv", backend=make_backend(artifact, "torch", "bf16"))
    difference = np.abs(read_probabilities(tmp_path / "bf16.csv") - read_probabilities(tmp_path / "fp32.csv"))
    assert difference.max() < 0.02


def test_onnx_backend_matches_torch(toy, artifact, tmp_path):
    predict_file(artifact, toy["test"], tmp_path / "torch.csv", backend=TorchBackend(artifact.model))
    predict_file(artifact, toy["test"], tmp_path / "onnx.csv", backend=make_backend(artifact, "onnx"))
    np.testing.assert_allclose(read_probabilities(tmp_path / "onnx.csv"), read_probabilities(tmp_path / "torch.csv"), atol=1e-6)


# ---------------------------------------------------------------------------- the command


def test_predict_command(toy, tmp_path, capsys):
    code = main(["predict", str(toy["run"]), "--input", str(toy["test"]), "--out", str(tmp_path / "p.csv"), "--keep", "user"])
    assert code == 0
    assert "400 rows read = 400 predicted + 0 skipped" in capsys.readouterr().out
    out = pcsv.read_csv(tmp_path / "p.csv")
    assert out.column_names == ["user", "probability_label"] and out.num_rows == 400


def test_predict_command_on_a_prepared_split(toy, tmp_path, capsys):
    code = main(["predict", str(toy["run"] / "model"), "--prepared", str(toy["prepared"]), "--split", "valid", "--out", str(tmp_path / "v.parquet")])
    assert code == 0
    assert "prepared:valid: 500 rows read = 500 predicted" in capsys.readouterr().out


def test_predict_command_errors_name_the_problem(toy, tmp_path, capsys):
    assert main(["predict", str(tmp_path / "nothing"), "--input", str(toy["test"]), "--out", str(tmp_path / "p.csv")]) == 2
    assert "no such model artifact directory" in capsys.readouterr().err
    assert main(["predict", str(toy["run"]), "--input", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "p.csv")]) == 2
    assert "missing.csv: file not found" in capsys.readouterr().err


# ---------------------------------------------------------------------------- models that take ids


def test_synthetic_model_predicts_a_file_of_ids(tmp_path):
    data = SyntheticConfig(train_rows=2000, valid_rows=500, test_rows=500, vocab_sizes=(4, 8), num_numeric=1, seed=1)
    config = RunConfig(model=TINY_MODEL, data=DataConfig(synthetic=data), train=TINY_TRAIN)
    result = run(config, tmp_path / "run")
    save_run_artifact(result)
    artifact = load_artifact(tmp_path / "run")
    assert artifact.encoder is None and artifact.info["inputs"] == "ids"
    test = result.model  # the trained model, in memory
    categorical = torch.tensor([[0, 7], [3, 1], [1, 0]])
    numeric = torch.tensor([[0.5], [-1.0], [2.0]])
    write_csv(tmp_path / "ids.csv", [[str(c0), str(c1), str(x)] for (c0, c1), (x,) in zip(categorical.tolist(), numeric.tolist())], header=["c0", "c1", "n0"])
    predict_file(artifact, tmp_path / "ids.csv", tmp_path / "p.csv")
    np.testing.assert_allclose(read_probabilities(tmp_path / "p.csv"), eager_probabilities(test.eval(), categorical, numeric, None), atol=1e-6)

    write_csv(tmp_path / "bad.csv", [["9", "0", "0.1"]], header=["c0", "c1", "n0"])
    with pytest.raises(DataError, match=r"line 2: field 'c0': '9' is not an id in \[0, 4\)"):
        predict_file(artifact, tmp_path / "bad.csv", tmp_path / "p.csv")


def test_encoder_in_the_artifact_is_the_prepared_one(toy, artifact):
    prepared = Encoder.load(toy["prepared"])
    assert artifact.encoder.features == prepared.features
    assert artifact.encoder.numeric_stats == prepared.numeric_stats
    for name, vocab in prepared.vocabularies.items():
        assert artifact.encoder.vocabularies[name].equals(vocab)
    np.testing.assert_array_equal(artifact.encoder.boundaries["price_bucket"], prepared.boundaries["price_bucket"])
