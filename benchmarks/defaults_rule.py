"""Read the defaults rule's ablations and apply the rule (docs/design-decisions.md): per-vote ranks, scores, one decision per axis.

    .venv/bin/python benchmarks/defaults_rule.py \\
        --vote frappe runs/ablate/frappe_80k runs/ablate/frappe_320k \\
        --vote adult_income runs/ablate/adult_income_50k runs/ablate/adult_income_200k \\
        --vote adult_never_married runs/ablate/adult_never_married_50k runs/ablate/adult_never_married_200k \\
        --vote industrial runs/ablate/industrial_150k runs/ablate/industrial_600k \\
        --vote synthetic runs/ablate/synthetic_150k runs/ablate/synthetic_600k

Each ``--vote NAME DIR [DIR ...]`` names a data set and the ``mldcn ablate``
output folders of its budgets (one cell each). From each folder's
``results.jsonl`` it takes every run's **validation** AUC (the mean over the
tasks), keyed by variant and seed; test AUC is printed beside it and never
read by the rule. A variant missing a seed in a cell is an error, not dropped.

It prints, in Markdown: one table per vote (each cell's validation AUC, its
rank in the cell, and test AUC, mean ± sd over the seeds), the ranking (each
variant's score and per vote its rank, validation and test AUC), and the
decision per axis.

The decision, one axis at a time: the axis's best-scoring option is compared
with the simpler option of the axis (the default, except for LayerNorm, where
no LayerNorm is the simpler). The other option wins only if its score is
better *and* its validation AUC is above the simpler option's in at least 3
of the votes (of 5); otherwise the simpler option stays or wins.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from mldcn.studies.ablate import VARIANTS, cell_ranks, rule_scores
from mldcn.studies.runner import load_results
from mldcn.studies.table import format_table, mean_sd

#: axis → its options (variant names); the first is the simpler one
AXES = {
    "mask kind": ["default", "no_mask", "static_mask"],
    "mask source": ["default", "source_x0"],
    "mask site": ["default", "site_input", "site_output"],
    "mask activation g": ["default", "g_sigmoid", "g_2sigmoid", "g_softplus"],
    "mask width t / r": ["default", "hidden_ratio_0.5", "hidden_ratio_2"],
    "mask sharing": ["default", "shared_mask"],
    "LayerNorm": ["layer_norm_none", "default"],
}
WINS_NEEDED = 3


def read_cell(folder: Path) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Validation and test AUC per variant, over the seeds in sorted order."""
    path = folder / "results.jsonl"
    try:
        records = list(load_results(folder).values())
        runs = {(r["variant"], r["seed"]): r for r in records}
    except (json.JSONDecodeError, KeyError) as error:
        sys.exit(f"{path}: not an ablation's records ({error})")
    if not records:
        sys.exit(f"{path}: no runs (run the ablation first)")
    variants = list(dict.fromkeys(variant for variant, _ in runs))  # in the ablation's order
    seeds = sorted({seed for _, seed in runs})
    missing = [f"{v} seed {s}" for v in variants for s in seeds if (v, s) not in runs]
    if missing:
        sys.exit(f"{folder}: runs missing ({', '.join(missing)}); finish the ablation first")

    def per_seed(metric: str) -> dict[str, list[float]]:
        return {v: [runs[v, s][metric] for s in seeds] for v in variants}

    return per_seed("valid_auc"), per_seed("test_auc")


def decide(scores: dict[str, dict]) -> list[tuple[str, str, str]]:
    """(axis, chosen option, why) for each axis whose options were all run."""
    decisions = []
    for axis, options in AXES.items():
        if not all(o in scores for o in options):
            decisions.append((axis, "–", f"not decided: {[o for o in options if o not in scores]} not run"))
            continue
        simple, challenger = options[0], min(options[1:], key=lambda o: scores[o]["score"])
        votes = scores[simple]["votes"]
        wins = sum(scores[challenger]["votes"][v]["auc"] > votes[v]["auc"] for v in votes)
        better = scores[challenger]["score"] < scores[simple]["score"]
        why = (f"{challenger}: score {scores[challenger]['score']:.2f} vs {scores[simple]['score']:.2f}, "
               f"validation AUC above in {wins} of {len(votes)} votes")  # fmt: skip
        chosen = challenger if better and wins >= WINS_NEEDED else simple
        if chosen == "no_mask":  # the rule: without its mask the model is DCNv2 low-rank
            chosen, why = simple, why + "; no mask won, so the preset keeps its mask and the docs say the mask did not pay"
        decisions.append((axis, chosen, why))
    return decisions


def vote_table(name: str, folders: list[str], valid: list[dict], test: list[dict]) -> str:
    """One vote's cells side by side: validation AUC (rank in the cell) and test AUC per variant."""
    columns = [("variant", "variant")]
    for i, folder in enumerate(folders):
        columns += [((i, column), f"{Path(folder).name} {column}") for column in ("valid AUC", "rank", "test AUC")]
    ranks = [cell_ranks(cell) for cell in valid]
    rows = []
    for variant in valid[0]:
        row = {"variant": variant}
        for i, (cell_valid, cell_rank, cell_test) in enumerate(zip(valid, ranks, test)):
            row[i, "valid AUC"] = mean_sd(cell_valid[variant])
            row[i, "rank"] = f"{cell_rank[variant]:g}"
            row[i, "test AUC"] = mean_sd(cell_test[variant])
        rows.append(row)
    return f"### {name}\n\n{format_table(rows, columns, markdown=True)}\n"


def ranking_table(scores: dict[str, dict], tests: dict[str, list[dict]]) -> str:
    """Each variant's score and, per vote, its rank, validation AUC and test AUC (means), best score first."""
    columns = [("variant", "variant"), ("score", "score")] + [(v, f"{v} rank / valid AUC / test AUC") for v in tests]
    rows = []
    for n in sorted(scores, key=lambda n: scores[n]["score"]):
        row = {"variant": n, "score": f"{scores[n]['score']:.2f}"}
        for v, cells in tests.items():
            test_auc = statistics.fmean(statistics.fmean(c[n]) for c in cells)
            row[v] = f"{scores[n]['votes'][v]['rank']:.1f} / {scores[n]['votes'][v]['auc']:.4f} / {test_auc:.4f}"
        rows.append(row)
    return f"### Ranking\n\n{format_table(rows, columns, markdown=True)}\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vote", nargs="+", action="append", required=True, metavar=("NAME", "DIR"))
    args = parser.parse_args(argv)
    votes, tests = {}, {}
    for name, *folders in args.vote:
        if not folders:
            sys.exit(f"--vote {name}: name its ablation folders")
        cells = [read_cell(Path(folder)) for folder in folders]
        votes[name] = [valid for valid, _ in cells]
        tests[name] = [test for _, test in cells]
        variants = [set(cell) for cell in votes[name]]
        if any(v != variants[0] for v in variants):
            sys.exit(f"--vote {name}: its folders ran different variants")
        print(vote_table(name, folders, votes[name], tests[name]))
    scores = rule_scores(votes)
    print(ranking_table(scores, tests))
    for axis, chosen, why in decide(scores):
        change = ", ".join(f"{k}={v}" for k, v in VARIANTS.get(chosen, {}).items()) or "(the preset's option)"
        print(f"- {axis}: **{chosen}** [{change}] — {why}")


if __name__ == "__main__":
    main()
