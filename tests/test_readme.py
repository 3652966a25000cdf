"""The README's Python example runs as written (x-transformers' ``test_readme``)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"



def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def test_readme_has_a_python_example():
    assert len(python_blocks(README.read_text())) >= 1


def test_readme_example_runs(capsys):
    namespace: dict = {"__name__": "readme"}
    for block in python_blocks(README.read_text()):
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102  (our own README)
    metrics = namespace["metrics"]["click"]  # the synthetic log's one task
    assert set(metrics) >= {"auc", "logloss", "ne", "calibration"}
    assert 0.6 < metrics["auc"] < 1.0  # it learns: LR-level signal or better
    # what the example claims in its comments
    cost = namespace["cost"]
    assert abs(cost.interaction.total / 100_000 - 1) <= 0.03
    assert metrics["auc"] <= namespace["data"].info["ceiling"]["test"]["click"]["auc"] + 0.02
    out = capsys.readouterr().out
    assert "test AUC" in out and "ceiling" in out
