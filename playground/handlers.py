"""The page's event handlers: module-level functions of (space, inputs...) -> outputs, wired to the
widgets in playground/__init__.py with functools.partial. Each can be called without a browser
(tests/test_handlers.py): give it a Space, the values the widgets would send, and a fake request.

Runs (Generate, Continue, Regenerate, Compare) are generators: Gradio sends each yielded value to
the page. A run is armed at the click (`arm`, outside the queue) so that Stop reaches it while it
waits; it claims its flag when the queue starts it, and finishes it however it ends.
"""
from __future__ import annotations

import logging
import os
import random
import time

import gradio as gr

import nucleus
from nucleus.remote import RemoteError
from nucleus.reproduce import snippets
from nucleus.settings import BOUNDS, SamplingSettings, SettingsError, format_stop_text, parse_seed, parse_stop_text
from nucleus.tokenizer import encode_prompt

from . import views
from .session import Space, session_of

log = logging.getLogger("nucleus.space")

MAX_PROMPT_CHARS = 16_000   # longer prompts are refused; a prompt longer than the context is cut, with a note
PAGE_UPDATE_SECONDS = 0.1   # the page redraws streamed text at most this often: a fast model would
                            # otherwise re-render the whole text per token and swamp the browser
RECORD_CANDIDATES = 10      # candidates kept per token for the inspector


# ---- checks of what the page sends ------------------------------------------------------------------
def refuse(message: str) -> gr.Error:
    """A user's mistake: shown on the page, one line in the console, no traceback."""
    log.info("refused: %s", message)
    return gr.Error(message, print_exception=False)


def settings_from_ui(temperature, top_p, top_k, min_p, repetition_penalty, no_repeat_ngram_size, max_new_tokens,
                     stop_text, seed) -> SamplingSettings:
    """The side panel's values as SamplingSettings, or a gr.Error naming the field."""
    try:
        if not isinstance(stop_text, (str, type(None))):
            raise SettingsError("stop", f"expected text, got {type(stop_text).__name__}")
        return SamplingSettings(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                                repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
                                max_new_tokens=max_new_tokens, stop=parse_stop_text(stop_text), seed=parse_seed(seed))
    except SettingsError as e:
        raise refuse(str(e)) from None


def check_prompt(prompt, field: str = "prompt") -> str:
    if not isinstance(prompt, str):
        raise refuse(f"{field}: expected text, got {type(prompt).__name__}")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise refuse(f"{field}: {len(prompt):,} characters; at most {MAX_PROMPT_CHARS:,} are accepted")
    return prompt


def backend(space: Space, label) -> nucleus.Backend:
    try:
        return space.catalog.get(label)
    except nucleus.ModelLoadError as e:
        raise refuse(str(e)) from None


def max_new_limit(lm) -> int:
    """The slider's top: what the model's context leaves after at least one prompt token."""
    return min(BOUNDS["max_new_tokens"][2], lm.context_length - 1)


# ---- presets, the meter, the model menu -------------------------------------------------------------
def preset_settings(space: Space, name):
    t = space.presets[name].settings
    return (t.temperature, t.top_p, t.top_k, t.min_p, t.repetition_penalty, t.no_repeat_ngram_size,
            t.max_new_tokens, format_stop_text(t.stop))


def choose_preset(space: Space, name):
    if name not in space.presets:
        raise refuse(f"preset: unknown preset {name!r}")
    p = space.presets[name]
    return (p.description, p.prompt, *preset_settings(space, name))


def measure(space: Space, label, text, wanted) -> str:
    try:
        lm = space.catalog.get(label)
    except nucleus.ModelLoadError:
        return ""
    if not isinstance(text, str) or len(text) > MAX_PROMPT_CHARS:
        return f"Prompt: over {MAX_PROMPT_CHARS:,} characters, which is more than this Space accepts"
    n = len(encode_prompt(lm.tokenizer, text))
    return views.prompt_meter(n, lm.context_length, int(wanted) if isinstance(wanted, (int, float)) else 0)


def model_info(space: Space, label: str) -> str:
    return views.model_info(space.catalog.get(label).describe(), space.chosen_by if label == space.initial_label else "")


def notice(space: Space, label: str) -> str:
    """The sentence at the top of the page: why a fallback happened, and what the demo model is."""
    from nucleus import loading

    parts = [space.fallback] if space.fallback else []
    if space.catalog.choices.get(label) in {str(p) for p in loading.bundled_models()}:
        parts.append(views.DEMO_NOTICE)
    return "\n\n".join(parts)


def range_note(space: Space, name: str, label, value) -> str:
    """A value typed past a slider's range is put back in range by the page: say which value is
    used instead of clamping in silence (the event comes with the value as typed)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return ""
    low, high = space.slider_range[name]
    if name == "max_new_tokens":
        try:
            high = max_new_limit(space.catalog.get(label))
        except nucleus.ModelLoadError:
            pass
    return views.out_of_range(name, value, low, high)


def switch_model(space: Space, label, wanted):
    limit = max_new_limit(backend(space, label))
    value = min(wanted, limit) if isinstance(wanted, (int, float)) else limit
    return model_info(space, label), gr.Slider(maximum=limit, value=value), notice(space, label)


# ---- runs ---------------------------------------------------------------------------------------
def arm(space: Space, clicked_ms, request: gr.Request):
    """At the click, before the run is queued: a Stop from now on reaches this run, and the status
    says at once when it must wait (for other visitors, or for this visitor's own Compare)."""
    session = session_of(request)
    ahead, own = space.sessions.busy(), space.sessions.busy(session)
    space.sessions.arm(session, clicked_ms, space.queue_limit)
    return views.waiting(ahead, own) if ahead >= space.concurrency else gr.skip()


def snapshot(text, shown, hist):
    """Undo's step: the prompt and result as they were before this change."""
    return [*(hist or []), (text, shown)]


def run(space: Space, label, text, temperature, top_p, top_k, min_p, rep, ngram, max_new, stop_text, seed,
        request: gr.Request, fresh_seed: bool = False):
    """Generate (and Continue, and Regenerate with fresh_seed): stream the text, then the finished run."""
    session = session_of(request)
    cancel, began = space.sessions.claim(session), time.monotonic()
    try:
        try:
            settings = settings_from_ui(temperature, top_p, top_k, min_p, rep, ngram, max_new, stop_text,
                                        None if fresh_seed else seed)
            text, lm = check_prompt(text), backend(space, label)
        except gr.Error as e:   # a mistake in the inputs: say so in the status, keep the last result
            yield gr.skip(), gr.skip(), f"⚠️ {e.message}", gr.skip()
            return
        if cancel.is_set():      # Stop was pressed while this run waited in the queue
            yield gr.skip(), gr.skip(), "Stopped before it started.", gr.skip()
            return
        yield from _stream_run(space, lm, label, text, settings, cancel)
    except (SettingsError, RemoteError) as e:
        raise refuse(str(e)) from None
    finally:
        space.sessions.finish(session, cancel, began)


def _stream_run(space: Space, lm, label, text, settings, cancel):
    shown_at = 0.0
    record = RECORD_CANDIDATES if lm.supports.logprobs else 0
    for update in lm.stream(text, settings, cancel, space.max_seconds, record=record):
        seen = views.shown_prompt(text, update.prompt_start)
        if not update.done:
            if time.monotonic() - shown_at >= PAGE_UPDATE_SECONDS:
                shown_at = time.monotonic()
                yield seen + update.text, [(seen, None), (update.text, "generating")], views.status(update), gr.skip()
            continue
        done = {"prompt": text, "shown_prompt": seen, "text": update.text, "model": label, "engine": lm.engine,
                "settings": settings.replace(seed=update.seed, max_new_tokens=update.max_new_tokens).to_dict(),
                "records": update.records, "source": lm.source, "dtype": str(getattr(lm, "dtype", "bfloat16")),
                "weights": lm.weights}
        yield seen + update.text, views.token_entries(seen, update.records)[0], views.status(update), done


def regenerate(space: Space, label, text, temperature, top_p, top_k, min_p, rep, ngram, max_new, stop_text, seed,
               request: gr.Request):
    """The same prompt and settings with a new random seed, whatever the seed box says."""
    yield from run(space, label, text, temperature, top_p, top_k, min_p, rep, ngram, max_new, stop_text, seed,
                   request, fresh_seed=True)


def prepare_continue(text, done, hist):
    """Continue: the whole text so far becomes the prompt (before any run: the prompt as it is)."""
    if not done:
        return text, hist
    return done["prompt"] + done["text"], snapshot(text, done["shown_prompt"] + done["text"], hist)


def after_run(done, request: gr.Request):
    """Once a run ends: the token view, the Markdown view, the code panel, the seed button."""
    if not done:
        return (gr.skip(),) * 9
    entries, index = views.token_entries(done["shown_prompt"], done["records"])
    st = SamplingSettings.from_dict(done["settings"])
    host = request.headers.get("host", "127.0.0.1:7860") if request is not None else "127.0.0.1:7860"
    space = os.environ.get("SPACE_ID") or f"http://{host}/"
    code = snippets(done["prompt"], st, done["source"], done["model"], space, done["dtype"].removeprefix("torch."),
                    done["weights"])
    return (entries, index, views.md_literal(done["shown_prompt"] + done["text"]), code["python"],
            code["gradio_client"], code["cli"], code["curl"], gr.Button(visible=True),
            views.inspector_hint(done["engine"], bool(done["records"])))


WRITE_BUTTONS = 5          # Generate, Continue, Regenerate, Undo, Clear: off while the visitor's run is on


def lock():
    """The Write tab's buttons while a run of this visitor is queued or streaming (Stop stays on):
    Continue or Clear in the middle of a run would act on the run before it."""
    return tuple(gr.update(interactive=False) for _ in range(WRITE_BUTTONS))


def unlock():
    return tuple(gr.update(interactive=True) for _ in range(WRITE_BUTTONS))


def stop(space: Space, clicked_ms, request: gr.Request):
    """Set the flags. A running run ends within one token and writes the final status itself, so
    Stop and the last streamed update never race for the status line; a run that only waited in the
    queue is said to be stopped at once, and the buttons come back."""
    running, queued = space.sessions.stop(session_of(request), clicked_ms)
    if queued and not running:
        return ("Stopped before it started.", *unlock())
    return (gr.skip(),) * (1 + WRITE_BUTTONS)


def leave(space: Space, request: gr.Request):
    """The visitor closed or reloaded the page."""
    space.sessions.leave(session_of(request))


def undo(hist):
    """Back one step: the prompt as it was before the last Generate, Continue or Clear."""
    if not hist:
        return gr.skip(), gr.skip(), gr.skip(), "Nothing to undo.", hist, None
    text, shown = hist[-1]
    left = len(hist) - 1
    note = f"Undone: back to before the last step ({views.plural(left, 'more step')} to undo)." if left else \
        "Undone: back to where you started."
    return text, shown, [(shown, None)] if shown else [], note, hist[:-1], None


def clear(text, shown, hist):
    return "", "", [], "", snapshot(text, shown, hist), None


def reuse_seed(done):
    return str(done["settings"]["seed"]) if done else gr.skip()


def switch_view(view):
    """"hidden" keeps a view in the page (its text stays readable and copyable), just not shown."""
    return [gr.update(visible=True if view == name else "hidden") for name in views.VIEWS]


def inspect(done, index, evt: gr.SelectData):
    if not done or evt.index is None or not isinstance(evt.index, int) or evt.index >= len(index):
        return gr.skip(), gr.skip()
    i = index[evt.index]
    if i < 0:
        return "That is your prompt: select a generated token.", []
    return views.inspect_step(done["records"][i], i, done["settings"])


# ---- compare --------------------------------------------------------------------------------------
def compare(space: Space, label_a, t_a, label_b, t_b, text, temperature, top_p, top_k, min_p, rep, ngram, max_new,
            stop_text, seed, request: gr.Request):
    """The same prompt and seed under two temperatures or two models, one after the other."""
    session = session_of(request)
    cancel, began = space.sessions.claim(session), time.monotonic()
    try:
        base = settings_from_ui(temperature, top_p, top_k, min_p, rep, ngram, max_new, stop_text, seed)
        base = base.replace(seed=base.seed if base.seed is not None else random.randrange(2**31))
        text = check_prompt(text)
        columns, done_line = ["", ""], ""
        for col, (label, t) in enumerate(((label_a, t_a), (label_b, t_b))):
            lm = backend(space, label)
            try:
                settings = base.replace(temperature=t)
            except SettingsError as e:
                raise refuse(str(e)) from None
            shown_at = 0.0
            for update in lm.stream(text, settings, cancel, space.max_seconds):
                columns[col] = views.shown_prompt(text, update.prompt_start) + update.text
                line = f"{'AB'[col]}: {label}, temperature {t:g} · " + views.status(update)
                if update.done or time.monotonic() - shown_at >= PAGE_UPDATE_SECONDS:
                    shown_at = time.monotonic()
                    yield columns[0], columns[1], done_line + line
            done_line = line + "\n\n"    # A's final line stays while B runs
            if cancel.is_set():
                return
    except (SettingsError, RemoteError) as e:
        raise refuse(str(e)) from None
    finally:
        space.sessions.finish(session, cancel, began)
