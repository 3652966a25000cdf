"""The defaults rule's ranking (docs/design-decisions.md), on cells worked out by hand."""

import importlib.util
import json
from pathlib import Path

import pytest

from mldcn.studies.ablate import cell_ranks, rule_scores

# A−B per seed: +0.01, +0.01, −0.01: mean 0.0033, sd 0.0115, SE 0.0067 → A and B tie.
# A−C: +0.1 on every seed (SE ≈ 0) → C starts a group; C−D: 0 on every seed → D joins it.
CELL = {
    "A": [0.80, 0.81, 0.82],
    "B": [0.79, 0.80, 0.83],
    "C": [0.70, 0.71, 0.72],
    "D": [0.70, 0.71, 0.72],
}


def test_ties_within_one_standard_error_share_the_mean_of_their_positions():
    assert cell_ranks(CELL) == {"A": 1.5, "B": 1.5, "C": 3.5, "D": 3.5}


def test_a_group_is_measured_from_its_best_member_not_chained():
    # B−A: −0.012, +0.010, 0.000 (mean −0.0007, SE 0.0064): B ties A.
    # E−B: +0.008, −0.014, −0.004 (mean −0.0033, SE 0.0064): E would tie B, but
    # E−A: −0.004 on every seed (SE ≈ 0): apart from the group's first member, so a group of its own.
    cell = {"A": [0.900, 0.905, 0.910], "B": [0.888, 0.915, 0.910], "E": [0.896, 0.901, 0.906]}
    assert cell_ranks(cell) == {"A": 1.5, "B": 1.5, "E": 3.0}


def test_scores_average_the_cells_of_a_vote_then_the_votes():
    other = {"A": [0.5, 0.6, 0.7], "B": [0.4, 0.5, 0.6], "C": [0.3, 0.4, 0.5], "D": [0.8, 0.9, 1.0]}  # D, A, B, C apart
    scores = rule_scores({"one": [CELL, CELL], "two": [other]})
    assert {name: s["score"] for name, s in scores.items()} == {"A": 1.75, "B": 2.25, "C": 3.75, "D": 2.25}
    assert scores["A"]["votes"]["two"] == {"rank": 2.0, "auc": pytest.approx(0.6)}
    assert scores["D"]["votes"]["one"] == {"rank": 3.5, "auc": pytest.approx(0.71)}


def test_unpaired_or_single_seed_cells_are_refused():
    with pytest.raises(ValueError, match="same seeds"):
        cell_ranks({"A": [0.8, 0.9], "B": [0.8]})
    with pytest.raises(ValueError, match="at least two"):
        cell_ranks({"A": [0.8], "B": [0.7]})


# --- benchmarks/defaults_rule.py end to end, on made-up ablation folders worked out by hand ---

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "defaults_rule.py"
SEED_BASE = {0: 0.80, 1: 0.82}  # every variant of a vote moves with the seed: paired differences are exact
# change from the default's validation AUC per vote. Cell ranks: v1, v2 lnn 1, soft 2, default 3, sig 4, 2sig 5;
# v3 2sig 1, default 2, soft 3, sig 4, lnn 5. Scores: lnn 7/3, soft 7/3, default 8/3, 2sig 11/3, sig 12/3.
DELTAS = {
    "default": (0.0, 0.0, 0.0),
    "layer_norm_none": (0.03, 0.03, -0.03),
    "g_softplus": (0.02, 0.02, -0.005),
    "g_sigmoid": (-0.01, -0.01, -0.01),
    "g_2sigmoid": (-0.02, -0.02, 0.01),
}


def _rule_script():
    spec = importlib.util.spec_from_file_location("defaults_rule", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cell(folder: Path, vote: int, skip: tuple | None = None) -> str:
    folder.mkdir()
    with open(folder / "results.jsonl", "w") as f:
        for variant, deltas in DELTAS.items():
            for seed, base in SEED_BASE.items():
                if (variant, seed) != skip:
                    valid = base + deltas[vote]
                    record = {"key": f"{variant}|seed={seed}", "variant": variant, "seed": seed,
                              "valid_auc": valid, "test_auc": valid - 0.1}  # fmt: skip
                    f.write(json.dumps(record) + "\n")
    return str(folder)


def test_the_rule_script_decides_each_axis_as_worked_by_hand(tmp_path, capsys):
    argv = []
    for vote in range(3):
        argv += ["--vote", f"v{vote + 1}", _cell(tmp_path / f"v{vote + 1}", vote)]
    _rule_script().main(argv)
    out = capsys.readouterr().out
    # per-vote table: validation AUC mean ± sd over the two seeds, rank in the cell, test AUC
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in out.splitlines() if line.startswith("| ")]
    assert ["layer_norm_none", "0.8400 ± 0.0141", "1", "0.7400 ± 0.0141"] in rows
    assert ["g_2sigmoid", "0.8200 ± 0.0141", "1", "0.7200 ± 0.0141"] in rows  # v3's best
    assert ["default", "2.67", "3.0 / 0.8100 / 0.7100", "3.0 / 0.8100 / 0.7100", "2.0 / 0.8100 / 0.7100"] in rows
    decisions = {line.split(":")[0][2:]: line for line in out.splitlines() if line.startswith("- ")}
    # LayerNorm: no LayerNorm is the simpler option and scores better (7/3 vs 8/3): the LayerNorm goes
    assert "**layer_norm_none**" in decisions["LayerNorm"]
    # g: softplus scores better (7/3 vs 8/3) but is above the default in only 2 of 3 votes: identity stays
    assert "**default**" in decisions["mask activation g"]
    assert "score 2.33 vs 2.67, validation AUC above in 2 of 3 votes" in decisions["mask activation g"]
    assert "not decided" in decisions["mask kind"]  # its variants were not run


def test_the_rule_script_refuses_a_cell_with_a_missing_run(tmp_path):
    folder = _cell(tmp_path / "v1", 0, skip=("g_sigmoid", 1))
    with pytest.raises(SystemExit, match=r"v1: runs missing \(g_sigmoid seed 1\)"):
        _rule_script().main(["--vote", "v1", folder])
