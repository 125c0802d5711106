"""The tiny base model builder and the in-process transformers Generator."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from conftest import random_qwen2

from research_rl import paths
from research_rl.config import load_config
from research_rl.data import toyworld
from research_rl.generation.hf import TransformersGenerator
from research_rl.model import base_model
from research_rl.prompts import render_base

REPO = Path(__file__).resolve().parents[1]


def small_config(root: Path, steps: int = 4) -> dict:
    cfg = copy.deepcopy(load_config(REPO / "config" / "config.yaml"))
    cfg["paths"] = {"data": str(root / "data"), "results": str(root / "results")}
    cfg["toyworld"].update(n_people=40, n_cities=8, n_countries=3, n_organizations=6, n_works=15)
    cfg["toyworld"]["questions"] = {k: 10 for k in cfg["toyworld"]["questions"]} | {"musique_train": 40}
    cfg["base_model"].update(
        out_dir=str(root / "base"),
        vocab_size=600,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        warmup_steps=steps,
        warmup_batch_size=4,
        demonstrations=20,
    )
    cfg["retriever"]["kind"] = "bm25"  # the demonstrations search the index; BM25 builds in a second
    return cfg


def write_corpus(cfg: dict) -> None:
    world = toyworld.build_world(cfg["toyworld"])
    path = paths.corpus_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": p.id, "contents": p.contents}) + "\n" for p in world.passages))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    from research_rl.retrieval import index

    cfg = small_config(tmp_path_factory.mktemp("base"))
    write_corpus(cfg)
    index.run(cfg, "bm25")
    base_model.run(cfg)
    return cfg


def test_saved_model_loads_with_auto_classes(built):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = paths.base_model_dir(built)
    assert (out / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.model_type == "qwen2" and model.config.hidden_size == 32
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    assert model.config.eos_token_id == tokenizer.eos_token_id
    for special in ("<|im_start|>", "<|im_end|>"):
        assert tokenizer.convert_tokens_to_ids(special) != tokenizer.unk_token_id
        assert tokenizer.tokenize(special) == [special]
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    text = render_base("Who founded the Doran Institute?")
    assert tokenizer.decode(tokenizer.encode(text)) == text  # byte-level: lossless


def test_build_is_deterministic(built, tmp_path):
    cfg = copy.deepcopy(built)
    cfg["base_model"]["out_dir"] = str(tmp_path / "again")
    base_model.run(cfg)
    first = (paths.base_model_dir(built) / "model.safetensors").read_bytes()
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == first
    assert (tmp_path / "again" / "tokenizer.json").read_text() == (
        paths.base_model_dir(built) / "tokenizer.json"
    ).read_text()


def hop_results(demo: dict, corpus: list[str], with_answers: bool = True) -> dict[str, list[str]]:
    """Fake search results per hop query: the gold passage among four others (or without it)."""
    results = {}
    for i, hop in enumerate(demo["question_decomposition"]):
        others = [c for c in corpus if hop["answer"] not in c][i * 4 : i * 4 + 4]
        results[hop["query"]] = others[:2] + ([hop["contents"]] if with_answers else []) + others[2:]
    return results


def test_demonstrations_mask_prompt_and_results(built):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(paths.base_model_dir(built))
    world = toyworld.build_world(built["toyworld"])
    demo = toyworld.demonstrations(world, 1, seed=0)[0]
    results = hop_results(demo, [p.contents for p in world.passages])
    segments = base_model.demonstration_segments(demo, results)
    ids, labels = base_model.encode_demonstration(tokenizer, demo["question"], segments)
    learned = tokenizer.decode([i for i, lab in zip(ids, labels, strict=True) if lab != base_model.IGNORE])
    ignored = tokenizer.decode([i for i, lab in zip(ids, labels, strict=True) if lab == base_model.IGNORE])
    assert ignored.startswith(render_base(demo["question"]))
    assert "<result>" in ignored and "<result>" not in learned and "Assistant:" not in learned
    assert learned.count("<search>") == len(demo["question_decomposition"])
    assert learned.endswith(f"\\boxed{{{demo['answer']}}} \\] </answer><|endoftext|>")
    for hop in demo["question_decomposition"]:  # each search shows its results, in the retriever's order
        assert "\n\n".join(results[hop["query"]]) in ignored


def test_early_answer_stops_searching_and_boxes_the_last_hop_read(built):
    world = toyworld.build_world(built["toyworld"])
    demo = next(d for d in toyworld.demonstrations(world, 20, seed=0) if len(d["question_decomposition"]) >= 3)
    hops = demo["question_decomposition"]
    results = hop_results(demo, [p.contents for p in world.passages])
    early = base_model.demonstration_segments(demo, results, answer_after=2)
    text = "".join(piece for piece, _ in early)
    assert [s for s, _ in early] == [s for s, _ in base_model.demonstration_segments(demo, results)][:4] + [
        base_model.read_turn(hops[1]["answer"], results[hops[1]["query"]])
        + f" <answer> The final answer is \\[ \\boxed{{{hops[1]['answer']}}} \\] </answer>"
    ]
    assert text.count("<search>") == 2 and hops[2]["query"] not in text
    for bad in (0, len(hops)):
        with pytest.raises(ValueError, match="answer_after"):
            base_model.demonstration_segments(demo, results, answer_after=bad)


def segmented_demonstrations(built) -> tuple[dict, list]:
    """20 toy-world demonstrations with their full segments, and every hop's search results."""
    world = toyworld.build_world(built["toyworld"])
    demos = toyworld.demonstrations(world, 20, seed=0)
    corpus = [p.contents for p in world.passages]
    results = {q: found for demo in demos for q, found in hop_results(demo, corpus).items()}
    return results, [(d, base_model.demonstration_segments(d, results)) for d in demos]


def test_early_answer_fraction_cuts_that_share_of_multi_hop_demonstrations(built):
    results, kept = segmented_demonstrations(built)
    assert base_model.early_answers(kept, results, {}, seed=0) == kept  # default: none cut
    cut = base_model.early_answers(kept, results, {"early_answer_fraction": 1.0}, seed=0)
    for (demo, full), (_, segments) in zip(kept, cut, strict=True):
        n_hops = len(demo["question_decomposition"])
        searches = sum("<search>" in piece for piece, is_model in segments if is_model)
        assert searches == n_hops if n_hops == 1 else 1 <= searches < n_hops
        assert segments[-1][0].endswith("</answer>") and (n_hops > 1) == (segments != full)


def test_unboxed_answers_state_the_same_answer_without_a_box_which_the_reward_scores_zero(built):
    from research_rl.reward import score_with_reason

    results, kept = segmented_demonstrations(built)
    early = base_model.early_answers(kept, results, {"early_answer_fraction": 0.5}, seed=0)
    assert base_model.unboxed_answers(early, {}, seed=0) == early  # default: every answer boxed
    plain = base_model.unboxed_answers(early, {"unboxed_answer_fraction": 1.0}, seed=0)
    half = base_model.unboxed_answers(early, {"unboxed_answer_fraction": 0.5}, seed=0)
    assert 0 < sum(a != b for a, b in zip(half, early, strict=True)) < len(early)
    for (_, boxed), (_, unboxed) in zip(early, plain, strict=True):
        assert boxed[:-1] == unboxed[:-1] and unboxed[-1][1] is True  # only the closing turn changes
        boxed_text, unboxed_text = ("".join(piece for piece, _ in s) for s in (boxed, unboxed))
        answer = boxed_text.split("\\boxed{")[1].split("}")[0]
        assert unboxed_text.endswith(f"<answer> The final answer is {answer}. </answer>")
        assert score_with_reason(boxed_text + "<|endoftext|>", [answer], eos_token="<|endoftext|>")[0] == 1.0
        reward, why = score_with_reason(unboxed_text + "<|endoftext|>", [answer], eos_token="<|endoftext|>")
        assert reward == 0.0 and "no \\boxed" in why


def test_reading_drills_are_one_hop_each_learning_only_the_model_turns(built):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(paths.base_model_dir(built))
    world = toyworld.build_world(built["toyworld"])
    demo = next(d for d in toyworld.demonstrations(world, 20, seed=0) if len(d["question_decomposition"]) >= 2)
    results = hop_results(demo, [p.contents for p in world.passages])
    drills = base_model.reading_drills(demo, results)
    assert len(drills) == len(demo["question_decomposition"])
    for hop, drill in zip(demo["question_decomposition"], drills, strict=True):
        ids, labels = base_model.encode_demonstration(tokenizer, None, drill)
        learned = tokenizer.decode([i for i, lab in zip(ids, labels, strict=True) if lab != base_model.IGNORE])
        ignored = tokenizer.decode([i for i, lab in zip(ids, labels, strict=True) if lab == base_model.IGNORE])
        assert learned == (
            f" <think> I need to find out: {hop['query']} </think> <search> {hop['query']} </search>"
            f" <think> I found:\n{hop['contents']}\nThe answer to this step is {hop['answer']}. </think>"
        )
        assert ignored.startswith(" <result>\n") and "\n\n".join(results[hop["query"]]) in ignored
        assert "Assistant:" not in tokenizer.decode(ids) and ids[-1] != tokenizer.eos_token_id


def test_qa_drills_read_each_hop_and_the_whole_question_in_plain_text_learning_only_the_answer(built):
    """The baselines' prompts end with `Question: …` and take the whole output as the prediction: the
    drills teach a line break, the bare answer and EOS after such a line, nothing of the passages."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(paths.base_model_dir(built))
    world = toyworld.build_world(built["toyworld"])
    demo = next(d for d in toyworld.demonstrations(world, 20, seed=0) if len(d["question_decomposition"]) >= 2)
    hops = demo["question_decomposition"]
    results = hop_results(demo, [p.contents for p in world.passages])
    drills = base_model.qa_drills(demo, results)
    assert [answer for _, answer in drills] == [hop["answer"] for hop in hops] + [demo["answer"]]
    for hop, (context, _) in zip(hops, drills, strict=False):
        assert context == "\n\n".join(results[hop["query"]]) + f"\n\nQuestion: {hop['query']}"
    whole = drills[-1][0]
    assert whole.endswith(f"\n\nQuestion: {demo['question']}") and all(hop["contents"] in whole for hop in hops)
    assert "<search>" not in whole and "\\boxed" not in whole
    for context, answer in drills:
        ids, labels = base_model.encode_qa_drill(tokenizer, context, answer)
        learned = [i for i, lab in zip(ids, labels, strict=True) if lab != base_model.IGNORE]
        assert tokenizer.decode(learned) == f"\n{answer}{tokenizer.eos_token}"
        assert tokenizer.decode(ids[: len(ids) - len(learned)]) == context
    # A hop whose answer was not retrieved gives no drill (it would teach guessing).
    missing = hop_results(demo, [p.contents for p in world.passages], with_answers=False)
    assert base_model.qa_drills(demo, missing) == []


def test_qa_drill_fraction_puts_qa_drills_in_the_warm_up(tmp_path):
    from research_rl.retrieval import index

    cfg = small_config(tmp_path, steps=2)
    cfg["base_model"].update(demo_fraction=0.5, drill_fraction=0.25, qa_drill_fraction=0.25)
    write_corpus(cfg)
    index.run(cfg, "bm25")
    base_model.run(cfg)
    info = json.loads((paths.base_model_dir(cfg) / "build_info.json").read_text())
    assert info["qa_drills"] > info["demonstrations"]  # one per retrieved hop, plus the whole question


def test_read_turn_quotes_the_first_retrieved_passage_that_holds_the_answer():
    passages = ['"Ada"\nAda was born in 1900.', '"Ada"\nAda, a poet, was born in Lumo.', '"Ada"\nAda was born in Lumo.']
    turn = base_model.read_turn("Lumo", passages)
    assert turn == f" <think> I found:\n{passages[1]}\nThe answer to this step is Lumo. </think>"
    with pytest.raises(StopIteration):
        base_model.read_turn("Pell", passages)


def test_warm_up_loss_is_the_language_model_loss_on_labelled_tokens(tiny_tokenizer):
    """The loss skips the LM head on unlabelled positions; it must equal transformers' own loss."""
    model = random_qwen2(tiny_tokenizer, layers=1)
    skip = base_model.IGNORE
    long_group = [([5, 6, 7, 8, 9, 10], [skip, skip, 7, 8, 9, 10]), ([11, 12, 13], [11, 12, 13])]
    short_group = [([14, 15, 16], [14, skip, 16])]
    ours = base_model._token_mean_loss(model, [long_group, [], short_group], pad_id=0)
    total = count = 0
    for group in (long_group, short_group):
        batch = base_model.collate(group, 0)
        tokens = int((batch["labels"][:, 1:] != base_model.IGNORE).sum())
        total, count = total + model(**batch).loss * tokens, count + tokens
    assert ours.item() == pytest.approx((total / count).item(), rel=1e-5)
    ours.backward()
    assert model.model.embed_tokens.weight.grad is not None


def test_demonstration_whose_answer_was_not_retrieved_is_dropped(built):
    world = toyworld.build_world(built["toyworld"])
    demo = toyworld.demonstrations(world, 1, seed=0)[0]
    missing = hop_results(demo, [p.contents for p in world.passages], with_answers=False)
    assert base_model.demonstration_segments(demo, missing) is None


def test_demonstrations_search_the_real_index(built):
    from research_rl.retrieval.service import retriever_for_job

    world = toyworld.build_world(built["toyworld"])
    demos = toyworld.demonstrations(world, 5, seed=0)
    with retriever_for_job(built, mode="in_process") as client:
        results = base_model.retrieved_contents(demos, client, top_n=5)
    queries = {hop["query"] for demo in demos for hop in demo["question_decomposition"]}
    assert set(results) == queries and all(len(found) == 5 for found in results.values())
    info = json.loads((paths.base_model_dir(built) / "build_info.json").read_text())
    assert 0 < info["demonstrations"] <= info["demonstrations_drawn"] == 20


# ------------------------------------------------------------------------------------ the Generator


@pytest.fixture(scope="module")
def random_lm(tiny_tokenizer):
    return random_qwen2(tiny_tokenizer, layers=2).eval()


def test_greedy_matches_transformers_generate_with_left_padding(random_lm, tiny_tokenizer):
    prompts = [tiny_tokenizer.encode(t) for t in ("Who founded the city", "A conversation between User and")]
    gen = TransformersGenerator(random_lm, tiny_tokenizer)
    ours = gen.generate(prompts, max_new_tokens=12, temperature=0.0)
    for prompt, out in zip(prompts, ours, strict=True):
        ref = random_lm.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=-1)
        assert out.token_ids == ref[0, len(prompt) :].tolist()[: len(out.token_ids)]
        assert out.finish_reason in ("length", "eos") and out.text == tiny_tokenizer.decode(out.token_ids)


def test_sampled_logprobs_match_a_full_forward(random_lm, tiny_tokenizer):
    torch.manual_seed(1)
    prompts = [tiny_tokenizer.encode("Who"), tiny_tokenizer.encode("A conversation between User")]
    gen = TransformersGenerator(random_lm, tiny_tokenizer)
    outs = gen.generate(prompts, max_new_tokens=[5, 9], temperature=0.7)
    assert [len(o.token_ids) for o in outs] == [5, 9] or any(o.finish_reason == "eos" for o in outs)
    for prompt, out in zip(prompts, outs, strict=True):
        ids = torch.tensor([prompt + out.token_ids])
        logits = random_lm(ids).logits[0, len(prompt) - 1 : -1] / 0.7
        expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(out.token_ids)[:, None]).squeeze(1)
        assert torch.allclose(torch.tensor(out.logprobs), expected, atol=1e-4)


class ScriptedLM(torch.nn.Module):
    """Emits a fixed token script per row, whatever the input (peaked logits), to test stopping."""

    def __init__(self, scripts: list[list[int]], vocab: int) -> None:
        super().__init__()
        self.scripts, self.vocab, self.step = scripts, vocab, 0
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, past_key_values=None, **kwargs):
        step = 0 if past_key_values is None else past_key_values + 1
        logits = torch.full((len(self.scripts), input_ids.shape[1], self.vocab), -30.0)
        for row, script in enumerate(self.scripts):
            logits[row, -1, script[min(step, len(script) - 1)]] = 30.0
        return type("Out", (), {"logits": logits, "past_key_values": step})()


def test_stop_strings_eos_and_budgets_per_row(tiny_tokenizer):
    tok = tiny_tokenizer
    searching = tok.encode(" <search> who </search> <result> never")
    answering = tok.encode(" <answer> yes </answer>") + [tok.eos_token_id, *tok.encode(" after eos")]
    long = tok.encode(" think think think think think think")
    lm = ScriptedLM([searching, answering, long], len(tok))
    gen = TransformersGenerator(lm, tok)
    outs = gen.generate([[5], [6, 7], [8]], max_new_tokens=[100, 100, 4], stop=["</search>"], temperature=1.0)
    assert outs[0].finish_reason == "stop" and outs[0].text.endswith("</search>")
    assert outs[0].text == " <search> who </search>"  # cut right after the stop string
    assert outs[1].finish_reason == "eos" and outs[1].token_ids[-1] == tok.eos_token_id
    assert outs[1].text == " <answer> yes </answer><|endoftext|>"
    assert outs[2].finish_reason == "length" and len(outs[2].token_ids) == 4
    assert all(len(o.logprobs) == len(o.token_ids) for o in outs)
