"""The original's templates, rendered for real questions (base and instruct)."""

from __future__ import annotations

from research_rl.prompts import RE_SEARCH_TEMPLATE, SYSTEM_PROMPT, chat_messages, render_base, render_prompt

QUESTION = "Who was the mentor of the founder of Velmora Press?"


def test_base_prompt_wording_and_question_placement():
    prompt = render_base(QUESTION)
    assert prompt.startswith("A conversation between User and Assistant. The user asks a question, and the assistant")
    # The original appends ". Assistant:" even after a question mark.
    assert prompt.endswith(f"User: {QUESTION}. Assistant:")
    assert "?. Assistant:" in prompt
    # The format braces collapse to single braces; the latex delimiters stay escaped once.
    assert "The final answer is \\[ \\boxed{answer here} \\] </answer>." in prompt
    assert "enclosed within \\boxed{} with latex format. User:" in prompt
    assert "{prompt}" not in prompt and "{{" not in prompt
    # Once in the explanation of the tags, once in the one-line example.
    assert prompt.count("<search>") == 2 and prompt.count("<result>") == 2


def test_question_with_braces_is_left_untouched():
    assert render_base("What is {x}?").endswith("User: What is {x}?. Assistant:")


def test_system_prompt_and_messages():
    assert SYSTEM_PROMPT.startswith(
        "You are a helpful assistant that can solve the given question step by step with the help of the "
        "wikipedia search tool. Given a question,"
    )
    assert SYSTEM_PROMPT.endswith("the final exact answer is enclosed within \\boxed{} with latex format.")
    assert "\\boxed{answer here}" in SYSTEM_PROMPT
    assert chat_messages(QUESTION) == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": QUESTION},
    ]
    # Instructions shared word for word between the two templates.
    shared = "The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags"
    assert shared in SYSTEM_PROMPT and shared in RE_SEARCH_TEMPLATE


def test_instruct_prompt_through_chat_template(tiny_tokenizer):
    prompt = render_prompt(QUESTION, apply_chat=True, tokenizer=tiny_tokenizer)
    assert prompt == (
        f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{QUESTION}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert render_prompt(QUESTION, apply_chat=False) == render_base(QUESTION)
