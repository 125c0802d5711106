"""The two prompt templates of the original ReSearch (Agent-RL/ReSearch, verl/utils/dataset/template.py).

Their wording, spacing and punctuation are part of what the paper's numbers depend on, so they are kept
character for character. The base template is a `str.format` template (hence the doubled braces); the
system prompt is used as it is.
"""

from __future__ import annotations

from typing import Any

RE_SEARCH_TEMPLATE = (
    "A conversation between User and Assistant. "
    "The user asks a question, and the assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. "
    "During thinking, the assistant can invoke the wikipedia search tool to search for fact information "
    "about specific topics if needed. "
    "The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags "
    "respectively, "
    "and the search query and result are enclosed within <search> </search> and <result> </result> tags "
    "respectively. "
    "For example, <think> This is the reasoning process. </think> <search> search query here </search> "
    "<result> search result here </result> "
    "<think> This is the reasoning process. </think> <answer> The final answer is \\[ \\boxed{{answer here}} "
    "\\] </answer>. "
    "In the last part of the answer, the final exact answer is enclosed within \\boxed{{}} with latex format. "
    "User: {prompt}. Assistant:"
)

SYSTEM_PROMPT = (
    "You are a helpful assistant that can solve the given question step by step with the help of the "
    "wikipedia search tool. "
    "Given a question, you need to first think about the reasoning process in the mind and then provide "
    "the answer. "
    "During thinking, you can invoke the wikipedia search tool to search for fact information about "
    "specific topics if needed. "
    "The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags "
    "respectively, "
    "and the search query and result are enclosed within <search> </search> and <result> </result> tags "
    "respectively. "
    "For example, <think> This is the reasoning process. </think> <search> search query here </search> "
    "<result> search result here </result> "
    "<think> This is the reasoning process. </think> <answer> The final answer is \\[ \\boxed{answer here} "
    "\\] </answer>. "
    "In the last part of the answer, the final exact answer is enclosed within \\boxed{} with latex format."
)

RE_SEARCH_TEMPLATE_SYS = SYSTEM_PROMPT

TEMPLATES = {"re_search_template": RE_SEARCH_TEMPLATE, "re_search_template_sys": RE_SEARCH_TEMPLATE_SYS}


def render_base(question: str) -> str:
    """The base-model prompt; it ends `User: <question>. Assistant:` even after a question mark."""
    return RE_SEARCH_TEMPLATE.format(prompt=question)


def chat_messages(question: str) -> list[dict[str, str]]:
    """The instruct-model conversation: the template as system message, the question as user message."""
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]


def render_prompt(question: str, *, apply_chat: bool, tokenizer: Any = None) -> str:
    """The prompt string a model entry sees, as the original builds it (rl_dataset.RLHFDataset)."""
    if not apply_chat:
        return render_base(question)
    if tokenizer is None:
        raise ValueError("an instruct (apply_chat: true) prompt needs the model's tokenizer for its chat template")
    return tokenizer.apply_chat_template(chat_messages(question), add_generation_prompt=True, tokenize=False)


def prompt_token_count(question: str, *, apply_chat: bool, tokenizer: Any) -> int:
    """Tokens of the prompt as the original counts them when it drops prompts over the budget."""
    if apply_chat:
        ids = tokenizer.apply_chat_template(chat_messages(question), add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return len(ids)
    return len(tokenizer.encode(render_base(question), add_special_tokens=False))
