"""Chat: OpenAI-shaped messages, rendered with the model's own chat template, then generated like
any prompt (the same loop, settings, records and logprobs).

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue?"}]
    for update in lm.stream_chat(messages, settings): ...

A checkpoint has a chat template when its tokenizer stores one (train/instruct.py's export does:
Mistral's v1 format, `<s>[INST] {system}\\n\\n{user} [/INST] {reply}</s>`). A base model has none,
and a chat request to it is refused with one sentence: it continues text, it does not answer.

Tokens: the template's text is tokenised as in training (train/chat.py's `encode`): the <s> and
</s> that the template writes are the control tokens. So that a message cannot write them, a
message holding the text of a control token is refused.

Context: when the conversation and the reply's room do not fit, the oldest turns (a user message
and the reply to it) are left out, the system prompt kept, with a warning. A last message that alone
leaves no room is refused (cutting the template in the middle would feed the model a broken turn).
"""
from __future__ import annotations

from dataclasses import dataclass

from .settings import SettingsError

ROLES = ("system", "user", "assistant")
MAX_MESSAGES = 64
MAX_CHAT_CHARS = 16_000        # all messages together, as the page's prompt limit


@dataclass(frozen=True)
class ChatPrompt:
    text: str                  # what the template wrote, <s> included
    ids: list[int]             # its tokens, as training tokenised them
    warning: str | None = None   # earlier turns left out to fit the context
    dropped: int = 0           # how many messages were left out
    messages: tuple = ()       # the messages the model sees (those left out are not here)


def check_messages(messages) -> list[dict]:
    """OpenAI-shaped messages, checked: a list of {"role", "content"} with text content; an optional
    system message first; then user and assistant alternating, ending with the user's."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise SettingsError("messages", "expected a non-empty list of {\"role\": ..., \"content\": ...}")
    if len(messages) > MAX_MESSAGES:
        raise SettingsError("messages", f"{len(messages)} messages; at most {MAX_MESSAGES} are accepted")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
            raise SettingsError("messages", f"message {i + 1} must be {{\"role\": one of {', '.join(ROLES)}, "
                                            f"\"content\": text}}, got {str(m)[:80]!r}")
        out.append({"role": m["role"], "content": m["content"]})
    if sum(len(m["content"]) for m in out) > MAX_CHAT_CHARS:
        raise SettingsError("messages", f"over {MAX_CHAT_CHARS:,} characters in all; shorten the conversation")
    turns = out[1:] if out[0]["role"] == "system" else out
    for i, m in enumerate(turns):
        want = "user" if i % 2 == 0 else "assistant"
        if m["role"] != want:
            raise SettingsError("messages", f"after the optional system message, user and assistant take turns "
                                            f"starting with the user; message {out.index(m) + 1} is {m['role']!r}")
    if not turns or turns[-1]["role"] != "user":
        raise SettingsError("messages", "the last message must be the user's (the model writes the reply)")
    if not turns[-1]["content"].strip():
        raise SettingsError("messages", "the last message is empty")
    return out


def has_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def base_model_refusal(name: str) -> SettingsError:
    return SettingsError("messages", f"{name} is a base model with no chat template: it continues text rather "
                                     "than answering messages, so use generate with a prompt (or serve a "
                                     "checkpoint made by train/instruct.py)")


def render(tokenizer, messages: list[dict], context: int, max_new_tokens: int, name: str = "this model") -> ChatPrompt:
    """The conversation as the model sees it, fitted to the context (see the module's docstring)."""
    if not has_template(tokenizer):
        raise base_model_refusal(name)
    messages = check_messages(messages)
    controls = [t for t in (tokenizer.bos_token, tokenizer.eos_token) if t]
    for m in messages:
        hit = next((t for t in controls if t in m["content"]), None)
        if hit:
            raise SettingsError("messages", f"a message holds {hit!r}, the model's control token; remove it")
    system = messages[:1] if messages[0]["role"] == "system" else []
    turns, dropped = messages[len(system):], 0
    while True:
        text = tokenizer.apply_chat_template(system + turns, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) + max_new_tokens <= context or len(turns) == 1:
            break
        turns, dropped = turns[2:], dropped + 2      # the oldest question and its reply
    if len(ids) >= context:
        raise SettingsError("messages", f"the conversation's last message takes {len(ids):,} tokens with the "
                                        f"template, and the model's context is {context:,}; shorten it")
    warning = (f"The conversation is longer than the model's {context:,}-token context: its {dropped} oldest "
               "messages were left out (the system prompt kept).") if dropped else None
    return ChatPrompt(text, ids, warning, dropped, tuple(system + turns))


__all__ = ["ChatPrompt", "MAX_CHAT_CHARS", "MAX_MESSAGES", "base_model_refusal", "check_messages", "has_template",
           "render"]
