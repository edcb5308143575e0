"""The Instruct tab's handlers: a conversation with a model that has a chat template (a checkpoint
made by train/instruct.py, or an engine's chat endpoint), with the side panel's settings and the
same instruments as the Write tab (the reply's tokens coloured, the inspector, the template's text).

The conversation is the visitor's own (a gr.State of OpenAI-shaped messages); the chatbot shows it.
A base model is refused with one sentence, in the status line, before anything runs.
"""
from __future__ import annotations

import time

import gradio as gr

from nucleus.chat import MAX_CHAT_CHARS, has_template
from nucleus.remote import RemoteError
from nucleus.settings import SettingsError

from . import handlers, views
from .session import Space, session_of

CHAT_BUTTONS = 2           # Send, Clear: off while the visitor's run is on


def note(space: Space, label) -> str:
    """What the tab can do with this model, in one line."""
    try:
        lm = space.catalog.get(label)
    except Exception:       # noqa: BLE001 - the model menu says why a model cannot load
        return ""
    if lm.engine:
        return f"Messages go to {lm.describe_engine()}'s chat endpoint, which applies {lm.name}'s own template."
    if not has_template(lm.tokenizer):
        return (f"**{lm.name} is a base model**: it has no chat template, so it continues text (the Write tab) "
                "rather than answering messages. Instruct needs a checkpoint trained with `train/instruct.py`.")
    return f"Messages are written in {lm.name}'s chat template (shown below the reply) and the model writes the reply."


def choose_preset(space: Space, name):
    p = space.presets.get(name) if isinstance(name, str) else None
    if p is None or p.kind != "chat":
        raise handlers.refuse(f"preset: unknown chat preset {name!r}")
    return (p.description, p.system, p.prompt, *handlers.preset_settings(space, name))


def send(space: Space, label, system, message, conversation, temperature, top_p, top_k, min_p, rep, ngram, max_new,
         stop_text, seed, request: gr.Request):
    """Send the message: stream the reply into the conversation. Outputs: chatbot, status, template
    text, conversation, the finished run, the message box."""
    session = session_of(request)
    cancel, began = space.sessions.claim(session), time.monotonic()
    try:
        try:
            settings = handlers.settings_from_ui(temperature, top_p, top_k, min_p, rep, ngram, max_new, stop_text, seed)
            lm = handlers.backend(space, label)
            if not isinstance(system, str) or not isinstance(message, str):
                raise handlers.refuse("messages: expected text")
            history = [m for m in (conversation or []) if isinstance(m, dict)]
            messages = ([{"role": "system", "content": system}] if system.strip() else []) + history + \
                [{"role": "user", "content": message}]
            if sum(len(m.get("content", "")) for m in messages if isinstance(m.get("content"), str)) > MAX_CHAT_CHARS:
                raise handlers.refuse(f"messages: over {MAX_CHAT_CHARS:,} characters in all; clear the conversation")
            template = lm.chat_prompt(messages, settings.max_new_tokens).text
        except SettingsError as e:
            yield gr.skip(), f"⚠️ {e}", gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        except gr.Error as e:
            yield gr.skip(), f"⚠️ {e.message}", gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        if cancel.is_set():
            yield gr.skip(), "Stopped before it started.", gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        shown_at, asked = 0.0, history + [{"role": "user", "content": message}]
        record = handlers.RECORD_CANDIDATES if lm.supports.stages else 0
        for update in lm.stream_chat(messages, settings, cancel, space.max_seconds, record=record):
            reply = update.text.strip()
            shown = [{**m, "content": views.chat_literal(m["content"])} for m in asked] + \
                [{"role": "assistant", "content": views.chat_literal(reply)}]
            if not update.done:
                if time.monotonic() - shown_at >= handlers.PAGE_UPDATE_SECONDS:
                    shown_at = time.monotonic()
                    yield shown, views.status(update), template, gr.skip(), gr.skip(), gr.skip()
                continue
            done = {"records": update.records, "text": update.text, "model": label, "engine": lm.engine,
                    "settings": settings.replace(seed=update.seed, max_new_tokens=update.max_new_tokens).to_dict()}
            yield shown, views.status(update), template, asked + [{"role": "assistant", "content": reply}], done, ""
    except (SettingsError, RemoteError) as e:
        raise handlers.refuse(str(e)) from None
    finally:
        space.sessions.finish(session, cancel, began)


def after_send(done):
    """The reply's tokens, coloured, and which record each shows (the inspector reads them)."""
    if not done:
        return gr.skip(), gr.skip(), gr.skip()
    entries, index = views.token_entries("", done["records"])
    return entries[1:], index[1:], views.inspector_hint(done["engine"], bool(done["records"]))


def lock():
    return tuple(gr.update(interactive=False) for _ in range(CHAT_BUTTONS))


def unlock():
    return tuple(gr.update(interactive=True) for _ in range(CHAT_BUTTONS))


def stop(space: Space, clicked_ms, request: gr.Request):
    running, queued = space.sessions.stop(session_of(request), clicked_ms)
    if queued and not running:
        return ("Stopped before it started.", *unlock())
    return (gr.skip(),) * (1 + CHAT_BUTTONS)


def clear():
    """A new conversation: chatbot, conversation, status, template text, tokens, finished run."""
    return [], [], "", "", [], None
