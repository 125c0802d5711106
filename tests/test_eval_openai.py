"""The OpenAI-compatible backends (completions generator, LLM judge) and the model-server lifecycle,
against a real local fake server on 127.0.0.1 that speaks the OpenAI API with scripted completions.

Run as a script (`python tests/test_eval_openai.py PORT`), this file serves the fake on that port:
the serve test starts it that way, as the stand-in for `vllm serve`.
"""

from __future__ import annotations

import ast
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

# ---------------------------------------------------------------- the fake server


@dataclass
class FakeOpenAI:
    """Scripted completions: `script(prompt_text)` is the model's whole continuation, cut like an engine.

    trim_stop=True behaves like SGLang without no_stop_trim: the stop string is dropped from the text and
    reported as matched_stop. fail_first answers that many requests with 503 first; reject_status
    answers every completion with that status.
    """

    tokenizer: Any = None
    script: Callable[[str], str] = lambda prompt: ""
    chat_script: Callable[[str], str] = lambda content: "Verdict: no"
    trim_stop: bool = False
    fail_first: int = 0
    reject_status: int | None = None
    bodies: list[dict] = field(default_factory=list)
    chat_bodies: list[dict] = field(default_factory=list)
    served_name: str = "policy"
    root: str | None = None

    def complete(self, body: dict) -> dict:
        prompt = body["prompt"]
        prompt_text = prompt if isinstance(prompt, str) else self.tokenizer.decode(prompt, skip_special_tokens=False)
        full = self.script(prompt_text)
        budget = body["max_tokens"]
        stops = body.get("stop") or []
        hits = [(full.index(s), s) for s in stops if s in full]
        if hits:
            pos, matched = min(hits)
            kept = full[: pos + len(matched)]
            if len(self.tokenizer.encode(kept, add_special_tokens=False)) <= budget:
                keep_stop = body.get("include_stop_str_in_output") and not self.trim_stop
                text = kept if keep_stop else full[:pos]
                return {
                    "text": text,
                    "finish_reason": "stop",
                    "stop_reason": None if self.trim_stop else matched,
                    "matched_stop": matched,
                }
        ids = self.tokenizer.encode(full, add_special_tokens=False)
        if len(ids) > budget:
            return {"text": self.tokenizer.decode(ids[:budget]), "finish_reason": "length", "stop_reason": None}
        # EOS: like vLLM, the EOS token's text is not in the output.
        return {"text": full, "finish_reason": "stop", "stop_reason": None}

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/health")
        def health() -> dict:
            return {}

        @app.get("/v1/models")
        def models() -> dict:
            return {"object": "list", "data": [{"id": self.served_name, "object": "model", "root": self.root}]}

        @app.post("/v1/completions")
        async def completions(request: Request) -> JSONResponse:
            body = await request.json()
            self.bodies.append(body)
            if self.fail_first > 0:
                self.fail_first -= 1
                return JSONResponse({"error": "warming up"}, status_code=503)
            if self.reject_status is not None:
                return JSONResponse({"error": "bad request"}, status_code=self.reject_status)
            choice = {"index": 0, **self.complete(body)}
            return JSONResponse({"id": "cmpl-1", "object": "text_completion", "choices": [choice]})

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> JSONResponse:
            body = await request.json()
            self.chat_bodies.append(body)
            content = self.chat_script(body["messages"][-1]["content"])
            message = {"role": "assistant", "content": content}
            return JSONResponse({"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]})

        return app


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Serve app on a free 127.0.0.1 port in a thread; yields its root URL; stops on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("fake server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- completions generator


def scripted(prompt: str) -> str:
    """A policy that searches once, then answers after the result is in its context."""
    if "</result>" in prompt.split("Assistant:")[-1]:  # the base template's example has one
        return " <think> found it </think> <answer> \\boxed{Brimmow} </answer>"
    return " <think> need the founder </think> <search> founder of Brimmow </search> and then more"


@pytest.fixture
def fake(tiny_tokenizer):
    return FakeOpenAI(tokenizer=tiny_tokenizer, script=scripted)


def make_generator(url: str, tokenizer, **kwargs):
    from research_rl.generation.openai import OpenAICompletionsGenerator

    return OpenAICompletionsGenerator(f"{url}/v1", "policy", tokenizer, backoff_seconds=0.01, **kwargs)


def test_generation_is_cut_right_after_the_stop_string_and_sends_token_ids(fake, tiny_tokenizer):
    with serve(fake.app()) as url:
        generator = make_generator(url, tiny_tokenizer)
        prompt = generator.encode("Question: who founded Brimmow?")
        [gen] = generator.generate([prompt], max_new_tokens=200, stop=["</search>"], temperature=0.0)
    assert gen.finish_reason == "stop"
    assert gen.text == " <think> need the founder </think> <search> founder of Brimmow </search>"
    assert generator.decode(gen.token_ids) == gen.text
    body = fake.bodies[0]
    assert body["prompt"] == prompt and body["stop"] == ["</search>"]
    assert body["max_tokens"] == 200 and body["temperature"] == 0.0 and body["model"] == "policy"
    assert body["include_stop_str_in_output"] is True


def test_eos_and_length_endings(fake, tiny_tokenizer):
    with serve(fake.app()) as url:
        generator = make_generator(url, tiny_tokenizer)
        answered = generator.encode("context <result>\npassage\n</result>")
        gens = generator.generate([answered, answered], max_new_tokens=[200, 4], stop=["</search>"], temperature=0)
    eos, cut = gens
    assert eos.finish_reason == "eos"
    assert eos.text == " <think> found it </think> <answer> \\boxed{Brimmow} </answer><|endoftext|>"
    assert eos.token_ids[-1] == tiny_tokenizer.eos_token_id
    assert cut.finish_reason == "length" and len(cut.token_ids) <= 4
    assert "<|endoftext|>" not in cut.text


def test_an_engine_that_trims_the_stop_string_gets_it_put_back(fake, tiny_tokenizer):
    fake.trim_stop = True  # SGLang's default: stop string dropped, reported as matched_stop
    with serve(fake.app()) as url:
        generator = make_generator(url, tiny_tokenizer)
        [gen] = generator.generate([generator.encode("Q")], max_new_tokens=200, stop=["</search>"], temperature=0)
    assert gen.finish_reason == "stop"
    assert gen.text.endswith("<search> founder of Brimmow </search>")


def test_server_errors_are_retried_and_client_errors_are_not(fake, tiny_tokenizer):
    fake.fail_first = 2
    with serve(fake.app()) as url:
        generator = make_generator(url, tiny_tokenizer, retries=3)
        [gen] = generator.generate([generator.encode("Q")], max_new_tokens=50, stop=["</search>"], temperature=0)
        assert gen.finish_reason == "stop"
        assert len(fake.bodies) == 3  # two 503s, then the answer

        fake.bodies.clear()
        fake.fail_first = 10
        with pytest.raises(RuntimeError, match="after 2 tries"):
            make_generator(url, tiny_tokenizer, retries=1).generate([[1, 2]], max_new_tokens=5)
        assert len(fake.bodies) == 2

        fake.bodies.clear()
        fake.fail_first, fake.reject_status = 0, 400
        with pytest.raises(httpx.HTTPStatusError):
            generator.generate([[1, 2]], max_new_tokens=5)
        assert len(fake.bodies) == 1  # a bad request is not worth repeating


def test_an_exhausted_budget_sends_no_request(fake, tiny_tokenizer):
    with serve(fake.app()) as url:
        [gen] = make_generator(url, tiny_tokenizer).generate([[1, 2]], max_new_tokens=0)
    assert gen.finish_reason == "length" and gen.token_ids == [] and fake.bodies == []


def test_normalise_completion_cases():
    from research_rl.generation.openai import normalise_completion

    eos = "<eos>"
    # a server that ignores stop: cut at the first stop string
    assert normalise_completion("a </search> b </search>", "length", None, ["</search>"], eos) == (
        "a </search>",
        "stop",
    )
    assert normalise_completion("a", "stop", "</search>", ["</search>"], eos) == ("a</search>", "stop")
    assert normalise_completion("done", "stop", None, ["</search>"], eos) == ("done<eos>", "eos")
    assert normalise_completion("done<eos>", "stop", 151643, [], eos) == ("done<eos>", "eos")
    assert normalise_completion("trunc", "length", None, [], eos) == ("trunc", "length")


def test_research_rollout_through_the_http_backend(fake, tiny_tokenizer):
    """The same rollout code as training, over the HTTP backend: one search, then the boxed answer."""
    pytest.importorskip("research_rl.training.rollout")
    from research_rl.evaluation.methods import research

    class Search:
        queries: list[str] = []

        def batch_search(self, queries, top_n):
            self.queries += list(queries)
            return [[{"id": "1", "contents": '"Brimmow"\nBrimmow was founded by Ada.'}] for _ in queries]

    cfg = {"evaluation": {"max_new_tokens": 8}, "grpo": {"max_turns": 4, "max_response_length": 200}}
    search = Search()
    with serve(fake.app()) as url:
        generator = make_generator(url, tiny_tokenizer)
        [record] = research(
            [{"id": "q1", "question": "Who founded Brimmow?", "golden_answers": ["Ada"]}],
            generator,
            search,
            cfg,
            apply_chat=False,
            tokenizer=tiny_tokenizer,
        )
    assert search.queries == ["founder of Brimmow"]
    assert record["prediction"] == "Brimmow" and record["num_searches"] == 1
    assert "<result>" in record["trajectory"] and "Brimmow was founded by Ada." in record["trajectory"]


# ---------------------------------------------------------------- LLM judge


def judge_by_golds(content: str) -> str:
    """A judge that calls the prediction correct when it is one of the gold answers, replying in the
    paper's JSON format (a rationale that names both verdict words, then the judgement)."""
    golds = ast.literal_eval(re.search(r"ground truth answers: (\[.*\])", content).group(1))
    prediction = re.search(r"pred_answer: (.*)", content).group(1).strip()
    verdict = "correct" if prediction.lower() in [g.lower() for g in golds] else "incorrect"
    rationale = f"The golds say {golds[0]}; correct or incorrect?"
    return "```json\n" + json.dumps({"rationale": rationale, "judgement": verdict}) + "\n```"


def test_judge_asks_a_chat_endpoint_and_parses_the_verdict():
    from research_rl.evaluation.judge import LLMJudge

    fake = FakeOpenAI(chat_script=judge_by_golds)
    items = [
        {"question": "Capital of France?", "golden_answers": ["Paris", "City of Paris"], "prediction": "paris"},
        {"question": "Capital of Spain?", "golden_answers": ["Madrid"], "prediction": "Barcelona"},
        {"question": "Capital of Italy?", "golden_answers": ["Rome"], "prediction": "  "},
    ]
    with serve(fake.app()) as url:
        judge = LLMJudge(f"{url}/v1", "judge-model")
        assert judge.judge_batch(items) == [1.0, 0.0, 0.0]
    assert len(fake.chat_bodies) == 2  # the empty prediction is not sent
    assert all(body["model"] == "judge-model" and body["temperature"] == 0 for body in fake.chat_bodies)
    # the original's request: a JSON object reply of up to 1024 tokens
    assert all(body["response_format"] == {"type": "json_object"} for body in fake.chat_bodies)
    assert all(body["max_tokens"] == 1024 for body in fake.chat_bodies)
    asked = sorted(body["messages"][0]["content"] for body in fake.chat_bodies)
    assert "question: Capital of France?" in asked[0] and "question: Capital of Spain?" in asked[1]
    # the gold list as the original writes it (str of a Python list)
    assert "ground truth answers: ['Paris', 'City of Paris']\npred_answer: paris\n" in asked[0]


def test_judge_prompt_is_the_papers():
    """Appendix A's prompt (Agent-RL/ReSearch's llm_judge.py): its instructions, fields and JSON reply."""
    from research_rl.evaluation.judge import judge_prompt

    prompt = judge_prompt("Who?", ["Ada", "Ada L."], "ada")
    assert prompt.startswith(
        "You will be given a question and its ground truth answer list where each item can be a ground truth answer. "
        "Provided a pred_answer, you need to judge if the pred_answer correctly answers the question"
    )
    assert (
        "2. Each item in the ground truth answer list can be viewed as a ground truth answer for the question, and "
        "the pred_answer should be semantically same to at least one of them.\n" in prompt
    )
    assert "question: Who?\nground truth answers: ['Ada', 'Ada L.']\npred_answer: ada\n" in prompt
    assert '```json \n{\n    "rationale"' in prompt and "can only be 'correct' or 'incorrect'\"\n}\n```" in prompt
    assert prompt.endswith("\n\nYour output:")


def test_judge_api_key_comes_from_the_named_environment_variable(monkeypatch):
    from research_rl.evaluation.judge import judge_from_config

    cfg = {"evaluation": {"judge": {"enabled": True, "url": "http://127.0.0.1:9/v1", "model": "gpt-4o-mini"}}}
    cfg["evaluation"]["judge"]["api_key_env"] = "RRL_TEST_JUDGE_KEY"
    monkeypatch.delenv("RRL_TEST_JUDGE_KEY", raising=False)
    with pytest.raises(ValueError, match=r"evaluation\.judge\.api_key_env.*RRL_TEST_JUDGE_KEY"):
        judge_from_config(cfg)
    monkeypatch.setenv("RRL_TEST_JUDGE_KEY", "sk-test")
    judge = judge_from_config(cfg)
    try:
        assert judge.model == "gpt-4o-mini" and judge._client.headers["Authorization"] == "Bearer sk-test"
    finally:
        judge.close()


def test_judge_retries_a_reply_without_verdict_then_gives_up():
    from research_rl.evaluation.judge import LLMJudge

    replies = iter(["I am not sure.", "Verdict: yes"])
    fake = FakeOpenAI(chat_script=lambda content: next(replies, "I cannot say."))
    with serve(fake.app()) as url:
        judge = LLMJudge(f"{url}/v1", "m", backoff_seconds=0.01, retries=1)
        assert judge.judge("q", ["a"], "a") == 1.0
        with pytest.raises(RuntimeError, match="no verdict"):
            judge.judge("q", ["a"], "a")


def test_parse_verdict():
    from research_rl.evaluation.judge import parse_verdict

    assert parse_verdict("It says no, but yes overall.\nVerdict: yes") == 1.0
    assert parse_verdict("Looks right.\nVerdict: No") == 0.0
    assert parse_verdict('{"rationale": "x", "judgement": "incorrect"}') == 0.0
    # the paper's JSON reply: the judgement decides, whatever words the rationale uses
    assert parse_verdict('{"rationale": "not correct, yes", "judgement": "incorrect"}') == 0.0
    assert parse_verdict('```json\n{"rationale": "it is incorrect? no", "judgement": "Correct"}\n```') == 1.0
    assert parse_verdict("correct") == 1.0
    assert parse_verdict("I cannot tell.") is None


def test_evaluate_with_the_judge_enabled(tmp_path):
    """evaluate.run asks the judge per question and reports its mean and interval in metrics.json."""
    from test_eval_evaluate import FakeGenerator, make_cfg, write_questions

    from research_rl.evaluation import evaluate

    fake = FakeOpenAI(chat_script=judge_by_golds)
    with serve(fake.app()) as url:
        cfg = make_cfg(tmp_path, n_questions=4)
        cfg["evaluation"]["judge"] = {"enabled": True, "url": f"{url}/v1", "model": "judge-model"}
        write_questions(cfg, 4)
        evaluate.run(cfg, "tiny-base", "bamboogle", "zero_shot", generator=FakeGenerator(correct_ids={"q0", "q2"}))
    out = tmp_path / "results" / "eval" / "tiny-base" / "bamboogle" / "zero_shot"
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["metrics"]["judge"] for r in lines] == [1.0, 0.0, 1.0, 0.0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["judge"] == 0.5 and len(metrics["ci95"]["judge"]) == 2


# ---------------------------------------------------------------- the model server lifecycle


def test_model_server_waits_for_health_and_always_stops_the_server(tmp_path):
    from research_rl.evaluation.serve import model_server

    port = free_port()
    cfg = {"serving": {"engine": "vllm", "port": port, "startup_timeout_seconds": 60}}
    command = [sys.executable, str(Path(__file__).resolve()), str(port)]
    with pytest.raises(KeyError):  # an error inside the block must still stop the server
        with model_server(cfg, "unused", command=command, log_path=tmp_path / "server.log") as served:
            assert served.base_url == f"http://127.0.0.1:{port}/v1"
            assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
            raise KeyError("boom")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)


def test_model_server_fails_fast_when_the_server_dies(tmp_path):
    from research_rl.evaluation.serve import model_server

    cfg = {"serving": {"engine": "vllm", "port": free_port(), "startup_timeout_seconds": 60}}
    command = [sys.executable, "-c", "import sys; print('CUDA not available'); sys.exit(3)"]
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="(?s)exited with code 3.*CUDA not available"):
        with model_server(cfg, "unused", command=command, log_path=tmp_path / "server.log"):
            pass
    assert time.monotonic() - started < 30


def test_server_commands(tmp_path, monkeypatch):
    from research_rl.evaluation import serve
    from research_rl.evaluation.serve import server_command

    monkeypatch.chdir(tmp_path)  # no .venv-vllm here: vLLM runs under this interpreter
    monkeypatch.setattr(serve, "has_gpu", lambda: False)
    cfg = {"seed": 7, "serving": {"engine": "vllm", "port": 0, "tensor_parallel_size": 4, "max_model_len": 16384}}
    cmd = server_command(cfg, "/models/policy", port=8123)
    assert cmd[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    assert cmd[cmd.index("--model") + 1] == "/models/policy"
    assert cmd[cmd.index("--port") + 1] == "8123" and cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "4" and "--max-model-len" in cmd
    assert cmd[cmd.index("--dtype") + 1] == "float32"  # CPU: no bfloat16 cast of the float32 checkpoint
    (tmp_path / ".venv-vllm" / "bin").mkdir(parents=True)
    (tmp_path / ".venv-vllm" / "bin" / "python").touch()
    assert server_command(cfg, "/m", port=1)[0] == str(tmp_path / ".venv-vllm" / "bin" / "python")
    cfg["serving"]["python"] = "/opt/vllm/bin/python"
    monkeypatch.setattr(serve, "has_gpu", lambda: True)
    cmd = server_command(cfg, "/m", port=1)
    assert cmd[0] == "/opt/vllm/bin/python" and cmd[cmd.index("--dtype") + 1] == "auto"
    cfg["serving"]["engine"] = "sglang"
    cmd = server_command(cfg, "/models/policy", port=8123)
    assert cmd[1:3] == ["-m", "sglang.launch_server"] and cmd[cmd.index("--tp") + 1] == "4"
    assert cmd[cmd.index("--model-path") + 1] == "/models/policy"


def test_model_server_picks_a_free_port_and_refuses_another_model(tmp_path):
    """Port 0: a port of its own, passed to the command; a server listing another model is not used."""
    from research_rl.evaluation.serve import model_server

    cfg = {"serving": {"engine": "vllm", "port": 0, "startup_timeout_seconds": 60}}
    command = [sys.executable, str(Path(__file__).resolve()), "{port}"]
    with model_server(cfg, "unused", command=command, log_path=tmp_path / "a.log") as first:
        with model_server(cfg, "unused", command=command, log_path=tmp_path / "b.log") as second:
            assert first.base_url != second.base_url and first.pid != second.pid
            assert httpx.get(f"{second.base_url}/models").json()["data"][0]["id"] == "policy"
    command = [sys.executable, str(Path(__file__).resolve()), "{port}", "someone-else"]
    with pytest.raises(RuntimeError, match="not the expected 'policy'"):
        with model_server(cfg, "unused", command=command, log_path=tmp_path / "c.log"):
            pass


def test_model_server_retries_on_a_new_port_when_its_port_was_taken(tmp_path):
    """A start that loses its free port to another process (its log says so) is retried on another port."""
    from research_rl.evaluation.serve import model_server

    marker = tmp_path / "first-try-done"
    first_fails = (
        "import pathlib, subprocess, sys\n"
        "marker = pathlib.Path(sys.argv[2])\n"
        "if not marker.exists():\n"
        "    marker.touch(); print('OSError: [Errno 98] Address already in use'); sys.exit(1)\n"
        "sys.exit(subprocess.call([sys.executable, sys.argv[3], sys.argv[1]]))\n"
    )
    cfg = {"serving": {"engine": "vllm", "port": 0, "startup_timeout_seconds": 60}}
    command = [sys.executable, "-c", first_fails, "{port}", str(marker), str(Path(__file__).resolve())]
    with model_server(cfg, "unused", command=command, log_path=tmp_path / "e.log") as served:
        assert httpx.get(f"{served.base_url}/models").status_code == 200
    assert marker.exists() and "Address already in use" in (tmp_path / "e.log").read_text()


def test_model_server_refuses_a_port_another_process_serves(tmp_path):
    """A fixed port already served by someone else: our server cannot bind, and its exit is reported."""
    from research_rl.evaluation.serve import model_server

    with serve(FakeOpenAI().app()) as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        cfg = {"serving": {"engine": "vllm", "port": port, "startup_timeout_seconds": 60}}
        command = [sys.executable, str(Path(__file__).resolve()), "{port}"]
        with pytest.raises(RuntimeError, match=f"port {port} is served by process|exited with code"):
            with model_server(cfg, "unused", command=command, log_path=tmp_path / "d.log"):
                pass


if __name__ == "__main__":
    # The stand-in for `vllm serve`: health only is what the lifecycle test needs.
    name = sys.argv[2] if len(sys.argv) > 2 else "policy"
    uvicorn.run(FakeOpenAI(served_name=name).app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
