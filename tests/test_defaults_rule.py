"""The defaults rule's ranking (docs/design-decisions.md), on cells worked out by hand."""

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
