"""The ``mldcn`` command, called in-process: exit codes, files written, error messages."""

from __future__ import annotations

import dataclasses
import functools
import json

import yaml

import mldcn.studies.demo as demo
from mldcn.cli import main
from mldcn.config import load_yaml
from mldcn.data.synthetic import SyntheticConfig
from mldcn.models import list_models
from mldcn.train.run import run_config_from_dict

TINY_DATA = [
    "--set", "data.synthetic.train_rows=5000",
    "--set", "data.synthetic.valid_rows=2000",
    "--set", "data.synthetic.test_rows=2000",
]  # fmt: skip
RUN_FILES = ("config.yaml", "metrics.jsonl", "best.pt", "result.json")



def table_names(text: str) -> list[str]:
    """First column of the first plain-text table: the lines after the ``---`` rule, to a blank line."""
    lines = text.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.startswith("---"))
    names = []
    for line in lines[rule + 1 :]:
        if not line.strip():
            break
        names.append(line.split("  ")[0].strip())
    return names


def test_models_lists_every_preset(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert table_names(out) == list_models()
    assert len(list_models()) >= 10


def test_models_filters_by_pattern(capsys):
    assert main(["models", "masknet"]) == 0
    names = table_names(capsys.readouterr().out)
    assert names == list_models("masknet") and names and all("masknet" in n for n in names)


def test_train_writes_a_run(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--model", "lr", "--epochs", "1", "--quiet", *TINY_DATA, "--out", str(out)])
    assert code == 0
    for name in RUN_FILES:
        assert (out / name).is_file(), name
    stdout = capsys.readouterr().out
    assert f"run directory: {out}" in stdout and "test AUC" in stdout
    config = run_config_from_dict(load_yaml(out / "config.yaml"))
    assert config.model.family == "dnn" and config.model.embedding_dim == 1  # the lr preset
    assert config.train.epochs == 1 and config.train.progress is False
    assert (config.data.synthetic.train_rows, config.data.synthetic.test_rows) == (5_000, 2_000)
    result = json.loads((out / "result.json").read_text())
    assert result["epochs"] == 1 and 0.0 <= result["test"]["click"]["auc"] <= 1.0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_train_rejects_an_unknown_key(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--model", "mldcn", "--set", "model.interaction.foo=1", "--out", str(out)])
    assert code == 2
    captured = capsys.readouterr()
    assert "foo" in captured.err and "error" in captured.err
    assert "Traceback" not in captured.err + captured.out
    assert not out.exists()  # rejected before anything ran


def test_train_rejects_an_unknown_model(tmp_path, capsys):
    code = main(["train", "--model", "no_such_model", "--out", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert "no_such_model" in err and "Traceback" not in err


def test_train_rejects_a_missing_config_file(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_train_from_a_config_file(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": {
                    "preset": "mldcn",
                    "embedding_dim": 4,
                    "interaction": {"rank": 4},
                    "head": {"hidden": [16]},
                },
                "data": {"synthetic": {"train_rows": 4000, "valid_rows": 1000, "test_rows": 1000, "seed": 3}},
                "train": {"epochs": 1, "batch_size": 1024, "progress": False},
            }
        )
    )
    out = tmp_path / "run"
    assert main(["train", "--config", str(path), "--out", str(out)]) == 0
    config = run_config_from_dict(load_yaml(out / "config.yaml"))
    assert config.model.family == "mldcn"
    model = config.model
    assert (model.embedding_dim, model.interaction.rank, model.head.hidden) == (4, 4, (16,))
    assert config.data.synthetic.seed == 3 and config.train.batch_size == 1024
    # the saved config is the resolved one: it reruns as a config file
    rerun = tmp_path / "rerun"
    assert main(["train", "--config", str(out / "config.yaml"), "--out", str(rerun)]) == 0
    assert load_yaml(rerun / "config.yaml") == load_yaml(out / "config.yaml")
    # same config, same seed: the same result
    first = json.loads((out / "result.json").read_text())
    second = json.loads((rerun / "result.json").read_text())
    assert first["test"] == second["test"]


BUDGET = 50_000  # the smallest round budget all three families reach within ±3% on this schema


def check_demo_rows(rows: list[dict], budget: float) -> None:
    names = [row["model"] for row in rows]
    for family in demo.DEMO_FAMILIES:
        assert family in names
    assert "ceiling (true probabilities)" in names and "lr (reference)" in names
    for row in rows:
        if row["model"] in demo.DEMO_FAMILIES:
            assert abs(row["interaction_flops"] / budget - 1) <= 0.03, row
            assert 0.0 <= row["auc_click"] <= 1.0


def test_demo_command(tmp_path, capsys, monkeypatch):
    # the CLI sizes only the training rows; shrink the valid / test defaults (100k each)
    small = SyntheticConfig(valid_rows=2_000, test_rows=2_000)
    monkeypatch.setattr(demo, "DemoConfig", functools.partial(demo.DemoConfig, data=small))
    out = tmp_path / "demo"
    flags = ["--train-rows", "2000", "--epochs", "1", "--budget", str(BUDGET), "--quiet", "--out", str(out)]
    assert main(["demo", *flags]) == 0
    stdout = capsys.readouterr().out
    assert "2,000 train / 2,000 valid / 2,000 test rows" in stdout
    assert f"matched interaction budget: {BUDGET:,} FLOPs/example" in stdout
    printed = table_names(stdout[stdout.index("matched interaction budget") :])
    assert printed == [*demo.DEMO_FAMILIES, "lr (reference)", "ceiling (true probabilities)"]
    saved = json.loads((out / "demo.json").read_text())
    check_demo_rows(saved["rows"], BUDGET)
    assert (out / "demo.txt").read_text().splitlines()[2].startswith("mldcn")
    for family in demo.DEMO_FAMILIES:
        assert load_yaml(out / family / "config.yaml")["train"]["epochs"] == 1


def test_run_demo_matches_the_budget_per_family():
    config = demo.DemoConfig(
        budget=80_000,
        data=SyntheticConfig(train_rows=2_000, valid_rows=1_000, test_rows=1_000, seed=5),
        train=dataclasses.replace(demo.DemoConfig().train, epochs=1, progress=False),
    )
    lines = []
    rows = demo.run_demo(config, echo=lines.append)
    check_demo_rows(rows, 80_000)
    ceiling = next(row for row in rows if row["model"].startswith("ceiling"))
    assert 0.7 < ceiling["auc_click"] <= 1.0
    assert any("mldcn" in line and "rank=" in line for line in lines)


def test_demo_rejects_an_unreachable_budget(tmp_path, capsys, monkeypatch):
    small = SyntheticConfig(valid_rows=1_000, test_rows=1_000)
    monkeypatch.setattr(demo, "DemoConfig", functools.partial(demo.DemoConfig, data=small))
    flags = ["--train-rows", "1000", "--epochs", "1", "--budget", "2000", "--quiet", "--out", str(tmp_path)]
    assert main(["demo", *flags]) == 2
    err = capsys.readouterr().err
    assert "±3%" in err and "Traceback" not in err
