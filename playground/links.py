"""Share links: the page's prompt, preset, model, settings and seed as URL query parameters, and
the page filled from them. Every value is checked by the same rules as the page and the API
(nucleus/reproduce.py); what a link asks that this page cannot do is named, never applied."""
from __future__ import annotations

import gradio as gr

from nucleus.reproduce import read_query, share_query
from nucleus.settings import BOUNDS, format_stop_text

from . import handlers, views
from .session import Space

SLIDERS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "no_repeat_ngram_size", "max_new_tokens")


def make_link(space: Space, text, preset_name, label, temperature, top_p, top_k, min_p, rep, ngram, max_new,
              stop_text, seed, done) -> str:
    """'?prompt=...': the link's query; the seed the last run drew when the box is empty."""
    settings = handlers.settings_from_ui(temperature, top_p, top_k, min_p, rep, ngram, max_new, stop_text, seed)
    if settings.seed is None and done:
        settings = settings.replace(seed=done["settings"]["seed"])
    return share_query(text if isinstance(text, str) else "", settings, label, preset_name)


def restore(space: Space, request: gr.Request) -> tuple:
    """The page's values from a share link's query, each validated, over the link's preset when it
    names one; the note says what was ignored (also a value outside this page's sliders). Returns
    (preset, preset_info, prompt, model, *the 7 sliders, stop_text, seed, link_note)."""
    query = {k: request.query_params.getlist(k) for k in request.query_params} if request is not None else {}
    if not any(k in query for k in ("prompt", "preset", "model", "stop", *BOUNDS)):
        return (gr.skip(),) * 14
    got = read_query(query, set(space.presets), set(space.catalog.labels), handlers.MAX_PROMPT_CHARS)
    limit = handlers.max_new_limit(space.catalog.get(got.model or space.initial_label))
    ranges = {**space.slider_range, "max_new_tokens": (1, limit)}
    for name, value in list(got.values.items()):
        if name in ranges and not ranges[name][0] <= value <= ranges[name][1]:
            low, high = ranges[name]
            got.ignored.append(f"{name}={value:g} (outside this page's range, {low:g} to {high:g})")
            del got.values[name]
    base = space.presets[got.preset] if got.preset else None
    stops = got.values.get("stop", base.settings.stop if base else None)
    sliders = [got.values.get(n, getattr(base.settings, n) if base else gr.skip()) for n in SLIDERS]
    note = ("⚠️ Ignored from the link: " + "; ".join(views.md_literal(x) for x in got.ignored)) if got.ignored else ""
    return (got.preset or gr.skip(), base.description if base else gr.skip(),
            got.prompt if got.prompt is not None else (base.prompt if base else gr.skip()),
            got.model or gr.skip(), *sliders, format_stop_text(stops) if stops is not None else gr.skip(),
            str(got.values["seed"]) if "seed" in got.values else gr.skip(), note)
