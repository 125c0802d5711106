"""The report: the paper's table from synthetic metrics files, the figures, and the notebook under papermill."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from research_rl import report

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ("hotpotqa", "2wikimultihopqa", "musique", "bamboogle")
MODELS = ("qwen-7b-base", "qwen-7b-instruct")
METHODS = ("zero_shot", "naive_rag", "iter_retgen", "ircot", "research")
SEARCHES = {"zero_shot": 0, "naive_rag": 1, "iter_retgen": 3}


def make_cfg(tmp_path: Path) -> dict:
    return {
        "seed": 0,
        "paths": {"data": str(tmp_path / "data"), "results": str(tmp_path / "results")},
        "models": [{"name": name, "path": f"/models/{name}", "apply_chat": "instruct" in name} for name in MODELS],
        "report": {
            "notebook": str(REPO_ROOT / "notebooks" / "report.py"),
            "out_tables": str(tmp_path / "results" / "tables"),
            "out_figures": str(tmp_path / "results" / "figures"),
        },
    }


def score(model: str, benchmark: str, method: str) -> float:
    """A distinct, known EM per cell."""
    return round(0.1 * (METHODS.index(method) + 1) + 0.01 * BENCHMARKS.index(benchmark) + 0.05 * MODELS.index(model), 4)


def write_synthetic_results(cfg: dict, judge: bool = False, skip: tuple = ()) -> None:
    results = Path(cfg["paths"]["results"])
    for model in MODELS:
        for benchmark in BENCHMARKS:
            for method in METHODS:
                if (model, benchmark, method) in skip:
                    continue
                out = results / "eval" / model / benchmark / method
                out.mkdir(parents=True, exist_ok=True)
                em = score(model, benchmark, method)
                metrics = {
                    "n": 20,
                    "em": em,
                    "f1": em + 0.05,
                    "cover_em": em + 0.1,
                    "precision": em,
                    "recall": em,
                    "mean_searches": 1.0,
                    "ci95": {"em": [em - 0.02, em + 0.03], "f1": [em + 0.01, em + 0.09]},
                }
                if judge:
                    metrics["judge"] = em + 0.2
                    metrics["ci95"]["judge"] = [em + 0.15, em + 0.25]
                (out / "metrics.json").write_text(json.dumps(metrics))
                with open(out / "predictions.jsonl", "w") as handle:
                    for i in range(20):
                        n = SEARCHES.get(method, i % 4 + (1 if model == MODELS[1] else 0))
                        handle.write(json.dumps({"id": f"q{i}", "num_searches": n}) + "\n")
    for m, model in enumerate(MODELS):
        out = results / "models" / model
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "metrics.jsonl", "w") as handle:
            for step in range(1, 61):
                row = {
                    "step": step,
                    "reward_mean": 0.1 + 0.5 * (1 - math.exp(-step / (15 + 10 * m))),
                    "format_rate": min(1.0, 0.2 + step / 50),
                    "searches_per_rollout": 0.5 + step / 40,
                    "response_length": 120 + 2 * step + 10 * math.sin(step),
                }
                handle.write(json.dumps(row) + "\n")


def test_main_table_has_the_papers_layout(tmp_path):
    cfg = make_cfg(tmp_path)
    write_synthetic_results(cfg, skip=(("qwen-7b-base", "bamboogle", "ircot"),))
    table = report.main_table(cfg)
    assert list(table.index) == [
        (model, label) for model in MODELS for label in ("Direct Gen.", "Naive RAG", "Iter-RetGen", "IRCoT", "ReSearch")
    ]
    assert list(table.columns) == [(b, m) for b in ("HotpotQA", "2Wiki", "MuSiQue", "Bamboogle") for m in ("EM", "F1")]
    # ReSearch with the instruct model on MuSiQue: EM 0.5 + 0.02 + 0.05 = 0.57, interval [0.55, 0.60]
    assert table.loc[("qwen-7b-instruct", "ReSearch"), ("MuSiQue", "EM")] == "57.0 [55.0, 60.0]"
    assert table.loc[("qwen-7b-base", "IRCoT"), ("Bamboogle", "EM")] == report.MISSING
    assert table.loc[("qwen-7b-base", "IRCoT"), ("HotpotQA", "F1")] == "45.0 [41.0, 49.0]"


def test_judge_columns_appear_when_judged(tmp_path):
    cfg = make_cfg(tmp_path)
    write_synthetic_results(cfg, judge=True)
    table = report.main_table(cfg)
    assert [m for b, m in table.columns if b == "HotpotQA"] == ["EM", "F1", "Judge"]
    assert table.loc[("qwen-7b-base", "Naive RAG"), ("HotpotQA", "Judge")] == "40.0 [35.0, 45.0]"


def test_write_tables_markdown_csv_latex(tmp_path):
    cfg = make_cfg(tmp_path)
    write_synthetic_results(cfg)
    written = report.write_tables(cfg)
    markdown = written["markdown"].read_text()
    assert markdown.splitlines()[0].startswith("| Model | Method | HotpotQA EM | HotpotQA F1 | 2Wiki EM")
    assert "| qwen-7b-base | ReSearch | 50.0 [48.0, 53.0] |" in markdown
    assert len(markdown.splitlines()) == 2 + len(MODELS) * len(METHODS)
    csv = pd.read_csv(written["csv"])
    assert list(csv.columns[:3]) == ["model", "method", "HotpotQA EM"] and len(csv) == 10
    latex = written["latex"].read_text()
    assert "\\multicolumn{2}{c}{HotpotQA}" in latex and "\\toprule" in latex and "\\bottomrule" in latex
    # the model named once per block, then its methods
    assert "qwen-7b-base & Direct Gen. & 10.0 {\\scriptsize [8.0, 13.0]}" in latex
    assert "\n & ReSearch & 50.0 {\\scriptsize [48.0, 53.0]}" in latex
    every = pd.read_csv(written["metrics_csv"])
    assert len(every) == len(MODELS) * len(BENCHMARKS) * len(METHODS)


def test_figures(tmp_path):
    cfg = make_cfg(tmp_path)
    write_synthetic_results(cfg)
    curves = report.plot_training_curves(cfg)
    assert curves.name == "training_curves.png" and curves.stat().st_size > 10_000
    histograms = report.plot_search_histograms(cfg)
    assert [p.name for p in histograms] == [f"search_counts_{b}.png" for b in BENCHMARKS]


def test_nothing_to_report_yet(tmp_path):
    cfg = make_cfg(tmp_path)
    assert report.main_table(cfg).empty
    assert report.plot_training_curves(cfg) is None
    assert report.plot_search_histograms(cfg) == []
    assert set(report.write_tables(cfg)) == {"metrics_csv"}


def test_the_report_notebook_runs_headless_under_papermill(tmp_path):
    pytest.importorskip("papermill")
    cfg = make_cfg(tmp_path)
    write_synthetic_results(cfg, judge=True)
    report.run(cfg)
    tables = tmp_path / "results" / "tables"
    figures = tmp_path / "results" / "figures"
    assert {p.name for p in tables.iterdir()} == {
        "main_table.md",
        "main_table.csv",
        "main_table.tex",
        "eval_metrics.csv",
    }
    assert (figures / "training_curves.png").exists()
    assert len(list(figures.glob("search_counts_*.png"))) == 4
    notebooks = tmp_path / "results" / "notebooks"
    html = (notebooks / "report.html").read_text()
    assert "ReSearch reproduction" in html and "57.0 [55.0, 60.0]" in html
    executed = json.loads((notebooks / "report.ipynb").read_text())
    assert any("injected-parameters" in c["metadata"].get("tags", []) for c in executed["cells"])


def write_predictions(cfg: dict, model: str, benchmark: str, method: str, ems: dict[str, float]) -> None:
    out = Path(cfg["paths"]["results"]) / "eval" / model / benchmark / method
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "predictions.jsonl", "w") as handle:
        for qid, em in ems.items():
            record = {"id": qid, "num_searches": 1, "metrics": {"em": em, "f1": min(1.0, em + 0.5)}}
            handle.write(json.dumps(record) + "\n")


def test_rl_gain_pairs_questions_by_id_per_benchmark_and_pooled(tmp_path):
    cfg = make_cfg(tmp_path)
    model = MODELS[0]
    # HotpotQA: q0 and q1 go from wrong to right, q2 stays right; q3 was answered only before RL.
    write_predictions(cfg, model, "hotpotqa", "research_base", {"q0": 0, "q1": 0, "q2": 1, "q3": 1})
    write_predictions(cfg, model, "hotpotqa", "research", {"q2": 1, "q1": 1, "q0": 1})
    # MuSiQue: q0 gets worse; its ids repeat HotpotQA's, which must not pair across benchmarks.
    write_predictions(cfg, model, "musique", "research_base", {"q0": 1, "q1": 0})
    write_predictions(cfg, model, "musique", "research", {"q0": 0, "q1": 0})
    # Bamboogle has no research cell: no row.
    write_predictions(cfg, model, "bamboogle", "research_base", {"q0": 1})

    gains = report.rl_gain_table(cfg).set_index(["model", "benchmark"])
    assert list(gains.index) == [(model, "hotpotqa"), (model, "musique"), (model, "All")]
    hotpot = gains.loc[(model, "hotpotqa")]
    assert hotpot["n"] == 3
    assert hotpot["em_before"] == pytest.approx(1 / 3) and hotpot["em_after"] == pytest.approx(1.0)
    assert hotpot["em_gain"] == pytest.approx(2 / 3)
    assert hotpot["f1_gain"] == pytest.approx((1.0 - 0.5) * 2 / 3)
    assert 0.0 <= hotpot["em_gain_lo"] <= hotpot["em_gain"] <= hotpot["em_gain_hi"] <= 1.0
    musique = gains.loc[(model, "musique")]
    assert (musique["n"], musique["em_gain"]) == (2, -0.5)
    pooled = gains.loc[(model, "All")]
    assert pooled["n"] == 5
    assert pooled["em_gain"] == pytest.approx((2 - 1) / 5)
    assert pooled["em_gain_lo"] < 0 < pooled["em_gain_hi"]


def test_rl_gain_interval_collapses_when_every_question_gains_the_same(tmp_path):
    cfg = make_cfg(tmp_path)
    write_predictions(cfg, MODELS[1], "musique", "research_base", {f"q{i}": 0 for i in range(8)})
    write_predictions(cfg, MODELS[1], "musique", "research", {f"q{i}": 1 for i in range(8)})
    row = report.rl_gain_table(cfg).iloc[0]
    assert (row["em_gain"], row["em_gain_lo"], row["em_gain_hi"]) == (1.0, 1.0, 1.0)
    markdown = report.rl_gain_to_markdown(report.rl_gain_table(cfg))
    assert f"| {MODELS[1]} | MuSiQue | 8 | 0.0 | 100.0 | +100.0 [100.0, 100.0] |" in markdown
    assert f"| {MODELS[1]} | All | 8 |" in markdown


def test_write_tables_adds_the_rl_gain_table_when_both_research_cells_exist(tmp_path):
    cfg = make_cfg(tmp_path)
    write_synthetic_results(cfg)
    assert "rl_gain_markdown" not in report.write_tables(cfg)
    write_predictions(cfg, MODELS[0], "hotpotqa", "research_base", {"q0": 0, "q1": 1})
    write_predictions(cfg, MODELS[0], "hotpotqa", "research", {"q0": 1, "q1": 1})
    written = report.write_tables(cfg)
    assert written["rl_gain_markdown"].read_text().count("\n") == 4  # header, rule, HotpotQA, All
    assert list(pd.read_csv(written["rl_gain_csv"])["benchmark"]) == ["hotpotqa", "All"]
