"""Run directories: resume checks what it resumes, one writer at a time, clean interrupts and errors."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mldcn.cli import main
from mldcn.train.rundir import LOCK_FILE, RunDirError, config_differences, locked

TINY = [
    "--model", "lr", "--quiet",
    "--set", "data.synthetic.train_rows=3000",
    "--set", "data.synthetic.valid_rows=1000",
    "--set", "data.synthetic.test_rows=1000",
]  # fmt: skip


def train(out: Path, *extra: str) -> int:
    return main(["train", *TINY, "--epochs", "2", *extra, "--out", str(out)])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rundir") / "run"
    assert train(out) == 0
    return out


def snapshot(run: Path) -> dict[str, bytes]:
    return {name: (run / name).read_bytes() for name in ("config.yaml", "result.json", "run.json", "last.pt")}


def test_the_run_records_its_config_and_data(finished_run):
    record = json.loads((finished_run / "run.json").read_text())
    assert record["config"]["data"]["synthetic"]["train_rows"] == 3000
    assert record["config"]["model"]["family"] == "dnn"
    assert record["data"]["rows"] == {"train": 3000, "valid": 1000, "test": 1000}
    assert len(record["data"]["sha256"]) == 64


def test_resume_with_other_data_is_refused_and_changes_nothing(finished_run, capsys):
    before = snapshot(finished_run)
    code = train(finished_run, "--set", "data.synthetic.train_rows=2000", "--resume")
    err = capsys.readouterr().err
    assert code == 2
    assert "cannot resume" in err and "data.synthetic.train_rows: 3000 → 2000" in err
    assert "rows train 3,000 → 2,000" in err
    assert snapshot(finished_run) == before  # config.yaml and result.json not rewritten


def test_resume_with_another_model_is_refused_without_a_traceback(finished_run, capsys):
    code = main(["train", *TINY, "--model", "dcnv2_lowrank", "--epochs", "2", "--out", str(finished_run), "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "model.family: 'dnn' → 'dcnv2_lowrank'" in err


def test_resume_may_extend_the_epochs(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out) == 0
    # patience 5 keeps this tiny run from stopping early, so the third epoch really trains
    assert train(out, "--set", "train.patience=5", "--resume") == 2  # patience is not resumable
    capsys.readouterr()
    assert main(["train", *TINY, "--epochs", "3", "--out", str(out), "--resume"]) == 0
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    result = json.loads((out / "result.json").read_text())
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) in (2, 3) and result["epochs"] == len(epochs)
    assert json.loads((out / "run.json").read_text())["config"]["train"]["epochs"] == 3


def test_a_run_made_before_an_option_existed_resumes_as_that_option_s_default(tmp_path, capsys):
    # run.json of an older version lacks options added since (here the one-pass ones): they are
    # taken at their defaults, the behaviour that run had, not reported as differences
    out = tmp_path / "run"
    assert train(out) == 0
    record = json.loads((out / "run.json").read_text())
    for key in ("examples", "curve_points"):
        del record["config"]["train"][key]
    (out / "run.json").write_text(json.dumps(record))
    assert main(["train", *TINY, "--epochs", "3", "--out", str(out), "--resume"]) == 0
    # a real change is still refused, named against the recorded value
    record = json.loads((out / "run.json").read_text())
    del record["config"]["train"]["curve_points"]
    (out / "run.json").write_text(json.dumps(record))
    capsys.readouterr()
    assert train(out, "--set", "train.curve_points=5", "--resume") == 2
    assert "train.curve_points: 10 → 5" in capsys.readouterr().err


def test_resume_without_a_checkpoint_is_refused(tmp_path, capsys):
    assert train(tmp_path / "empty", "--resume") == 2
    assert "nothing to resume (no last.pt)" in capsys.readouterr().err


def test_config_differences_ignore_only_the_resumable_keys():
    old = {"train": {"epochs": 2, "lr": 0.001, "threads": 1}, "data": {"path": "a"}}
    new = {"train": {"epochs": 9, "lr": 0.003, "threads": 4}, "data": {"path": "b"}, "extra": 1}
    assert config_differences(old, new) == ["extra: '<absent>' → 1", "train.lr: 0.001 → 0.003"]


def test_a_checkpoint_that_is_not_weights_only_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out) == 0

    # an arbitrary pickled object: torch.load(weights_only=True) refuses to unpickle it
    torch.save({"model": argparse.Namespace(weights=1)}, out / "last.pt")
    assert train(out, "--resume") == 2
    err = capsys.readouterr().err
    assert "last.pt: not a weights-only mldcn training checkpoint" in err and "Traceback" not in err
    (out / "last.pt").write_bytes(b"not a checkpoint at all")
    assert train(out, "--resume") == 2
    assert "last.pt: not a weights-only mldcn training checkpoint" in capsys.readouterr().err


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "run"
    with locked(out):
        assert train(out) == 2
        err = capsys.readouterr().err
        assert f"pid {os.getpid()}" in err and "another training is writing this run directory" in err
        with pytest.raises(RunDirError):
            with locked(out):
                pass
    assert train(out) == 0  # released


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from mldcn.train.rundir import locked\n"
         "with locked(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunDirError, match=f"pid {holder.pid}"):
        with locked(out):
            pass
    holder.kill()
    holder.wait()
    with locked(out):  # the kernel released the dead holder's lock
        assert f"pid {os.getpid()}" in (out / LOCK_FILE).read_text()


def test_ctrl_c_during_training_says_where_the_checkpoint_is(tmp_path):
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "mldcn", "train", "--model", "lr", "--epochs", "1000", "--threads", "1",
        "--set", "train.patience=1000", "--set", "data.synthetic.train_rows=20000",
        "--set", "data.synthetic.valid_rows=1000", "--set", "data.synthetic.test_rows=1000", "--out", str(out),
    ]  # fmt: skip
    # Ctrl-C's default action in the child, whoever started the tests: a shell starting them in the
    # background (`pytest &`) leaves SIGINT ignored, children inherit that, and Python keeps it
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    deadline = time.monotonic() + 120
    while not (out / "last.pt").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    assert (out / "last.pt").exists(), process.communicate()
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert f"{out / 'last.pt'}" in stderr and "--resume" in stderr and f"--out {out}" in stderr
    assert stdout.splitlines()[0].startswith("data: the embedded synthetic click log (20,000 train")


def test_progress_is_one_line_per_epoch_when_output_is_not_a_terminal(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "mldcn", "train", *TINY[:2], "--epochs", "2", *TINY[3:], "--out", str(out)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert "\r" not in finished.stderr and "it/s" not in finished.stderr  # no progress-bar redraws
    epochs = [line for line in finished.stdout.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == len((out / "metrics.jsonl").read_text().splitlines()) >= 1
