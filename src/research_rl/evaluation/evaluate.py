"""The evaluate stage: one (model, benchmark, method) cell of the paper's table.

Writes results/eval/<model>/<benchmark>/<method>/predictions.jsonl, one JSON line per question,
appended and flushed after every batch, so a killed job keeps what it finished and a rerun continues
with the questions still missing; then metrics.json with the means, bootstrap 95% intervals and the
mean number of searches over the questions evaluated.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from research_rl import paths
from research_rl.data.jsonl import write_json
from research_rl.evaluation.bootstrap import bootstrap_ci
from research_rl.evaluation.judge import judge_from_config
from research_rl.evaluation.methods import DEFAULT_BATCH_SIZE, METHODS, USES_RETRIEVAL
from research_rl.generation import Generator

CI_METRICS = ("em", "f1", "cover_em", "judge")
MEAN_METRICS = ("em", "f1", "cover_em", "precision", "recall", "judge")


def run(
    cfg: dict[str, Any],
    model: str,
    benchmark: str,
    method: str,
    *,
    generator: Generator | None = None,
    search_client: Any = None,
) -> None:
    """Evaluate `method` with model entry `model` on `benchmark`; resumes a partial predictions file.

    `generator` and `search_client` replace the ones the config would build (tests, notebooks).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    entry = paths.model_entry(cfg, model)
    split = cfg["evaluation"]["benchmarks"][benchmark]
    out_dir = paths.eval_dir(cfg, model, benchmark, method)
    out_dir.mkdir(parents=True, exist_ok=True)
    pred_path = out_dir / "predictions.jsonl"

    qa_path = paths.qa_path(cfg, benchmark, split)
    questions = load_questions(qa_path, cfg["evaluation"].get("max_questions"))
    check_question_count(cfg, benchmark, len(questions), qa_path)
    done = read_predictions(pred_path)
    done_ids = {record["id"] for record in done}
    todo = [q for q in questions if q["id"] not in done_ids]
    _log(f"evaluate {model}/{benchmark}/{method}: {len(questions)} questions, {len(todo)} to generate")

    if todo:
        with contextlib.ExitStack() as stack:
            # The judge first: a missing URL or key fails before a model server is started for nothing.
            judge = judge_from_config(cfg)
            if judge is not None:
                stack.callback(judge.close)
            if generator is None:
                generator = stack.enter_context(open_generator(cfg, model_path(cfg, model, method), out_dir))
            if search_client is None and method in USES_RETRIEVAL:
                from research_rl.retrieval.service import retriever_for_job

                search_client = stack.enter_context(retriever_for_job(cfg, mode="job"))
            _generate(cfg, method, entry, todo, generator, search_client, judge, pred_path)

    wanted = {q["id"] for q in questions}
    records = [r for r in read_predictions(pred_path) if r["id"] in wanted]
    summary = summarize(records, cfg)
    summary.update(model=model, benchmark=benchmark, split=split, method=method)
    write_json(out_dir / "metrics.json", summary)
    _log(f"evaluate {model}/{benchmark}/{method}: em={summary['em']:.3f} f1={summary['f1']:.3f} n={summary['n']}")


def _generate(
    cfg: dict[str, Any],
    method: str,
    entry: dict[str, Any],
    todo: list[dict[str, Any]],
    generator: Generator,
    search_client: Any,
    judge: Any,
    pred_path: Path,
) -> None:
    from research_rl.evaluation.metrics import compute_all

    fn = METHODS[method]
    batch_size = int(cfg["evaluation"].get("batch_size", DEFAULT_BATCH_SIZE))
    tokenizer = getattr(generator, "tokenizer", None)
    with open(pred_path, "a", encoding="utf-8") as handle:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            records = fn(
                batch, generator, search_client, cfg, apply_chat=bool(entry.get("apply_chat")), tokenizer=tokenizer
            )
            for record in records:
                record["metrics"] = compute_all(record["prediction"], record["golden_answers"])
            if judge is not None:
                for record, verdict in zip(records, judge.judge_batch(records), strict=True):
                    record["metrics"]["judge"] = verdict
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            # Durable per batch: a kill loses at most the batch in flight.
            handle.flush()
            os.fsync(handle.fileno())
            _log(f"  {min(start + batch_size, len(todo))}/{len(todo)} generated")


def model_path(cfg: dict[str, Any], model: str, method: str) -> Path:
    """The trained policy for `research`; the entry's own (base or instruct) checkpoint for baselines and
    for `research_base` (the ReSearch rollout before GRPO)."""
    if method == "research":
        path = paths.trained_model_final(cfg, model)
        if not path.exists():
            raise FileNotFoundError(f"no trained model at {path}: run train-grpo for {model!r} first")
        return path
    return Path(paths.model_entry(cfg, model)["path"])


@contextlib.contextmanager
def open_generator(cfg: dict[str, Any], path: Path, out_dir: Path) -> Iterator[Generator]:
    """The backend cfg["evaluation"]["backend"] names, loaded on `path`, for the duration of the block."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    backend = cfg["evaluation"]["backend"]
    if backend == "transformers":
        from transformers import AutoModelForCausalLM

        from research_rl.generation.hf import TransformersGenerator

        model = AutoModelForCausalLM.from_pretrained(str(path))
        model.eval()
        yield TransformersGenerator(model, tokenizer)
    elif backend == "openai":
        from research_rl.evaluation.serve import model_server
        from research_rl.generation.openai import DEFAULT_MAX_CONCURRENCY, OpenAICompletionsGenerator

        with model_server(cfg, path, log_path=out_dir / "server.log") as served:
            in_flight = int(cfg["serving"].get("max_concurrency", DEFAULT_MAX_CONCURRENCY))
            generator = OpenAICompletionsGenerator(served.base_url, served.model, tokenizer, max_concurrency=in_flight)
            try:
                yield generator
            finally:
                generator.close()
    else:
        raise ValueError(f"evaluation.backend {backend!r} is not one of: transformers, openai")


def load_questions(path: Path, max_questions: int | None = None) -> list[dict[str, Any]]:
    """The first max_questions records of a FlashRAG jsonl file (all when None)."""
    if not path.exists():
        raise FileNotFoundError(f"QA file {path} is missing: run normalize-qa first")
    questions = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                questions.append(json.loads(line))
            if max_questions is not None and len(questions) >= max_questions:
                break
    return questions


def check_question_count(cfg: dict[str, Any], benchmark: str, n_questions: int, path: Path) -> None:
    """Fail when a full split (max_questions null) has another size than evaluation.expected_questions
    says: the paper's numbers are over its full dev/test sets, and a different download (a truncated file,
    another release) would give a cell that only looks comparable. A subset by max_questions is logged."""
    expected = cfg["evaluation"].get("expected_questions", {}).get(benchmark)
    if expected is None:
        return
    if cfg["evaluation"].get("max_questions") is not None:
        if n_questions != expected:
            _log(f"note: {benchmark}: evaluating {n_questions} of the paper's {expected} questions (max_questions)")
        return
    if n_questions != expected:
        raise ValueError(
            f"{path}: {n_questions} questions, but evaluation.expected_questions.{benchmark} is {expected} "
            "(the paper's full split); check the downloaded file, or remove that entry to evaluate it anyway"
        )


def read_predictions(path: Path) -> list[dict[str, Any]]:
    """The complete records of a predictions file; a line cut short by a kill is dropped from the file.

    Dropping it (rewriting the file without it) keeps the next append from gluing onto half a line.
    """
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    records, good_chars = [], 0
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
        good_chars += len(line)
    if good_chars != len(text):
        path.write_text(text[:good_chars], encoding="utf-8")
    return records


def summarize(records: Sequence[dict[str, Any]], cfg: dict[str, Any]) -> dict[str, Any]:
    """Means of every metric, bootstrap 95% intervals for EM, F1, cover-EM (and judge), mean searches."""
    n_samples = int(cfg["evaluation"].get("bootstrap_samples", 1000))
    seed = int(cfg.get("seed", 0))
    summary: dict[str, Any] = {"n": len(records)}
    ci: dict[str, list[float]] = {}
    for name in MEAN_METRICS:
        values = [r["metrics"][name] for r in records if name in r["metrics"]]
        if name == "judge" and (not values or len(values) != len(records)):
            continue  # judged only in part (judge enabled midway): no honest mean
        summary[name] = sum(values) / len(values) if values else 0.0
        if name in CI_METRICS and values:
            ci[name] = list(bootstrap_ci(values, n_samples, seed))
    summary["ci95"] = ci
    searches = [r["num_searches"] for r in records]
    summary["mean_searches"] = sum(searches) / len(searches) if searches else 0.0
    return summary


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
