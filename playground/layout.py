"""The page's widgets, by where they sit: the Write tab, the Instruct tab, the Compare tab, the Share &
code tab and the side panel of settings. `build` makes them inside the open gr.Blocks and returns them by name;
playground/__init__.py wires them to the handlers. The elem_ids are what the browser tests use."""
from __future__ import annotations

import os
from types import SimpleNamespace

import gradio as gr

from nucleus.settings import BOUNDS, MAX_SEED, MAX_STOP_STRINGS, format_stop_text

from . import handlers, instruct, scoring, views
from .session import Space

CSS = "#output textarea { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }"


def slider(space: Space, name: str, label: str, step: float, value, hi=None) -> gr.Slider:
    """A setting's slider, its range the validated one (BOUNDS). No per-slider reset button: it would
    restore the page-load value, not the preset's ("↺ Preset settings" restores them all)."""
    kind, lo, top, lo_incl, help_ = BOUNDS[name]
    low, high = (lo if lo_incl else lo + step), (top if hi is None else hi)
    space.slider_range.setdefault(name, (low, high))
    return gr.Slider(low, high, value=value, step=step, label=label, info=help_, precision=0 if kind is int else None,
                     buttons=[])


def build(space: Space) -> SimpleNamespace:
    ui = SimpleNamespace()
    first = space.presets.get("recipe") or next(iter(space.presets.values()))
    gr.Markdown(f"# {views.TITLE}\n{views.INTRO}")
    ui.notice = gr.Markdown(handlers.notice(space, space.initial_label), elem_id="notice")
    ui.link_note = gr.Markdown("", elem_id="link-note")
    if os.environ.get("SPACE_ID"):
        gr.DuplicateButton(value="Duplicate this Space to run it privately")
    ui.clock = gr.Number(visible=False)   # carries the browser's click time (js=NOW) to arm and stop
    ui.history = gr.State([])        # Undo: earlier (prompt, text) of this visitor, newest last
    ui.last_run = gr.State(None)     # the last finished run: prompt, text, settings, seed, model, records
    ui.token_map = gr.State([])      # token view entry -> record index
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Tabs():
                with gr.Tab("Write", id="write"):
                    _write_tab(ui, space, first)
                with gr.Tab("Instruct", id="instruct"):
                    _instruct_tab(ui, space)
                with gr.Tab("Score", id="score"):
                    _score_tab(ui)
                with gr.Tab("Compare", id="compare"):
                    _compare_tab(ui, space)
                with gr.Tab("Share & code", id="share"):
                    _share_tab(ui)
        with gr.Column(scale=2):
            _side_panel(ui, space, first)
    ui.settings_inputs = [ui.temperature, ui.top_p, ui.top_k, ui.min_p, ui.rep, ui.ngram, ui.max_new, ui.stop_text,
                          ui.seed]
    ui.sliders = dict(zip(("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "no_repeat_ngram_size",
                           "max_new_tokens"), ui.settings_inputs[:7]))
    return ui


def _write_tab(ui, space: Space, first) -> None:
    with gr.Row():
        ui.preset = gr.Dropdown([(p.title, p.name) for p in space.presets.values() if p.kind == "completion"],
                                value=first.name,
                                label="Preset", elem_id="preset", scale=3)
        ui.preset_reset = gr.Button("↺ Preset settings", size="sm", elem_id="preset-reset", scale=1)
    ui.preset_info = gr.Markdown(first.description)
    ui.prompt = gr.Textbox(first.prompt, lines=5, max_lines=20, label="Prompt", elem_id="prompt")
    ui.meter = gr.Markdown("", elem_id="meter")
    with gr.Row():   # min_width: three to a line on a phone, so the status stays in view
        ui.run_btn = gr.Button("Generate", variant="primary", elem_id="generate", min_width=96)
        ui.stop_btn = gr.Button("Stop", variant="stop", elem_id="stop", min_width=96)
        ui.continue_btn = gr.Button("Continue", elem_id="continue", min_width=96)
        ui.regen_btn = gr.Button("Regenerate", elem_id="regenerate", min_width=96)
        ui.undo_btn = gr.Button("Undo", elem_id="undo", min_width=96)
        ui.clear_btn = gr.Button("Clear", elem_id="clear", min_width=96)
    ui.status = gr.Markdown("", elem_id="status")
    ui.view = gr.Radio(list(views.VIEWS), value=views.VIEWS[0], label="Show the result as", elem_id="view")
    ui.tokens = gr.HighlightedText([], label="Prompt + continuation (colour: the model's probability for each "
                                   "token; select one to inspect it)", color_map=views.BUCKET_COLORS,
                                   show_legend=True, combine_adjacent=False, elem_id="tokens", interactive=False)
    ui.output = gr.Textbox(lines=12, max_lines=40, label="Prompt + continuation", interactive=False,
                           elem_id="output", buttons=["copy"], visible="hidden")
    ui.rendered = gr.Markdown("", elem_id="rendered", visible="hidden")
    with gr.Accordion("Token inspector", open=True, elem_id="inspector"):
        ui.inspect_md = gr.Markdown("Run, then select a token above.", elem_id="inspect-summary")
        ui.inspect_table = gr.Dataframe(headers=views.INSPECTOR_HEADERS, datatype=["str"] + ["number"] * 4 + ["str"],
                                        interactive=False, elem_id="inspect-table")


def _instruct_tab(ui, space: Space) -> None:
    chat = [p for p in space.presets.values() if p.kind == "chat"]
    ui.chat_note = gr.Markdown(instruct.note(space, space.initial_label), elem_id="chat-note")
    ui.chat_preset = gr.Dropdown([(p.title, p.name) for p in chat], value=chat[0].name if chat else None,
                                 label="Preset", elem_id="chat-preset")
    ui.chat_preset_info = gr.Markdown(chat[0].description if chat else "")
    ui.system = gr.Textbox(chat[0].system if chat else "", lines=2, max_lines=6, label="System prompt",
                           placeholder="optional", elem_id="system")
    ui.chatbot = gr.Chatbot([], label="Conversation", elem_id="chatbot", height=320, buttons=["copy"])
    ui.message = gr.Textbox(chat[0].prompt if chat else "", lines=2, max_lines=10, label="Message",
                            elem_id="message")
    with gr.Row():
        ui.send_btn = gr.Button("Send", variant="primary", elem_id="send", min_width=96)
        ui.chat_stop_btn = gr.Button("Stop", variant="stop", elem_id="chat-stop", min_width=96)
        ui.chat_clear_btn = gr.Button("New conversation", elem_id="chat-clear", min_width=96)
    ui.chat_status = gr.Markdown("", elem_id="chat-status")
    ui.chat_tokens = gr.HighlightedText([], label="The reply's tokens (colour: the model's probability; select one "
                                        "to inspect it)", color_map=views.BUCKET_COLORS, show_legend=True,
                                        combine_adjacent=False, elem_id="chat-tokens", interactive=False)
    ui.chat_inspect_md = gr.Markdown("Send, then select a token of the reply.", elem_id="chat-inspect-summary")
    ui.chat_inspect_table = gr.Dataframe(headers=views.INSPECTOR_HEADERS, datatype=["str"] + ["number"] * 4 + ["str"],
                                         interactive=False, elem_id="chat-inspect-table")
    with gr.Accordion("The template applied: what the model read", open=False, elem_id="chat-template-box"):
        ui.chat_template = gr.Textbox("", lines=6, max_lines=20, show_label=False, interactive=False,
                                      elem_id="chat-template", buttons=["copy"])
    ui.conversation = gr.State([])     # OpenAI-shaped messages of this visitor's conversation
    ui.chat_last = gr.State(None)      # the last finished reply: records and settings, for the inspector
    ui.chat_map = gr.State([])         # token entry -> record index


def _score_tab(ui) -> None:
    gr.Markdown("Any text, scored by the model token by token: how likely it found each token and where it "
                "ranked it. Select a token for the logit lens: what each layer would have predicted there.")
    ui.score_text = gr.Textbox(scoring.SAMPLE, lines=6, max_lines=20, label="Text to score", elem_id="score-text")
    ui.score_btn = gr.Button("Score", variant="primary", elem_id="score-run")
    ui.score_summary = gr.Markdown("", elem_id="score-summary")
    ui.score_tokens = gr.HighlightedText([], label="The text, coloured by the rank the model gave each token",
                                         color_map=scoring.RANK_COLORS, show_legend=True, combine_adjacent=False,
                                         elem_id="score-tokens", interactive=False)
    ui.score_surprising = gr.Dataframe(headers=["token", "model %", "rank", "the model expected"],
                                       datatype=["str", "number", "number", "str"], interactive=False,
                                       label="The most surprising tokens", elem_id="score-surprising")
    ui.lens_md = gr.Markdown("", elem_id="lens-summary")
    ui.lens_table = gr.Dataframe(headers=scoring.LENS_HEADERS, datatype=["number", "number", "number", "str"],
                                 interactive=False, elem_id="lens-table")
    ui.scored = gr.State(None)         # the last scored text of this visitor (for the lens)


def _compare_tab(ui, space: Space) -> None:
    gr.Markdown("The same prompt and seed under two settings or two models, one after the other. The other "
                "settings are those of the side panel.")
    labels = space.catalog.labels
    with gr.Row():   # min_width: side by side on a desktop, one above the other on a phone
        with gr.Column(min_width=320):
            ui.model_a = gr.Dropdown(labels, value=space.initial_label, label="Model A", elem_id="model-a")
            ui.temp_a = slider(space, "temperature", "Temperature A", 0.05, 0.3)
        with gr.Column(min_width=320):
            ui.model_b = gr.Dropdown(labels, value=space.initial_label, label="Model B", elem_id="model-b")
            ui.temp_b = slider(space, "temperature", "Temperature B", 0.05, 1.0)
    ui.compare_btn = gr.Button("Compare", variant="primary", elem_id="compare-run")
    ui.compare_status = gr.Markdown("", elem_id="compare-status")
    with gr.Row():
        ui.out_a = gr.Textbox(lines=12, label="A", interactive=False, elem_id="out-a", min_width=320)
        ui.out_b = gr.Textbox(lines=12, label="B", interactive=False, elem_id="out-b", min_width=320)


def _share_tab(ui) -> None:
    gr.Markdown("A share link opens this prompt, preset, model, every setting and the seed.")
    ui.share_btn = gr.Button("Make a share link", elem_id="share-make")
    ui.link_query = gr.Textbox(visible=False)
    # a short label: on a phone a long one ran under the copy button
    ui.share_link = gr.Textbox(label="Link", buttons=["copy"], interactive=False, elem_id="share-link")
    ui.code_note = gr.Markdown("Code that repeats the last run (filled in after each run):")
    ui.code_py = gr.Code("", language="python", label="Python with transformers", elem_id="code-python",
                         interactive=False)
    ui.code_client = gr.Code("", language="python", label="Python with gradio_client", elem_id="code-client",
                             interactive=False)
    ui.code_cli = gr.Code("", language="shell", label="Command line", elem_id="code-cli", interactive=False)
    ui.code_curl = gr.Code("", language="shell", label="curl", elem_id="code-curl", interactive=False)


def _side_panel(ui, space: Space, first) -> None:
    ui.model = gr.Dropdown(space.catalog.labels, value=space.initial_label, label="Model", elem_id="model")
    ui.info = gr.Markdown(handlers.model_info(space, space.initial_label), elem_id="model-info")
    ui.range_note = gr.Markdown("", elem_id="range-note")
    s = first.settings
    ui.temperature = slider(space, "temperature", "Temperature", 0.05, s.temperature)
    ui.top_p = slider(space, "top_p", "Top-p", 0.01, s.top_p)
    ui.max_new = slider(space, "max_new_tokens", "Max new tokens", 1, s.max_new_tokens,
                        hi=handlers.max_new_limit(space.catalog.get(space.initial_label)))
    ui.rep = slider(space, "repetition_penalty", "Repetition penalty", 0.05, s.repetition_penalty)
    with gr.Accordion("Advanced", open=False):
        ui.top_k = slider(space, "top_k", "Top-k", 1, s.top_k)
        ui.min_p = slider(space, "min_p", "Min-p", 0.01, s.min_p)
        ui.ngram = slider(space, "no_repeat_ngram_size", "No-repeat n-gram size", 1, s.no_repeat_ngram_size)
        ui.stop_text = gr.Textbox(format_stop_text(s.stop), lines=2, label="Stop strings",
                                  info=f"one per line, at most {MAX_STOP_STRINGS}; type \\n for a newline")
        with gr.Row():
            # A Textbox, not a Number: a Number renders an empty value as 0 and sends 0 from then on.
            ui.seed = gr.Textbox("", label="Seed", placeholder="random", max_lines=1, elem_id="seed",
                                 info=f"0 to {MAX_SEED}, in digits; empty = a new random seed each run", scale=3)
            ui.reuse_btn = gr.Button("↻ Reuse the last seed", size="sm", elem_id="reuse-seed", visible=False, scale=1)
