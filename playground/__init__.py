"""The Nucleus playground: the page of the Space, by concern.

    layout.py    the widgets          handlers.py  event handlers (module-level, unit-tested)
    views.py     pure drawing         links.py     share links
    api.py       /generate, /presets, /models      session.py   shared and per-visitor state
    zerogpu.py   GPU leases on a ZeroGPU Space

`build_demo` makes the page for a model catalog and wires each widget to its handler. app.py, the
Space's entry point, parses the flags, opens the catalog and launches what this returns.
"""
from __future__ import annotations

import functools
import inspect

import gradio as gr

import nucleus

from . import handlers, instruct, layout, links, scoring, views
from .api import Api, argument
from .session import Space
from .zerogpu import gpu_lease, lease_seconds

# A click's time on the browser's clock (ms), for ordering Stop against Generate (a js function's
# return value replaces the event's input).
NOW = "() => Date.now()"
PRIVATE = dict(api_visibility="private", queue=False)
# The runs' and the meter's inputs are taken as the page sends them (preprocess=False), so that a
# value typed past a slider's range reaches our own validation, which names it, instead of a bare
# "Error" from the slider's own check (and a traceback on the console).
RAW = dict(preprocess=False)


def partial(fn, space: Space):
    """fn with its first argument (the Space) bound, as a plain function that Gradio can read: the
    signature without `space`, the type hints (Gradio passes gr.Request and gr.SelectData by them,
    and cannot read them from a functools.partial), and a generator when fn is one (streaming)."""
    if inspect.isgeneratorfunction(fn):
        def bound(*args, **kwargs):
            yield from fn(space, *args, **kwargs)
    else:
        def bound(*args, **kwargs):
            return fn(space, *args, **kwargs)
    functools.update_wrapper(bound, fn)
    signature = inspect.signature(fn)
    bound.__signature__ = signature.replace(parameters=list(signature.parameters.values())[1:])
    return bound


def build_demo(catalog, chosen_by: str = "", fallback: str = "", max_seconds: float = 60.0,
               concurrency: int = 1) -> gr.Blocks:
    """The page for `catalog` (nucleus.ModelCatalog or RemoteCatalog); its first model is the default."""
    space = Space(catalog, nucleus.load_presets(), catalog.labels[0], chosen_by, fallback, max_seconds, concurrency)
    with gr.Blocks(title=views.TITLE) as demo:
        ui = layout.build(space)
        _wire_settings(demo, ui, space)
        _wire_runs(ui, space)
        _wire_views(ui)
        _wire_instruct(ui, space)
        _wire_score(ui, space)
        _wire_compare(ui, space)
        _wire_links(demo, ui, space)
        _wire_api(space)
        demo.unload(partial(handlers.leave, space))
    demo.nucleus_space = space          # for tests and tools: the page's server-side state
    return demo


def _queued(space: Space) -> dict:
    return dict(api_visibility="private", concurrency_id="generate", concurrency_limit=space.concurrency)


def _wire_settings(demo, ui, space: Space) -> None:
    # .input, not .change: a share link sets the preset without replacing the link's own values
    ui.preset.input(partial(handlers.choose_preset, space), ui.preset, [ui.preset_info, ui.prompt]
                    + ui.settings_inputs[:-1], api_visibility="private")
    ui.preset_reset.click(partial(handlers.preset_settings, space), ui.preset, ui.settings_inputs[:-1], **PRIVATE)
    meter = partial(handlers.measure, space)
    for trigger in (ui.prompt.change, ui.max_new.change, ui.model.change):
        trigger(meter, [ui.model, ui.prompt, ui.max_new], ui.meter, trigger_mode="always_last", **PRIVATE, **RAW)
    demo.load(meter, [ui.model, ui.prompt, ui.max_new], ui.meter, **PRIVATE, **RAW)
    for name, widget in ui.sliders.items():
        widget.input(functools.partial(_range_note, space, name), [ui.model, widget], ui.range_note, **PRIVATE, **RAW)
    ui.model.change(partial(handlers.switch_model, space), [ui.model, ui.max_new], [ui.info, ui.max_new, ui.notice],
                    api_visibility="private", concurrency_id="generate")


def _wire_runs(ui, space: Space) -> None:
    run_inputs = [ui.model, ui.prompt] + ui.settings_inputs
    run_outputs = [ui.output, ui.tokens, ui.status, ui.last_run]
    after_outputs = [ui.tokens, ui.token_map, ui.rendered, ui.code_py, ui.code_client, ui.code_cli, ui.code_curl,
                     ui.reuse_btn, ui.inspect_md]
    lease = functools.partial(_lease, space, handlers.run)
    arm = partial(handlers.arm, space)
    buttons = [ui.run_btn, ui.continue_btn, ui.regen_btn, ui.undo_btn, ui.clear_btn]
    for button, fn in ((ui.run_btn, handlers.run), (ui.regen_btn, handlers.regenerate), (ui.continue_btn, None)):
        # .success: a run the queue refused at the click (arm raised) goes no further
        step = button.click(arm, ui.clock, ui.status, js=NOW, **PRIVATE).success(handlers.lock, None, buttons, **PRIVATE)
        if fn is None:          # Continue: the text so far becomes the prompt
            step = step.then(handlers.prepare_continue, [ui.prompt, ui.last_run, ui.history], [ui.prompt, ui.history],
                             **PRIVATE)
        else:
            step = step.then(handlers.snapshot, [ui.prompt, ui.output, ui.history], ui.history, **PRIVATE)
        step.then(gpu_lease(partial(fn or handlers.run, space), lease), run_inputs, run_outputs, **_queued(space),
                  **RAW).then(handlers.after_run, ui.last_run, after_outputs, **PRIVATE).then(
            handlers.unlock, None, buttons, **PRIVATE)
    ui.stop_btn.click(partial(handlers.stop, space), ui.clock, [ui.status, *buttons], js=NOW, **PRIVATE)
    ui.undo_btn.click(handlers.undo, ui.history, [ui.prompt, ui.output, ui.tokens, ui.status, ui.history, ui.last_run],
                      **PRIVATE)
    ui.clear_btn.click(handlers.clear, [ui.prompt, ui.output, ui.history],
                       [ui.prompt, ui.output, ui.tokens, ui.status, ui.history, ui.last_run], **PRIVATE)
    ui.reuse_btn.click(handlers.reuse_seed, ui.last_run, ui.seed, **PRIVATE)


def _range_note(space: Space, name: str, label, value) -> str:
    return handlers.range_note(space, name, label, value)


def _lease(space: Space, fn, *args, **kwargs) -> int:
    """A run's GPU lease, from the max new tokens it was given (positionally, from the page)."""
    return lease_seconds(argument(partial(fn, space), "max_new", args, kwargs), space.max_seconds)


def _wire_views(ui) -> None:
    ui.view.change(handlers.switch_view, ui.view, [ui.tokens, ui.output, ui.rendered], **PRIVATE)
    ui.tokens.select(handlers.inspect, [ui.last_run, ui.token_map], [ui.inspect_md, ui.inspect_table], **PRIVATE)


def _wire_instruct(ui, space: Space) -> None:
    buttons = [ui.send_btn, ui.chat_clear_btn]
    ui.chat_preset.input(partial(instruct.choose_preset, space), ui.chat_preset,
                         [ui.chat_preset_info, ui.system, ui.message] + ui.settings_inputs[:-1], api_visibility="private")
    ui.model.change(partial(instruct.note, space), ui.model, ui.chat_note, **PRIVATE)
    lease = functools.partial(_lease, space, instruct.send)
    for trigger in (ui.send_btn.click, ui.message.submit):
        trigger(partial(handlers.arm, space), ui.clock, ui.chat_status, js=NOW, **PRIVATE).success(
            instruct.lock, None, buttons, **PRIVATE).then(
            gpu_lease(partial(instruct.send, space), lease),
            [ui.model, ui.system, ui.message, ui.conversation] + ui.settings_inputs,
            [ui.chatbot, ui.chat_status, ui.chat_template, ui.conversation, ui.chat_last, ui.message],
            **_queued(space), **RAW).then(
            instruct.after_send, ui.chat_last, [ui.chat_tokens, ui.chat_map, ui.chat_inspect_md], **PRIVATE).then(
            instruct.unlock, None, buttons, **PRIVATE)
    ui.chat_stop_btn.click(partial(instruct.stop, space), ui.clock, [ui.chat_status, *buttons], js=NOW, **PRIVATE)
    for trigger in (ui.chat_clear_btn.click, ui.chatbot.clear):     # the chatbot's own bin empties it too
        trigger(instruct.clear, None, [ui.chatbot, ui.conversation, ui.chat_status, ui.chat_template, ui.chat_tokens,
                                       ui.chat_last], **PRIVATE)
    ui.chat_tokens.select(handlers.inspect, [ui.chat_last, ui.chat_map], [ui.chat_inspect_md, ui.chat_inspect_table],
                          **PRIVATE)


def _wire_score(ui, space: Space) -> None:
    ui.score_btn.click(gpu_lease(partial(scoring.score_text, space), lambda *a, **k: space.max_seconds),
                       [ui.model, ui.score_text], [ui.score_tokens, ui.score_summary, ui.score_surprising, ui.scored],
                       **_queued(space), **RAW)
    ui.score_tokens.select(gpu_lease(partial(scoring.lens, space), lambda *a, **k: space.max_seconds), ui.scored,
                           [ui.lens_md, ui.lens_table], **_queued(space))


def _wire_compare(ui, space: Space) -> None:
    ui.compare_btn.click(partial(handlers.arm, space), ui.clock, ui.compare_status, js=NOW, **PRIVATE).success(
        gpu_lease(partial(handlers.compare, space), lambda *a, **k: 2 * space.max_seconds),
        [ui.model_a, ui.temp_a, ui.model_b, ui.temp_b, ui.prompt] + ui.settings_inputs,
        [ui.out_a, ui.out_b, ui.compare_status], **_queued(space), **RAW)


def _wire_links(demo, ui, space: Space) -> None:
    ui.share_btn.click(partial(links.make_link, space), [ui.prompt, ui.preset, ui.model] + ui.settings_inputs
                       + [ui.last_run], ui.link_query, **PRIVATE).then(
        None, ui.link_query, ui.share_link, js="(q) => window.location.origin + window.location.pathname + q")
    demo.load(partial(links.restore, space), None, [ui.preset, ui.preset_info, ui.prompt, ui.model]
              + ui.settings_inputs + [ui.link_note], **PRIVATE)


def _wire_api(space: Space) -> None:
    api = Api(space)

    def lease(*args, **kwargs) -> int:
        return lease_seconds(argument(api.generate, "max_new_tokens", args, kwargs, 200), space.max_seconds)

    for fn in (api.generate, api.chat):
        gr.api(gpu_lease(fn, lease), api_name=fn.__name__, concurrency_id="generate",
               concurrency_limit=space.concurrency)
    gr.api(gpu_lease(api.score, lambda *a, **k: space.max_seconds), api_name="score", concurrency_id="generate",
           concurrency_limit=space.concurrency)
    gr.api(api.presets, api_name="presets", queue=False)
    gr.api(api.models, api_name="models", queue=False)


__all__ = ["Space", "build_demo", "layout", "handlers", "views", "links"]
