"""Studies: significance tests, the budget solver over families, and tiny end-to-end sweeps."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import yaml
from scipy import stats

from mldcn.cli import main
from mldcn.config import ConfigError
from mldcn.features import CategoricalField, FeatureSpec, NumericField
from mldcn.models import get_preset, list_families
from mldcn.models.budget import BudgetError, interaction_flops, match_budget
from mldcn.studies.ablate import ablate_config_from_dict, run_ablation
from mldcn.studies.scale import FAMILIES, run_scale, scale_config_from_dict, sized_models
from mldcn.studies.stats import delong, paired_t


def brute_force_delong(y, a, b):
    """DeLong's statistic straight from its definition: O(m·n) pairwise kernels."""
    pos, neg = y > 0.5, y <= 0.5

    def psi(x, z):
        return (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])

    k_a, k_b = psi(a[pos], a[neg]), psi(b[pos], b[neg])  # [m, n]
    m, n = k_a.shape
    auc = np.array([k_a.mean(), k_b.mean()])
    v10 = np.vstack([k_a.mean(axis=1), k_b.mean(axis=1)])  # per positive
    v01 = np.vstack([k_a.mean(axis=0), k_b.mean(axis=0)])  # per negative
    cov = np.cov(v10) / m + np.cov(v01) / n
    z = (auc[0] - auc[1]) / math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    return auc, z


def test_delong_matches_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    y = (rng.random(2000) < 0.4).astype(float)
    a = np.round(y + rng.normal(0, 1.0, 2000), 1)  # rounded: many ties
    b = np.round(y + rng.normal(0, 1.5, 2000), 1)
    result = delong(y, a, b)
    auc, z = brute_force_delong(y, a, b)
    assert result.auc_a == pytest.approx(auc[0], abs=1e-12)
    assert result.auc_b == pytest.approx(auc[1], abs=1e-12)
    assert result.z == pytest.approx(z, rel=1e-9)
    assert result.p_value == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-9)
    assert result.auc_a > result.auc_b and result.p_value < 0.05  # the less noisy scores win


def test_delong_of_a_model_with_itself_is_not_significant():
    rng = np.random.default_rng(1)
    y = (rng.random(200) < 0.5).astype(float)
    s = y + rng.normal(0, 1, 200)
    result = delong(y, s, s)
    assert result.difference == 0 and result.z == 0 and result.p_value == 1.0


def test_paired_t_matches_scipy_and_gives_a_confidence_interval():
    a = [0.791, 0.790, 0.7898, 0.7912]
    b = [0.786, 0.7851, 0.7888, 0.7866]
    result = paired_t(a, b)
    reference = stats.ttest_rel(a, b)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-10)
    diff = np.subtract(a, b)
    half = stats.t.ppf(0.975, 3) * diff.std(ddof=1) / 2  # se = sd / sqrt(4)
    assert result.mean_difference == pytest.approx(diff.mean())
    assert (result.ci_low, result.ci_high) == pytest.approx((diff.mean() - half, diff.mean() + half))


def test_paired_t_with_one_pair_has_no_p_value():
    assert math.isnan(paired_t([0.8], [0.7]).p_value)


SCHEMAS = {
    "frappe-like": (FeatureSpec(categorical=tuple(CategoricalField(f"c{i}", 100) for i in range(10))), 10,
                    (50e3, 200e3, 1e6, 3e6)),
    "criteo-like": (FeatureSpec(categorical=tuple(CategoricalField(f"c{i}", 100) for i in range(26)),
                                numeric=tuple(NumericField(f"n{i}") for i in range(13))), 16,
                    (200e3, 1e6, 3e6, 10e6)),
}  # fmt: skip


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("schema", list(SCHEMAS))
def test_solver_hits_every_budget_within_three_percent(family, schema):
    features, dim, budgets = SCHEMAS[schema]
    base = get_preset(family).replace(embedding_dim=dim)
    for budget in budgets:
        config = match_budget(base, features, budget)
        flops = interaction_flops(config, features).total
        assert abs(flops / budget - 1) <= 0.03, (family, schema, budget, flops)


def test_solver_reports_an_unreachable_budget():
    features, dim, _ = SCHEMAS["criteo-like"]
    with pytest.raises(BudgetError, match="lands within"):
        match_budget(get_preset("mldcn").replace(embedding_dim=dim), features, 2_000)


def test_scale_default_families_are_registered():
    assert set(FAMILIES) <= set(list_families())  # the families `mldcn scale` compares by default


TINY_DATA = {
    "source": "synthetic",
    "synthetic": {"train_rows": 6000, "valid_rows": 2000, "test_rows": 2000, "vocab_sizes": [8, 16, 32], "num_numeric": 1},
}
TINY_TRAIN = {"epochs": 1, "batch_size": 1024, "progress": False, "precision": "fp32"}


def test_scale_sweep_end_to_end_and_resume(tmp_path, capsys, monkeypatch):
    import mldcn.studies.scale as scale

    titles = []
    real_plot = scale.plot_auc_vs_flops
    monkeypatch.setattr(scale, "plot_auc_vs_flops", lambda rows, path, title: titles.append(title) or real_plot(rows, path, title))
    config = scale_config_from_dict(
        {
            "budgets": [20000, 60000],
            "families": ["mldcn", "dcnv2_lowrank"],
            "seeds": [0, 1],
            "embedding_dim": 4,
            "head": {"hidden": [16]},
            "train": TINY_TRAIN,
            "grid": {"lr": [0.001, 0.01]},
            "latency_batches": [1, 64],
            "data": TINY_DATA,
        }
    )
    summary = run_scale(config, tmp_path, echo=lambda _: None)
    results = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    # tuning: 2 families x 2 budgets x 2 lr on seed 0; then 1 more seed at the chosen lr
    assert len(results) == 2 * 2 * 2 + 2 * 2
    for row in summary["rows"]:
        assert abs(row["interaction_flops"] / row["budget"] - 1) <= 0.03
        assert row["seeds"] == 2
        seed0 = [r for r in results if r["family"] == row["family"] and r["budget"] == row["budget"] and r["seed"] == 0]
        chosen = max(seed0, key=lambda r: r["valid_auc"])  # chosen on validation, never on test
        assert row["lr"] == chosen["lr"]
    assert {s["rival"] for s in summary["significance"]} == {"dcnv2_lowrank"}
    assert (tmp_path / "summary.md").read_text().count("|") > 20
    assert (tmp_path / "auc_vs_flops.png").stat().st_size > 1000
    assert titles == ["synthetic — matched interaction FLOPs"]  # the data set's name, not its folder's
    assert (tmp_path / "results.csv").exists()
    # resume: nothing to rerun, same summary
    again = run_scale(config, tmp_path, echo=lambda _: None)
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == len(results)
    assert [r["auc_mean"] for r in again["rows"]] == [r["auc_mean"] for r in summary["rows"]]
    # resumed where one run's predictions are missing (records committed without them): the paired
    # t-test stays, DeLong is left blank for that pair only
    assert all("delong_p" in s for s in summary["significance"])
    rival = next(r for r in results if r["family"] == "dcnv2_lowrank" and r["budget"] == 20000 and r["seed"] == 0
                 and r["lr"] == next(x["lr"] for x in summary["rows"] if x["family"] == "dcnv2_lowrank" and x["budget"] == 20000))
    (tmp_path / rival["predictions"]).unlink()
    partial = run_scale(config, tmp_path, echo=lambda _: None)
    assert [("delong_p" in s, s["budget"]) for s in partial["significance"]] == [(False, 20000), (True, 60000)]
    assert [s["paired_p"] for s in partial["significance"]] == [s["paired_p"] for s in summary["significance"]]


ONE_RUN = {
    "budgets": [20000], "families": ["dcnv2_lowrank"], "reference": "dcnv2_lowrank", "seeds": [0],
    "embedding_dim": 4, "head": {"hidden": [16]}, "train": TINY_TRAIN, "grid": {"lr": [0.001]},
    "latency_batches": [1], "data": TINY_DATA,
}  # fmt: skip


def hide(monkeypatch, *modules: str) -> None:
    """Make ``import module`` fail, as on a machine without it."""
    for name in list(sys.modules):
        if name.split(".")[0] in modules:
            monkeypatch.delitem(sys.modules, name)
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def test_scale_without_scipy_says_which_extra_before_training(tmp_path, monkeypatch, capsys):
    hide(monkeypatch, "scipy")
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(ONE_RUN))
    assert main(["scale", "--config", str(tmp_path / "sweep.yaml"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "scipy is not installed, and the significance tests of mldcn scale need it: pip install 'mldcn[stats]'" in err
    assert not (tmp_path / "out" / "results.jsonl").exists()  # refused before the first run
    assert main(["ablate", "--set", "seeds=[0]", "--out", str(tmp_path / "ablate")]) == 2
    assert "pip install 'mldcn[stats]'" in capsys.readouterr().err


def test_scale_without_matplotlib_says_the_plot_is_skipped(tmp_path, monkeypatch):
    hide(monkeypatch, "matplotlib")
    said = []
    run_scale(scale_config_from_dict(ONE_RUN), tmp_path, echo=said.append)
    assert any("matplotlib is not installed: the AUC-vs-FLOPs plot will be skipped" in line for line in said)
    assert "No plot: matplotlib is not installed" in (tmp_path / "summary.md").read_text()
    assert not (tmp_path / "auc_vs_flops.png").exists()


def test_ablation_end_to_end(tmp_path):
    config = ablate_config_from_dict(
        {
            "budget": 30000,
            "variants": ["default", "no_mask", "static_mask"],
            "seeds": [0, 1],
            "embedding_dim": 4,
            "head": {"hidden": [16]},
            "train": TINY_TRAIN,
            "data": TINY_DATA,
        }
    )
    summary = run_ablation(config, tmp_path, echo=lambda _: None)
    rows = {r["variant"]: r for r in summary["rows"]}
    assert set(rows) == {"default", "no_mask", "static_mask"}
    assert rows["default"]["difference"] == 0.0
    for row in rows.values():
        assert abs(row["interaction_flops"] / 30000 - 1) <= 0.03
    assert rows["no_mask"]["rank"] > rows["default"]["rank"]  # no mask network: the budget buys rank
    assert "| no_mask " in (tmp_path / "ablation.md").read_text()


def test_ablation_rejects_an_unknown_variant():
    from mldcn.config import ConfigError

    with pytest.raises(ConfigError, match="unknown variant"):
        ablate_config_from_dict({"variants": ["default", "nope"]})


def test_budget_command_lists_each_family_within_tolerance(capsys):
    assert main(["budget", "--flops", "150000", "--families", "mldcn", "dcnv2_lowrank", "masknet_parallel"]) == 0
    out = capsys.readouterr().out
    for name in ("mldcn", "dcnv2_lowrank", "masknet_parallel"):
        assert name in out
    errors = [float(token.rstrip("%")) for token in out.split() if token.endswith("%") and token[0] in "+-"]
    assert len(errors) == 3 and all(abs(e) <= 3 for e in errors)


def _tiny_specs(config):
    from mldcn.studies.runner import RunSpec
    from mldcn.studies.scale import sized_models
    from mldcn.train.run import load_data

    dataset = load_data(config.data)
    models = sized_models(config, dataset)
    train = dataclasses.replace(config.train, seed=0)
    specs = [RunSpec(f"{f}|{b}", m, train, {"family": f}) for (f, b), m in models.items()]
    return dataset, specs


def test_study_workers_skip_live_claims_and_take_over_dead_ones(tmp_path):
    """Two workers share a folder: a run claimed by a live process is waited for, not rerun;
    a claim left by a dead process is taken over."""
    from mldcn.studies.runner import run_study, safe_name

    config = scale_config_from_dict(
        {"budgets": [20000], "families": ["mldcn", "dcnv2_lowrank"], "seeds": [0], "embedding_dim": 4,
         "head": {"hidden": [16]}, "train": TINY_TRAIN, "data": TINY_DATA}
    )
    dataset, specs = _tiny_specs(config)
    live, dead = specs
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True, capture_output=True, text=True)
    try:
        for spec, pid in [(live, other.pid), (dead, int(finished.stdout))]:
            claim = tmp_path / "runs" / safe_name(spec.key) / ".claim"
            claim.parent.mkdir(parents=True)
            claim.write_text(str(pid))

        def other_worker_finishes() -> None:  # the live worker appends its result, then releases
            time.sleep(1.0)
            with open(tmp_path / "results.jsonl", "a") as f:
                f.write(json.dumps({"key": live.key, "test_auc": 0.5}) + "\n")
            (tmp_path / "runs" / safe_name(live.key) / ".claim").unlink()

        threading.Thread(target=other_worker_finishes).start()
        results = run_study(specs, dataset, config.data, tmp_path, echo=lambda _: None, poll_seconds=0.1)
    finally:
        other.kill()
    assert results[live.key] == {"key": live.key, "test_auc": 0.5}  # waited for, not rerun
    assert 0.0 < results[dead.key]["test_auc"] <= 1.0  # taken over and trained
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["key"] for line in lines) == sorted([live.key, dead.key])
    assert not list(tmp_path.glob("runs/*/.claim"))


def test_scale_compares_families_as_experts_of_one_multi_task_structure(tmp_path):
    two_tasks = {**TINY_DATA, "synthetic": {**TINY_DATA["synthetic"], "tasks": ["click", "quality"], "task_rates": [0.3]}}
    config = scale_config_from_dict(
        {
            "budgets": [40000], "families": ["mldcn", "dcnv2_lowrank"], "seeds": [0, 1], "embedding_dim": 4,
            "head": {"structure": "stacked", "hidden": [8]}, "train": TINY_TRAIN, "grid": {"lr": [0.003]},
            "latency_batches": [1], "data": two_tasks, "multitask": {"kind": "mmoe", "num_experts": 2},
        }
    )  # fmt: skip
    summary = run_scale(config, tmp_path, echo=lambda _: None)
    assert summary["tasks"] == ["click", "quality"]
    for row in summary["rows"]:  # both families resized so their two experts and gates meet the budget
        assert abs(row["interaction_flops"] / 40000 - 1) <= 0.03
        assert {"auc_click", "auc_quality"} <= set(row)
    assert [(s["rival"], s["task"]) for s in summary["significance"]] == [("dcnv2_lowrank", "click"), ("dcnv2_lowrank", "quality")]
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert all(set(r["test"]) == {"click", "quality"} for r in records)
    assert all(r["test_auc"] == pytest.approx((r["test"]["click"]["auc"] + r["test"]["quality"]["auc"]) / 2) for r in records)
    assert (tmp_path / "auc_vs_flops_click.png").exists() and (tmp_path / "auc_vs_flops_quality.png").exists()
    assert "test_click_auc" in (tmp_path / "results.csv").read_text().splitlines()[0]


def test_one_pass_scale_sweep_fits_scaling_laws(tmp_path):
    # one pass of 2,048 examples per run (4 batches of 512, scored twice: the learning curve),
    # three budgets, two seeds: each family's test logloss fitted against its FLOPs, and its
    # held-out logloss against the examples seen at the largest budget
    config = scale_config_from_dict(
        {
            **ONE_RUN,
            "budgets": [5000, 20000, 60000],
            "families": ["mldcn", "dcnv2_lowrank"],
            "reference": "mldcn",
            "seeds": [0, 1],
            "train": {**TINY_TRAIN, "batch_size": 512, "examples": 2048, "curve_points": 3},
        }
    )
    printed = []
    summary = run_scale(config, tmp_path, echo=printed.append)
    results = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(results) == 2 * 3 * 2
    assert sum("(one pass of 2,048 examples, " in line for line in printed) == 12
    for record in results:
        assert [p["examples"] for p in record["curve"]] == [512, 1536, 2048]  # after batches 1, 3 and 4 (evenly spaced, rounded)
    compute = summary["scaling"]["compute"]
    assert {row["family"] for row in compute["rows"]} == {"mldcn", "dcnv2_lowrank"}
    assert compute["form"] in ("power", "loglinear")
    rival = next(row for row in compute["rows"] if row["family"] == "dcnv2_lowrank")
    assert 0 <= rival["vs_reference_p"] <= 1
    # the fit reproduces what it was given: the fitted curve at each family's points, by hand from its parameters
    fit = compute["fits"]["mldcn"]
    points = [(r["interaction_flops"], r["test_logloss"]) for r in results if r["family"] == "mldcn"]
    x = np.array([p[0] for p in points], dtype=float)
    y = np.array([p[1] for p in points])
    params = fit["params"]
    if fit["form"] == "power":
        predicted = params["c"] + params["a"] * x ** (-params["b"])
    else:
        predicted = params["p"] + params["q"] * np.log10(x)
    assert np.sum((y - predicted) ** 2) == pytest.approx(fit["rss"][fit["form"]], rel=1e-6)
    assert summary["scaling"]["examples"]["budget"] == 60000
    text = (tmp_path / "summary.md").read_text()
    assert "## Scaling law: test logloss against interaction FLOPs" in text
    assert "held-out logloss against examples seen at 60,000 FLOPs" in text
    assert (tmp_path / "loss_vs_flops.png").stat().st_size > 1000
    # the learning-curve table: for each family and budget, the fall of the held-out logloss
    # over the second half of the pass (from the first point at 1,024 examples or later: 1,536)
    # and over the last tenth (the last two points), by hand from the records
    rows = {(row["family"], row["budget"]): row for row in summary["curves"]["rows"]}
    assert len(rows) == 2 * 3
    for family in ("mldcn", "dcnv2_lowrank"):
        curves = [[p["valid_logloss"] for p in r["curve"]] for r in results if r["family"] == family and r["budget"] == 20000]
        falls = [c[1] - c[2] for c in curves]
        mean, std = statistics.fmean(falls), statistics.stdev(falls)
        assert rows[family, 20000]["fall_second_half"] == f"{mean:.5f} ± {std:.5f}" == rows[family, 20000]["fall_last_tenth"]
        assert rows[family, 20000]["last"] == f"{statistics.fmean(c[2] for c in curves):.4f} ± {statistics.stdev(c[2] for c in curves):.4f}"
    assert "## Learning curves" in text
    assert (tmp_path / "learning_curves.png").stat().st_size > 1000


def test_scale_sweeps_a_variant_with_non_default_options_beside_its_preset(tmp_path):
    # "ML-DCN without LayerNorm" beside ML-DCN, without writing a preset
    config = scale_config_from_dict(
        {
            **ONE_RUN,
            "families": ["mldcn", "mldcn_no_ln"],
            "reference": "mldcn",
            "variants": {"mldcn_no_ln": {"preset": "mldcn", "interaction": {"layer_norm": "none"}}},
        }
    )
    models = sized_models(config, make_synthetic_dataset())
    default, variant = models["mldcn", 20000], models["mldcn_no_ln", 20000]
    assert default.interaction.layer_norm == "layer" and variant.interaction.layer_norm == "none"
    assert variant.head == config.head and variant.embedding_dim == 4  # the sweep's shared head and size
    assert abs(interaction_flops(variant, make_synthetic_dataset().features).total / 20000 - 1) <= 0.03
    summary = run_scale(config, tmp_path, echo=lambda _: None)
    assert {row["family"] for row in summary["rows"]} == {"mldcn", "mldcn_no_ln"}
    assert {s["rival"] for s in summary["significance"]} == {"mldcn_no_ln"}


def test_scale_variants_are_checked():
    with pytest.raises(ConfigError, match="is a preset's name"):
        scale_config_from_dict({**ONE_RUN, "variants": {"dcnv2_lowrank": {"preset": "mldcn"}}})
    with pytest.raises(ConfigError, match=r"scale.variants.bad: unknown key"):
        scale_config_from_dict({**ONE_RUN, "families": ["bad"], "reference": "bad", "variants": {"bad": {"preset": "mldcn", "layers": 3}}})
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        scale_config_from_dict({**ONE_RUN, "families": ["nope"], "reference": "nope"})
    # the checks after the families' still run (a sweep's multi-task structure is refused up front)
    with pytest.raises(ConfigError, match="unknown multitask kind 'moe'"):
        scale_config_from_dict({**ONE_RUN, "multitask": {"kind": "moe"}})


def make_synthetic_dataset():
    from mldcn.data.source import load_data

    return load_data(scale_config_from_dict(ONE_RUN).data)
