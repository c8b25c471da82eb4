"""Prompts for response generation: chat messages from a dialogue, and their token ids.

The prompt is the backbone's own chat template (``tokenizer.apply_chat_template``) over

    system     the task's system prompt with the language, the intent and the dialogue state filled in
    user / assistant   the preceding turns (customer = user, agent = assistant), oldest dropped first

followed by the generation prompt; the target is the agent's response and the backbone's end-of-turn
token. Training and inference build the prompt with the same function, so the model sees at run time
exactly what it learnt from. Only the response tokens carry a loss (the prompt is labelled -100).
"""

from __future__ import annotations

import re

IGNORE = -100

# Used when a backbone's tokenizer carries no chat template (e.g. Gemma 3 270M's GGUF, the tiny LM).
CHAT_TEMPLATES = {
    "chatml": (
        "{% for m in messages %}"
        "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    # Gemma has no system role: the system text opens the first turn, as in Gemma's own template.
    "gemma": (
        "{{ bos_token }}"
        "{% if messages and messages[0]['role'] == 'system' %}"
        "{% set first = messages[0]['content'] + '\\n\\n' %}{% set rest = messages[1:] %}"
        "{% else %}{% set first = '' %}{% set rest = messages %}{% endif %}"
        "{% for m in rest %}"
        "{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else 'user') + '\\n'"
        " + (first if loop.first else '') + m['content'] + '<end_of_turn>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
    ),
}

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
ROLES = {"user": "user", "agent": "assistant"}


def fallback_chat_template(name: str) -> str:
    if name not in CHAT_TEMPLATES:
        raise ValueError(f"chat_template={name!r}: expected one of {sorted(CHAT_TEMPLATES)}")
    return CHAT_TEMPLATES[name]


def ensure_chat_template(tokenizer, fallback: str | None) -> None:
    """Give a tokenizer without a chat template the named fallback (``chatml`` when none is named)."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = fallback_chat_template(fallback or "chatml")


def detect_lang(text: str) -> str:
    return "zh" if _CJK.search(text or "") else "en"


def format_state(state: dict | None) -> str:
    return "; ".join(f"{k}={v}" for k, v in sorted((state or {}).items())) or "-"


def system_message(system_prompt: dict, lang: str, intent: str | None, state: dict | None) -> str:
    template = system_prompt.get(lang) or system_prompt.get("en") or next(iter(system_prompt.values()))
    return template.format(intent=intent or "-", state=format_state(state), language=lang)


def build_messages(
    history: list[dict], intent: str | None, state: dict | None, lang: str, system_prompt: dict
) -> list[dict]:
    """Chat messages for the reply that follows ``history`` ([{"speaker", "text"}], oldest first)."""
    msgs = [{"role": "system", "content": system_message(system_prompt, lang, intent, state)}]
    for i, turn in enumerate(history):
        speaker = turn.get("speaker")
        if speaker not in ROLES:
            raise ValueError(f"history[{i}].speaker: {speaker!r} is not 'user' or 'agent'")
        msgs.append({"role": ROLES[speaker], "content": str(turn.get("text", ""))})
    return msgs


def _template_ids(tokenizer, messages: list[dict]) -> list[int]:
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    return list(out["input_ids"])


def prompt_ids(
    tokenizer,
    history: list[dict],
    intent: str | None,
    state: dict | None,
    lang: str,
    system_prompt: dict,
    max_prompt_tokens: int,
) -> list[int]:
    """Token ids of the prompt; the oldest turns are dropped (never the system message or the last
    turn) until it fits, and a last turn that alone is too long is cut from the left."""
    turns = list(history)
    while True:
        ids = _template_ids(tokenizer, build_messages(turns, intent, state, lang, system_prompt))
        if len(ids) <= max_prompt_tokens or len(turns) <= 1:
            break
        turns = turns[1:]
    return ids if len(ids) <= max_prompt_tokens else ids[-max_prompt_tokens:]


def stop_token_ids(tokenizer, stop_tokens: list[str] | None) -> list[int]:
    """The end-of-turn ids: the named stop tokens that the vocabulary has, then the eos token."""
    ids = []
    vocab = tokenizer.get_vocab()
    for tok in stop_tokens or []:
        if tok in vocab:
            ids.append(vocab[tok])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("the tokenizer has no eos token and none of the stop_tokens; set model.stop_tokens")
    return list(dict.fromkeys(ids))


def encode_example(
    tokenizer, row: dict, system_prompt: dict, max_length: int, max_response_tokens: int, end_id: int
) -> dict:
    """One training example: prompt + response + end token; labels only on the response part."""
    response = tokenizer(row["response"], add_special_tokens=False)["input_ids"]
    target = response[:max_response_tokens] + ([end_id] if len(response) <= max_response_tokens else [])
    prompt = prompt_ids(
        tokenizer,
        row["history"],
        row.get("intent"),
        row.get("state"),
        row["lang"],
        system_prompt,
        max_length - len(target),
    )
    ids = prompt + target
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [IGNORE] * len(prompt) + target}
