"""The report stage: the paper's main table, the training curves and the search-count histograms.

The logic lives in the functions here so tests can call them directly; `run` executes the report
notebook (notebooks/report.py, jupytext percent format) with papermill, the notebook calls these
functions and shows what they wrote, and the executed notebook is kept as .ipynb and HTML.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from research_rl import paths
from research_rl.evaluation.bootstrap import bootstrap_ci

BENCHMARK_LABELS = {
    "hotpotqa": "HotpotQA",
    "2wikimultihopqa": "2Wiki",
    "musique": "MuSiQue",
    "bamboogle": "Bamboogle",
}
METHOD_LABELS = {
    "zero_shot": "Direct Gen.",
    "naive_rag": "Naive RAG",
    "iter_retgen": "Iter-RetGen",
    "ircot": "IRCoT",
    "research_base": "ReSearch prompt, before RL",
    "research": "ReSearch",
}
METRIC_LABELS = {"em": "EM", "f1": "F1", "judge": "Judge", "cover_em": "Cover-EM"}
# The training metrics the curves show, with their axis labels.
TRAINING_PANELS = {
    "reward_mean": "Mean reward",
    "format_rate": "Format rate (fraction of rollouts)",
    "searches_per_rollout": "Searches per rollout",
    "response_length": "Response length (tokens)",
}
MISSING = "–"
LATEX_MISSING = "--"
# The methods that choose how many searches to make; the others search a fixed number of times.
ADAPTIVE_METHODS = ("ircot", "research_base", "research")


# ---------------------------------------------------------------- reading results


def collect_eval_metrics(cfg: dict[str, Any]) -> pd.DataFrame:
    """One row per evaluated cell (model, benchmark, method) from every metrics.json under results/eval."""
    rows = []
    for path in sorted((paths.results_dir(cfg) / "eval").glob("*/*/*/metrics.json")):
        model, benchmark, method = path.parts[-4:-1]
        data = json.loads(path.read_text(encoding="utf-8"))
        row: dict[str, Any] = {"model": model, "benchmark": benchmark, "method": method, "n": data.get("n")}
        for metric in ("em", "f1", "cover_em", "precision", "recall", "judge", "mean_searches"):
            row[metric] = data.get(metric)
        for metric, (low, high) in data.get("ci95", {}).items():
            row[f"{metric}_lo"], row[f"{metric}_hi"] = low, high
        rows.append(row)
    return pd.DataFrame(rows)


def load_training_metrics(cfg: dict[str, Any]) -> pd.DataFrame:
    """Every model's training log (results/models/<model>/metrics.jsonl) as one frame with a model column."""
    frames = []
    for entry in cfg["models"]:
        path = paths.trained_model_dir(cfg, entry["name"]) / "metrics.jsonl"
        if not path.exists():
            continue
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if records:
            frame = pd.DataFrame(records)
            frame.insert(0, "model", entry["name"])
            frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def load_search_counts(cfg: dict[str, Any]) -> pd.DataFrame:
    """Searches made per question, one row per (model, benchmark, method, question)."""
    rows = []
    for path in sorted((paths.results_dir(cfg) / "eval").glob("*/*/*/predictions.jsonl")):
        model, benchmark, method = path.parts[-4:-1]
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                searches = json.loads(line)["num_searches"]
                rows.append({"model": model, "benchmark": benchmark, "method": method, "searches": searches})
    return pd.DataFrame(rows, columns=["model", "benchmark", "method", "searches"])


# ---------------------------------------------------------------- the main table


def _ordered(values: list[str], preferred: list[str]) -> list[str]:
    """values in the preferred order first, any others after in sorted order."""
    return [v for v in preferred if v in values] + sorted(v for v in values if v not in preferred)


def table_metrics(metrics: pd.DataFrame) -> list[str]:
    """EM and F1, plus the judge score when any cell has one (the paper reports EM and judge)."""
    chosen = ["em", "f1"]
    if "judge" in metrics and metrics["judge"].notna().any():
        chosen.append("judge")
    return chosen


def format_cell(mean: float | None, low: float | None, high: float | None, latex: bool = False) -> str:
    """A score in percent with its 95% interval, e.g. `41.2 [36.8, 45.6]`; a dash when not evaluated."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return LATEX_MISSING if latex else MISSING
    text = f"{100 * mean:.1f}"
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return text
    interval = f"[{100 * low:.1f}, {100 * high:.1f}]"
    return f"{text} {{\\scriptsize {interval}}}" if latex else f"{text} {interval}"


def main_table(cfg: dict[str, Any], metrics: pd.DataFrame | None = None, latex: bool = False) -> pd.DataFrame:
    """The paper's layout: rows (model, method), columns (benchmark, metric); cells `mean [low, high]` in %.

    Models come in config order, methods in the paper's order, benchmarks HotpotQA, 2Wiki, MuSiQue,
    Bamboogle; cells never evaluated show a dash.
    """
    metrics = collect_eval_metrics(cfg) if metrics is None else metrics
    if metrics.empty:
        return pd.DataFrame()
    models = _ordered(sorted(set(metrics["model"])), [e["name"] for e in cfg["models"]])
    methods = _ordered(sorted(set(metrics["method"])), list(METHOD_LABELS))
    benchmarks = _ordered(sorted(set(metrics["benchmark"])), list(paths.BENCHMARKS))
    chosen = table_metrics(metrics)
    indexed = metrics.set_index(["model", "method", "benchmark"])
    rows, index = [], []
    for model in models:
        for method in methods:
            if not ((metrics["model"] == model) & (metrics["method"] == method)).any():
                continue
            row = []
            for benchmark in benchmarks:
                for metric in chosen:
                    key = (model, method, benchmark)
                    cell = indexed.loc[key] if key in indexed.index else None
                    row.append(
                        format_cell(_get(cell, metric), _get(cell, f"{metric}_lo"), _get(cell, f"{metric}_hi"), latex)
                    )
            rows.append(row)
            index.append((model, METHOD_LABELS.get(method, method)))
    columns = pd.MultiIndex.from_tuples(
        [(BENCHMARK_LABELS.get(b, b), METRIC_LABELS[m]) for b in benchmarks for m in chosen],
        names=["benchmark", "metric"],
    )
    return pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(index, names=["model", "method"]), columns=columns)


def _get(cell: pd.Series | None, name: str) -> float | None:
    if cell is None or name not in cell.index:
        return None
    value = cell[name]
    return None if value is None or pd.isna(value) else float(value)


def table_to_markdown(table: pd.DataFrame) -> str:
    """A GitHub markdown table, one header row `HotpotQA EM | HotpotQA F1 | …`."""
    header = ["Model", "Method"] + [f"{bench} {metric}" for bench, metric in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * len(table.columns)) + "|"]
    for (model, method), row in table.iterrows():
        lines.append("| " + " | ".join([model, method, *row.tolist()]) + " |")
    return "\n".join(lines) + "\n"


def table_to_latex(table: pd.DataFrame, caption: str) -> str:
    """A booktabs table with a benchmark header spanning its metric columns, one block per model."""
    benchmarks = list(dict.fromkeys(bench for bench, _ in table.columns))
    per_bench = len(table.columns) // len(benchmarks)
    lines = [
        "\\begin{table}[t]",
        "\\centering",
        f"\\caption{{{_latex_escape(caption)}}}",
        "\\begin{tabular}{ll" + "r" * len(table.columns) + "}",
        "\\toprule",
        " & & " + " & ".join(f"\\multicolumn{{{per_bench}}}{{c}}{{{b}}}" for b in benchmarks) + " \\\\",
        "".join(f"\\cmidrule(lr){{{3 + i * per_bench}-{2 + (i + 1) * per_bench}}}" for i in range(len(benchmarks))),
        "Model & Method & " + " & ".join(metric for _, metric in table.columns) + " \\\\",
        "\\midrule",
    ]
    previous_model = None
    for (model, method), row in table.iterrows():
        if previous_model is not None and model != previous_model:
            lines.append("\\midrule")
        shown = _latex_escape(model) if model != previous_model else ""
        lines.append(" & ".join([shown, _latex_escape(method), *row.tolist()]) + " \\\\")
        previous_model = model
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    for char, escaped in (("\\", "\\textbackslash{}"), ("&", "\\&"), ("%", "\\%"), ("_", "\\_"), ("#", "\\#")):
        text = text.replace(char, escaped)
    return text


def write_tables(cfg: dict[str, Any]) -> dict[str, Path]:
    """main_table.{md,csv,tex} in the paper's layout, eval_metrics.csv (every number, one row per cell) and,
    where both ReSearch cells exist, rl_gain.{md,csv} (after GRPO minus before, paired by question)."""
    out = paths.tables_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    metrics = collect_eval_metrics(cfg)
    written = {"metrics_csv": out / "eval_metrics.csv"}
    metrics.to_csv(written["metrics_csv"], index=False)
    table = main_table(cfg, metrics)
    if table.empty:
        return written
    caption = "Scores in % with bootstrap 95% intervals; n questions per benchmark as in eval_metrics.csv."
    written["markdown"] = out / "main_table.md"
    written["markdown"].write_text(table_to_markdown(table), encoding="utf-8")
    written["csv"] = out / "main_table.csv"
    flat = table.copy()
    flat.columns = [f"{bench} {metric}" for bench, metric in table.columns]
    flat.to_csv(written["csv"])
    written["latex"] = out / "main_table.tex"
    written["latex"].write_text(table_to_latex(main_table(cfg, metrics, latex=True), caption), encoding="utf-8")
    comparison = paper_vs_ours(cfg, metrics)
    if comparison is not None:
        written["paper_vs_ours_csv"] = out / "paper_vs_ours.csv"
        comparison.to_csv(written["paper_vs_ours_csv"], index=False)
        written["paper_vs_ours_markdown"] = out / "paper_vs_ours.md"
        written["paper_vs_ours_markdown"].write_text(paper_vs_ours_to_markdown(comparison), encoding="utf-8")
    gains = rl_gain_table(cfg)
    if not gains.empty:
        written["rl_gain_csv"] = out / "rl_gain.csv"
        gains.to_csv(written["rl_gain_csv"], index=False)
        written["rl_gain_markdown"] = out / "rl_gain.md"
        written["rl_gain_markdown"].write_text(rl_gain_to_markdown(gains), encoding="utf-8")
    return written


# ---------------------------------------------------------------- the paper's table beside ours

# The paper's rows (config/reference/paper_table2.csv), in its order, and its two metrics with the
# metrics.json key that measures each.
PAPER_ROW_LABELS = {
    "naive_generation": "Naive Generation",
    "naive_rag": "Naive RAG",
    "iter_retgen": "Iter-RetGen",
    "ircot": "IRCoT",
    "research_base": "ReSearch (base)",
    "research_instruct": "ReSearch (instruct)",
}
PAPER_METRICS = {"em": "em", "lj": "judge"}
PAPER_METRIC_LABELS = {"em": "EM", "lj": "LJ"}
NOT_COMPARABLE = (
    "This config has no `report.reference`: its results are not comparable with the paper's (the embedded "
    "default evaluates a tiny model on a generated toy world), so no paper column is shown."
)


def load_reference(cfg: dict[str, Any]) -> pd.DataFrame | None:
    """The paper's table that report.reference.table names (None when the config has no reference)."""
    reference = cfg.get("report", {}).get("reference")
    if not reference:
        return None
    path = Path(reference["table"])
    if not path.exists():
        raise FileNotFoundError(f"report.reference.table: {path} does not exist")
    table = pd.read_csv(path, dtype={"family": str, "value": float})
    expected = ["family", "method", "benchmark", "metric", "value"]
    if list(table.columns) != expected:
        raise ValueError(f"report.reference.table: {path} has columns {list(table.columns)}, expected {expected}")
    return table


def reference_model(cfg: dict[str, Any], family: str, kind: str, row: str = "?") -> str | None:
    """The model entry of `family` (its `size`) that plays `kind` for a paper row: `baseline` (listed in
    evaluation.baseline_models), `base` (apply_chat false) or `instruct` (apply_chat true); None if absent."""
    baselines = set(cfg.get("evaluation", {}).get("baseline_models", []))
    candidates = [e["name"] for e in cfg["models"] if str(e.get("size")) == family]
    if kind == "baseline":
        found = [name for name in candidates if name in baselines]
    elif kind in ("base", "instruct"):
        wanted = kind == "instruct"
        found = [e["name"] for e in cfg["models"] if e["name"] in candidates and bool(e.get("apply_chat")) == wanted]
    else:
        raise ValueError(f"report.reference.rows.{row}.model: {kind!r} is not one of baseline, base, instruct")
    if len(found) > 1:
        raise ValueError(
            f"report.reference.rows.{row}: family {family} has several {kind} models ({', '.join(found)}); "
            "the paper has one per family"
        )
    return found[0] if found else None


def paper_vs_ours(cfg: dict[str, Any], metrics: pd.DataFrame | None = None) -> pd.DataFrame | None:
    """The paper's Table 2 cell by cell beside ours, or None when the config has no report.reference.

    One row per (family, paper row, benchmark, metric) of the reference table whose row the config maps:
    our mean and bootstrap 95% interval (in %, NaN where not evaluated or not judged), the paper's value,
    ours minus the paper's in points, and whether the paper's value lies inside our interval.
    """
    table = load_reference(cfg)
    if table is None:
        return None
    metrics = collect_eval_metrics(cfg) if metrics is None else metrics
    indexed = metrics.set_index(["model", "method", "benchmark"]) if not metrics.empty else None
    rows_cfg = cfg["report"]["reference"]["rows"]
    families = list(dict.fromkeys(table["family"]))
    order = {name: i for i, name in enumerate(PAPER_ROW_LABELS)}
    rows = []
    for ref in sorted(
        table.to_dict("records"),
        key=lambda r: (
            families.index(r["family"]),
            order.get(r["method"], len(order)),
            _benchmark_order(r["benchmark"]),
            list(PAPER_METRICS).index(r["metric"]) if r["metric"] in PAPER_METRICS else len(PAPER_METRICS),
        ),
    ):
        mapping = rows_cfg.get(ref["method"])
        if mapping is None or ref["metric"] not in PAPER_METRICS:
            continue
        model = reference_model(cfg, ref["family"], mapping["model"], ref["method"])
        ours_metric = PAPER_METRICS[ref["metric"]]
        key = (model, mapping["method"], ref["benchmark"])
        cell = indexed.loc[key] if indexed is not None and model is not None and key in indexed.index else None
        mean, low, high = (_get(cell, name) for name in (ours_metric, f"{ours_metric}_lo", f"{ours_metric}_hi"))
        ours = _percent(mean)
        lo, hi = _percent(low), _percent(high)
        paper = float(ref["value"])
        inside = None if math.isnan(lo) or math.isnan(hi) else bool(lo <= paper <= hi)
        rows.append(
            {
                "family": ref["family"],
                "paper_row": ref["method"],
                "benchmark": ref["benchmark"],
                "metric": ref["metric"],
                "model": model,
                "method": mapping["method"],
                "n": None if cell is None or _get(cell, "n") is None else int(_get(cell, "n")),
                "ours": ours,
                "ours_lo": lo,
                "ours_hi": hi,
                "paper": paper,
                "diff": ours - paper,
                "paper_in_ci": inside,
            }
        )
    columns = ["family", "paper_row", "benchmark", "metric", "model", "method", "n"]
    columns += ["ours", "ours_lo", "ours_hi", "paper", "diff", "paper_in_ci"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["n"] = frame["n"].astype("Int64")
    # Points to 4 decimals: float noise (e.g. 28.000000000000004) out of the CSV; paper_in_ci used full precision.
    return frame.round({"ours": 4, "ours_lo": 4, "ours_hi": 4, "diff": 4})


def _percent(value: float | None) -> float:
    return float("nan") if value is None else 100.0 * value


def _benchmark_order(benchmark: str) -> int:
    return paths.BENCHMARKS.index(benchmark) if benchmark in paths.BENCHMARKS else len(paths.BENCHMARKS)


def paper_vs_ours_to_markdown(comparison: pd.DataFrame) -> str:
    """One row per (family, paper row, benchmark); per metric: ours [95% CI], the paper's, the
    difference in points and whether the paper's value lies in our interval."""
    metrics = [m for m in PAPER_METRICS if m in set(comparison["metric"])]
    header = ["Family", "Paper row", "Ours (model, method)", "Benchmark"]
    for metric in metrics:
        label = PAPER_METRIC_LABELS[metric]
        header += [f"{label} ours [95% CI]", f"{label} paper", f"{label} ours − paper", f"{label} paper in CI"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * (len(header) - 4)) + "|"]
    for (family, row, benchmark), group in comparison.groupby(
        ["family", "paper_row", "benchmark"], sort=False, dropna=False
    ):
        first = group.iloc[0]
        model = first["model"] if isinstance(first["model"], str) else f"(no {family} model)"
        ours_name = f"{model}, {first['method']}"
        cells = [family, PAPER_ROW_LABELS.get(row, row), ours_name, BENCHMARK_LABELS.get(benchmark, benchmark)]
        by_metric = {r["metric"]: r for r in group.to_dict("records")}
        for metric in metrics:
            r = by_metric.get(metric)
            if r is None:
                cells += [MISSING] * 4
                continue
            ours = MISSING if math.isnan(r["ours"]) else f"{r['ours']:.2f}"
            if ours != MISSING and not math.isnan(r["ours_lo"]):
                ours += f" [{r['ours_lo']:.2f}, {r['ours_hi']:.2f}]"
            diff = MISSING if math.isnan(r["diff"]) else f"{r['diff']:+.2f}"
            inside = MISSING if r["paper_in_ci"] is None else ("yes" if r["paper_in_ci"] else "no")
            cells += [ours, f"{r['paper']:.2f}", diff, inside]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- what GRPO changed

# The pair the question is about: the ReSearch rollout on the trained model against the same
# rollout, prompt and decoding on its checkpoint before GRPO.
BEFORE_RL, AFTER_RL = "research_base", "research"
GAIN_METRICS = ("em", "f1")
ALL_BENCHMARKS = "All"


def load_question_metrics(cfg: dict[str, Any], model: str, benchmark: str, method: str) -> dict[str, dict]:
    """Per-question metrics of one cell by question id (empty when the cell was not evaluated)."""
    path = paths.eval_dir(cfg, model, benchmark, method) / "predictions.jsonl"
    if not path.exists():
        return {}
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if any("metrics" not in r or "id" not in r for r in records):
        raise ValueError(f"{path}: every prediction needs an 'id' and per-question 'metrics'")
    return {str(r["id"]): r["metrics"] for r in records}


def paired_gain(before: dict[str, dict], after: dict[str, dict], n_samples: int, seed: int) -> dict[str, Any] | None:
    """Means before and after on the questions both cells answered, and the mean per-question gain with
    its paired-bootstrap 95% interval (resampling questions, so each keeps its before/after pair)."""
    ids = sorted(set(before) & set(after))
    if not ids:
        return None
    row: dict[str, Any] = {"n": len(ids)}
    for metric in GAIN_METRICS:
        old = [float(before[i][metric]) for i in ids]
        new = [float(after[i][metric]) for i in ids]
        gains = [b - a for a, b in zip(old, new, strict=True)]
        row[f"{metric}_before"] = sum(old) / len(ids)
        row[f"{metric}_after"] = sum(new) / len(ids)
        row[f"{metric}_gain"] = sum(gains) / len(ids)
        row[f"{metric}_gain_lo"], row[f"{metric}_gain_hi"] = bootstrap_ci(gains, n_samples, seed)
    return row


def rl_gain_table(cfg: dict[str, Any]) -> pd.DataFrame:
    """ReSearch after GRPO minus before GRPO, paired by question, per model and benchmark.

    One row per (model, benchmark) where both cells exist, then an `All` row per model pooling every
    benchmark's questions (so benchmarks weigh by their question counts). Scores are fractions.
    """
    n_samples = int(cfg.get("evaluation", {}).get("bootstrap_samples", 1000))
    seed = int(cfg.get("seed", 0))
    rows = []
    for entry in cfg["models"]:
        model = entry["name"]
        pooled_before: dict[str, dict] = {}
        pooled_after: dict[str, dict] = {}
        for benchmark in paths.BENCHMARKS:
            before = load_question_metrics(cfg, model, benchmark, BEFORE_RL)
            if not before:
                continue
            after = load_question_metrics(cfg, model, benchmark, AFTER_RL)
            row = paired_gain(before, after, n_samples, seed)
            if row is None:
                continue
            rows.append({"model": model, "benchmark": benchmark, **row})
            pooled_before.update({f"{benchmark}/{i}": m for i, m in before.items()})
            pooled_after.update({f"{benchmark}/{i}": m for i, m in after.items()})
        pooled = paired_gain(pooled_before, pooled_after, n_samples, seed)
        if pooled is not None:
            rows.append({"model": model, "benchmark": ALL_BENCHMARKS, **pooled})
    return pd.DataFrame(rows)


def rl_gain_to_markdown(gains: pd.DataFrame) -> str:
    """The gain table in %, e.g. `| tiny-base | MuSiQue | 40 | 5.0 | 17.5 | +12.5 [2.5, 22.5] | …`."""
    header = ["Model", "Benchmark", "n"]
    for metric in GAIN_METRICS:
        label = METRIC_LABELS[metric]
        header += [f"{label} before RL", f"{label} after RL", f"{label} gain [95% CI]"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    for row in gains.to_dict("records"):
        cells = [row["model"], BENCHMARK_LABELS.get(row["benchmark"], row["benchmark"]), str(row["n"])]
        for metric in GAIN_METRICS:
            gain = f"{100 * row[f'{metric}_gain']:+.1f}"
            interval = f"[{100 * row[f'{metric}_gain_lo']:.1f}, {100 * row[f'{metric}_gain_hi']:.1f}]"
            cells += [
                f"{100 * row[f'{metric}_before']:.1f}",
                f"{100 * row[f'{metric}_after']:.1f}",
                f"{gain} {interval}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- figures


def _smooth(values: pd.Series) -> pd.Series:
    window = max(3, len(values) // 10)  # a visible mean even on the embedded default's 20 steps
    return values.rolling(window, min_periods=1).mean()


def plot_training_curves(cfg: dict[str, Any], training: pd.DataFrame | None = None) -> Path | None:
    """training_curves.png: reward, format rate, searches per rollout, response length vs step, per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    training = load_training_metrics(cfg) if training is None else training
    if training.empty or "step" not in training:
        return None
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True)
    for ax, (column, label) in zip(axes.flat, TRAINING_PANELS.items(), strict=True):
        ax.set_title(label)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if column not in training:
            ax.text(0.5, 0.5, "not logged", transform=ax.transAxes, ha="center", va="center", color="grey")
            continue
        for i, (model, frame) in enumerate(training.groupby("model", sort=False)):
            frame = frame.dropna(subset=[column]).sort_values("step")
            color = f"C{i}"
            ax.plot(frame["step"], frame[column], color=color, alpha=0.3, linewidth=1)
            ax.plot(frame["step"], _smooth(frame[column]), color=color, linewidth=2, label=model)
        if column == "format_rate":
            ax.set_ylim(-0.02, 1.02)
    for ax in axes[1]:
        ax.set_xlabel("Training step")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper right", title="Model (thin: per step, thick: moving mean)")
    fig.suptitle("GRPO training curves", x=0.02, ha="left", fontsize=14)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    out = paths.figures_dir(cfg) / "training_curves.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_search_histograms(cfg: dict[str, Any], counts: pd.DataFrame | None = None) -> list[Path]:
    """search_counts_<benchmark>.png: the share of questions by number of searches, per model and method.

    Only the methods that decide how often to search (IRCoT, ReSearch) are shown: direct generation,
    naive RAG and Iter-RetGen search a fixed number of times by construction.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = load_search_counts(cfg) if counts is None else counts
    counts = counts[counts["method"].isin(ADAPTIVE_METHODS)]
    models = _ordered(sorted(set(counts["model"])), [e["name"] for e in cfg["models"]])
    written = []
    for benchmark in _ordered(sorted(set(counts["benchmark"])), list(paths.BENCHMARKS)):
        subset = counts[counts["benchmark"] == benchmark]
        series = [
            (model, method, subset[(subset["model"] == model) & (subset["method"] == method)]["searches"])
            for model in models
            for method in ADAPTIVE_METHODS
        ]
        series = [s for s in series if len(s[2])]
        bins = list(range(int(subset["searches"].max()) + 1))
        width = 0.8 / len(series)
        fig, ax = plt.subplots(figsize=(max(7.0, 1.5 + 0.8 * len(bins)), 5.0))
        top = 0.0
        for i, (model, method, values) in enumerate(series):
            shares = [100.0 * (values == b).mean() for b in bins]
            offsets = [b - 0.4 + width * (i + 0.5) for b in bins]
            label = f"{model}, {METHOD_LABELS[method]} (n={len(values)}, mean {values.mean():.2f})"
            ax.bar(offsets, shares, width=width, label=label)
            top = max(top, *shares)
        ax.set_xticks(bins)
        ax.set_xlabel("Searches per question")
        ax.set_ylabel("Questions (%)")
        ax.set_ylim(0, min(100.0, top * 1.15 + 2))
        ax.set_title(f"Searches per question on {BENCHMARK_LABELS.get(benchmark, benchmark)}")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
        fig.tight_layout()
        out = paths.figures_dir(cfg) / f"search_counts_{benchmark}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=120)
        plt.close(fig)
        written.append(out)
    return written


# ---------------------------------------------------------------- the stage


def notebooks_dir(cfg: dict[str, Any]) -> Path:
    return paths.results_dir(cfg) / "notebooks"


def run(cfg: dict[str, Any], kernel_name: str = "python3") -> None:
    """Execute the report notebook headless with papermill; keep it as .ipynb and .html.

    The notebook gets the config itself as a parameter (and its path when it came from a file), so it
    reads exactly what this stage was given. The kernel runs in the current directory, where the
    config's relative paths point.
    """
    import jupytext
    import nbformat
    import papermill
    from nbconvert import HTMLExporter

    out_dir = notebooks_dir(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = Path(cfg["report"]["notebook"])
    notebook = jupytext.read(source)
    executed = out_dir / f"{source.stem}.ipynb"
    parameters = {"cfg": {k: v for k, v in cfg.items() if not k.startswith("_")}}
    if "_config_path" in cfg:
        parameters["config_path"] = cfg["_config_path"]
    with tempfile.TemporaryDirectory() as tmp:
        input_path = Path(tmp) / f"{source.stem}.ipynb"
        nbformat.write(notebook, input_path)
        papermill.execute_notebook(
            str(input_path),
            str(executed),
            parameters=parameters,
            kernel_name=kernel_name,
            cwd=os.getcwd(),
            progress_bar=False,
        )
    html, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
    (out_dir / f"{source.stem}.html").write_text(html, encoding="utf-8")
