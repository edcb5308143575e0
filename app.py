"""The Nucleus Space: a completion playground for Nucleus in the browser.

    python app.py                      # serves the model chosen by nucleus.resolve_model
    python app.py --model PATH_OR_ID --port 7860

Gradio wiring only: widgets, events and limits. Everything else (which model, validation,
sampling, stopping) lives in `nucleus/`, shared with the CLI and the API.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home from a playground


# ---- command line (parsed before the heavy imports, so --help answers at once) -------------------
STATIC_CACHE_CHOICES = ("auto", "on", "off")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Serve the Nucleus playground.")
    p.add_argument("--model", help="Hub id or local folder (default: NUCLEUS_MODEL, then the Hub, then the bundled "
                                   "nano). A model named here or in NUCLEUS_MODEL that fails to load stops start-up; "
                                   "the automatically chosen Hub model falls back to the bundled nano")
    p.add_argument("--host", default=None, help="address to bind (default: GRADIO_SERVER_NAME or 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default: GRADIO_SERVER_PORT or 7860)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps (default: auto)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16"],
                   help="weights' dtype (default: auto = bfloat16 on GPU and for big models on CPU, else float32)")
    p.add_argument("--quantize", default=os.environ.get("NUCLEUS_QUANTIZE", "auto"), choices=["auto", "int4", "int8", "none"],
                   help="int4 or int8 weights for fast CPU decoding (default: NUCLEUS_QUANTIZE or auto = on CPU "
                        "for models of >= 500M parameters, the faster of the two here); none switches it off")
    p.add_argument("--max-seconds", type=float, default=float(os.environ.get("NUCLEUS_MAX_SECONDS", 60)),
                   help="time limit of one request in seconds, prefill included (default: NUCLEUS_MAX_SECONDS "
                        "or 60); a run that reaches it ends with the finish reason 'time limit'")
    p.add_argument("--backend", default=os.environ.get("NUCLEUS_BACKEND"),
                   help="URL of an OpenAI-compatible engine (vLLM, SGLang, llama.cpp's server, transformers serve) "
                        "that generates instead of a local model, e.g. http://127.0.0.1:8000/v1 "
                        "(default: NUCLEUS_BACKEND)")
    p.add_argument("--backend-engine", default=os.environ.get("NUCLEUS_BACKEND_ENGINE", "auto"),
                   choices=["auto", "vllm", "sglang", "llama.cpp", "transformers", "openai"],
                   help="which engine --backend is, for the settings only some engines take (default: auto, "
                        "from the engine's /v1/models)")
    p.add_argument("--concurrency", type=int, default=None,
                   help="generations at once (default: 1 locally, 8 with --backend: the engine batches them)")
    args = p.parse_args(argv)
    # argparse checks the choices of a typed flag, not of a default read from the environment
    for env, name, choices in (("NUCLEUS_QUANTIZE", "quantize", ["auto", "int4", "int8", "none"]),
                               ("NUCLEUS_BACKEND_ENGINE", "backend_engine",
                                ["auto", "vllm", "sglang", "llama.cpp", "transformers", "openai"])):
        if getattr(args, name) not in choices:
            p.error(f"{env}={getattr(args, name)!r} (from the environment): must be one of {', '.join(choices)}")
    static = os.environ.get("NUCLEUS_STATIC_CACHE", "").strip().lower() or "auto"
    if static not in STATIC_CACHE_CHOICES:      # nucleus.generation's, not imported yet (fast --help)
        p.error(f"NUCLEUS_STATIC_CACHE={static!r} (from the environment): must be one of "
                f"{', '.join(STATIC_CACHE_CHOICES)}")
    if args.port is not None and not 1 <= args.port <= 65535:
        p.error(f"--port must be 1 to 65535, got {args.port}")
    if args.concurrency is not None and args.concurrency < 1:
        p.error(f"--concurrency must be at least 1, got {args.concurrency}")
    if not args.max_seconds > 0:
        p.error(f"--max-seconds must be > 0, got {args.max_seconds:g}")
    return args


if __name__ == "__main__":
    ARGS = parse_args()

import collections  # noqa: E402
import contextlib  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import gradio as gr  # noqa: E402

import nucleus  # noqa: E402
from nucleus import loading  # noqa: E402
from nucleus.settings import (BOUNDS, MAX_SEED, MAX_STOP_STRINGS, SamplingSettings,  # noqa: E402
                              SettingsError, format_stop_text, parse_stop_text)
from nucleus.remote import RemoteCatalog, RemoteError, connect, ignored_local_flags  # noqa: E402
from nucleus.reproduce import read_query, share_query, snippets  # noqa: E402
from nucleus.tokenizer import encode_prompt  # noqa: E402
from nucleus.tokenview import check_logprobs, openai_logprobs  # noqa: E402

log = logging.getLogger("nucleus.space")

# ---- limits -----------------------------------------------------------------------------------
CONCURRENCY = 1            # generations at once per replica: on CPU a second one only halves both
QUEUE_SIZE = 16            # requests waiting beyond that are turned away with a "queue full" message
REMOTE_CONCURRENCY = 8     # with a remote engine (--backend): it batches requests, so more may run at once
MAX_PROMPT_CHARS = 16_000  # longer prompts are refused; a prompt longer than the context is cut, with a note
MAX_SECONDS = 60.0         # default time limit per request (--max-seconds / NUCLEUS_MAX_SECONDS)
API_UPDATE_SECONDS = 0.5   # /generate sends progress this often (and notices a dropped client)
PAGE_UPDATE_SECONDS = 0.1  # the page redraws streamed text at most this often: a fast model would
                           # otherwise re-render the whole text per token and swamp the browser
ZERO_GPU_TOKENS_PER_SECOND = 15   # assumed speed when sizing a ZeroGPU lease (eager 1.13B on a GPU slice)
DEFAULT_PRESET = "recipe"

TITLE = "Nucleus playground"
INTRO = ("Nucleus is a small base language model that continues your text. It was trained to write "
         "textbook-style lessons, recipes and stories, and is weak at questions and code. Pick a preset or "
         "write a prompt, then press **Generate**.")
DEMO_NOTICE = ("**You are trying Nucleus-Nano**, the 20M-parameter demo model bundled so this Space runs offline: "
               "it was trained for under an hour on a CPU, so its text is not meaningful. To serve the real "
               "Nucleus-1B, start the Space where the Hugging Face Hub is reachable, or run "
               "`python app.py --model NucleusOrg/Nucleus-1B-alpha-1`.")


# ---- ZeroGPU: a real decorator on a ZeroGPU Space, a no-op everywhere else ---------------------
def lease_seconds(max_new_tokens, max_seconds: float) -> int:
    """GPU seconds to ask for: the request's tokens at a conservative speed, never above its time limit."""
    tokens = max_new_tokens if isinstance(max_new_tokens, (int, float)) else BOUNDS["max_new_tokens"][2]
    return int(min(max_seconds, 5 + tokens / ZERO_GPU_TOKENS_PER_SECOND)) + 5


def _gpu_lease(fn, duration=None):
    """spaces.GPU(duration=...) on a ZeroGPU Space; `duration` may be a callable of the request's
    arguments (ZeroGPU calls it with the same arguments as `fn`)."""
    if os.environ.get("SPACES_ZERO_GPU"):
        try:
            import spaces
            return spaces.GPU(duration=duration or MAX_SECONDS)(fn)
        except ImportError:
            pass
    return fn


# ---- callbacks that need no model ----------------------------------------------------------------
def _refuse(message: str) -> gr.Error:
    """A user's mistake: shown on the page, one line in the console, no traceback."""
    log.info("refused: %s", message)
    return gr.Error(message, print_exception=False)


def parse_seed(value) -> int | None:
    """The seed box: empty = a new random seed each run, else a whole number in range."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text.isdigit():
            raise SettingsError("seed", f"expected a whole number from 0 to {MAX_SEED} or nothing (random), "
                                        f"got {text!r}")
        return int(text)
    return value   # numbers are checked by SamplingSettings


def _settings_from_ui(temperature, top_p, top_k, min_p, repetition_penalty, no_repeat_ngram_size,
                      max_new_tokens, stop_text, seed) -> SamplingSettings:
    try:
        if not isinstance(stop_text, (str, type(None))):
            raise SettingsError("stop", f"expected text, got {type(stop_text).__name__}")
        return SamplingSettings(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                                repetition_penalty=repetition_penalty,
                                no_repeat_ngram_size=no_repeat_ngram_size, max_new_tokens=max_new_tokens,
                                stop=parse_stop_text(stop_text), seed=parse_seed(seed))
    except SettingsError as e:
        raise _refuse(str(e)) from None


def _check_prompt(prompt) -> str:
    if not isinstance(prompt, str):
        raise _refuse(f"prompt: expected text, got {type(prompt).__name__}")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise _refuse(f"prompt: {len(prompt):,} characters; at most {MAX_PROMPT_CHARS:,} are accepted")
    return prompt


def _max_new_limit(lm: nucleus.LoadedModel) -> int:
    """The slider's top: what the model's context leaves after at least one prompt token."""
    return min(BOUNDS["max_new_tokens"][2], lm.context_length - 1)


FINISH_REASONS = {"eos": "end of text", "length": "max new tokens reached", "stop": "stop string found",
                  "cancelled": "stopped", "time": "time limit reached"}


def _status(update: nucleus.Update) -> str:
    line = (f"Seed **{update.seed}** · {update.tokens} tokens · {update.tokens_per_second:.1f} tokens/s"
            + (f" · {FINISH_REASONS[update.finish_reason]}" if update.done else " · generating…"))
    return line + (f"\n\n⚠️ {update.warning}" if update.warning else "")


def shown_prompt(prompt: str, update: nucleus.Update) -> str:
    """The part of the prompt the model saw: all of it, or its end after […] when it was cut."""
    return prompt if update.prompt_start == 0 else "[…]" + prompt[update.prompt_start:]


def notice_for(catalog: nucleus.ModelCatalog, label: str, fallback: str = "") -> str:
    """The sentence at the top of the page: why a fallback happened, and what the demo model is."""
    parts = [fallback] if fallback else []
    if catalog.choices.get(label) == str(loading.BUNDLED_MODEL):
        parts.append(DEMO_NOTICE)
    return "\n\n".join(parts)


# ---- what the page draws from a run (data in, component values out) -----------------------------
BUCKETS = (("p ≥ 0.5", 0.5), ("0.2 – 0.5", 0.2), ("0.05 – 0.2", 0.05), ("< 0.05", 0.0))
BUCKET_COLORS = {"p ≥ 0.5": "#bbf7d0", "0.2 – 0.5": "#fef08a", "0.05 – 0.2": "#fed7aa", "< 0.05": "#fecaca"}
VIEWS = ("Tokens", "Plain text", "Markdown")
# A click's time on the browser's clock (ms), for ordering Stop against Generate (a js function's
# return value replaces the event's input).
NOW = "() => Date.now()"


def bucket(p: float) -> str:
    return next(name for name, low in BUCKETS if p >= low)


def token_entries(prompt_shown: str, records) -> tuple[list[tuple[str, str | None]], list[int]]:
    """HighlightedText value: the prompt unlabelled, then each token by the model's probability for
    it; and which record each entry shows (entries with no text are left out)."""
    entries, index = [(prompt_shown, None)], [-1]
    for i, r in enumerate(records):
        if r.text:   # an engine may not give a token's logprob (NaN): then it is shown unlabelled
            entries.append((r.text, bucket(math.exp(r.raw_logprob)) if r.raw_logprob == r.raw_logprob else None))
            index.append(i)
    return entries, index


def md_literal(text: str) -> str:
    """Untrusted text for a Markdown component: tags and entities show as typed, never as HTML."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def code_span(text: str) -> str:
    """A Markdown code span that shows `text` literally, whatever backticks it holds."""
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    return f"{fence} {text.replace(chr(10), '⏎')} {fence}"


STAGE_NAMES = {"penalties": "the repetition penalty / no-repeat n-gram", "top-k": "top-k", "top-p": "top-p",
               "min-p": "min-p"}


def inspect_step(record, step: int, settings: dict) -> tuple[str, list[list]]:
    """The inspector for one token: a summary sentence and the candidates table."""
    if record.final != record.final:     # NaN: from a remote engine's logprobs, the model's column only
        p = math.exp(record.raw_logprob) if record.raw_logprob == record.raw_logprob else None
        summary = (f"Token {step + 1}, {code_span(record.text)}"
                   + (f", had probability **{p:.3g}** as the inference engine reports it." if p is not None else ".")
                   + " The engine gives its top alternatives, not what each sampling setting did, so only the "
                     "model column is filled.")
        rows = [[c.token, round(100 * c.raw, 3) if c.raw == c.raw else None, None, None, None,
                 "✔ chosen" if c.token_id == record.token_id else ""] for c in record.candidates]
        return summary, rows
    chosen = f"Token {step + 1}, {code_span(record.text)}, "
    if record.greedy:
        chosen += "was the most likely token after the penalties (temperature 0 = greedy)."
    else:
        chosen += f"was drawn with probability **{record.final:.3g}** from {record.kept:,} tokens."
    cuts = [f"{STAGE_NAMES.get(stage, stage)} removed {n:,}" for stage, n in record.removed.items()]
    if cuts:
        chosen += " " + "; ".join(cuts).capitalize() + " of the 32,000-token vocabulary."
    t = settings.get("temperature")
    chosen += (f"\n\nSettings: temperature {t:g}, top-p {settings.get('top_p'):g}, top-k {settings.get('top_k')}, "
               f"min-p {settings.get('min_p'):g}, repetition penalty {settings.get('repetition_penalty'):g}.")
    rows = [[c.token, round(100 * c.raw, 3), round(100 * c.penalized, 3), round(100 * c.tempered, 3),
             round(100 * c.final, 3), ("✔ chosen" if c.token_id == record.token_id else "")
             + (f"removed by {c.removed_by}" if c.removed_by else "")] for c in record.candidates]
    return chosen, rows


INSPECTOR_HEADERS = ["token", "model %", "after penalties %", "after temperature %", "drawn from %", "note"]


def prompt_meter(n_tokens: int, context: int, max_new: int) -> str:
    """One line: the prompt's tokens against the context and what max new tokens leaves."""
    line = f"Prompt: **{n_tokens:,}** tokens of the model's {context:,}-token context"
    if n_tokens >= context:
        return line + " · longer than the context: its oldest tokens will be cut"
    room = context - n_tokens
    if max_new > room:
        return line + f" · leaves {room:,} new tokens, so max new tokens ({max_new:,}) will be lowered to {room:,}"
    return line + f" · leaves {room:,} new tokens (max new tokens: {max_new:,})"


# ---- the page -----------------------------------------------------------------------------------
CSS = "#output textarea { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }"


def build_demo(catalog: nucleus.ModelCatalog, chosen_by: str = "", fallback: str = "",
               max_seconds: float = MAX_SECONDS, concurrency: int = CONCURRENCY) -> gr.Blocks:
    presets = nucleus.load_presets()
    first = presets.get(DEFAULT_PRESET) or next(iter(presets.values()))
    initial_label = catalog.labels[0]
    # session -> cancel flags of its runs: queued ones (armed by the click, claimed in order when
    # they start) and the running one. Stop sets them all; the run itself writes the final status.
    armed: dict[str, collections.deque[threading.Event]] = collections.defaultdict(collections.deque)
    running: dict[str, threading.Event] = {}
    stopped_at: dict[str, float] = {}     # session -> browser clock (ms) of its last Stop click
    slider_range: dict[str, tuple[float, float]] = {}   # setting -> (min, max) of its slider on this page
    load = {"runs": 0, "seconds": 10.0}   # runs armed but not finished (all visitors), mean run time

    def model_info(label: str) -> str:
        lm = catalog.get(label)
        return f"**Model:** {lm.describe()}" + (f" · chosen by {chosen_by}" if label == initial_label and chosen_by else "")

    def slider(name, label, step, value, hi=None):
        # No per-slider reset button: it would restore the page-load value, not the preset's
        # ("↺ Preset settings" restores them all).
        kind, lo, top, lo_incl, help_ = BOUNDS[name]
        low, high = (lo if lo_incl else lo + step), (top if hi is None else hi)
        slider_range.setdefault(name, (low, high))
        return gr.Slider(low, high, value=value, step=step, label=label, info=help_,
                         precision=0 if kind is int else None, buttons=[])

    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        notice = gr.Markdown(notice_for(catalog, initial_label, fallback), elem_id="notice")
        link_note = gr.Markdown("", elem_id="link-note")
        if os.environ.get("SPACE_ID"):
            gr.DuplicateButton(value="Duplicate this Space to run it privately")
        clock = gr.Number(visible=False)   # carries the browser's click time (js=NOW) to arm and stop
        history = gr.State([])        # Undo: earlier (prompt, text, status) of this visitor, newest last
        last_run = gr.State(None)     # the last finished run: prompt, text, settings, seed, model, records
        token_map = gr.State([])      # token view entry -> record index
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Tabs():
                    with gr.Tab("Write", id="write"):
                        with gr.Row():
                            preset = gr.Dropdown([(p.title, p.name) for p in presets.values()], value=first.name,
                                                 label="Preset", elem_id="preset", scale=3)
                            preset_reset = gr.Button("↺ Preset settings", size="sm", elem_id="preset-reset",
                                                     scale=1)
                        preset_info = gr.Markdown(first.description)
                        prompt = gr.Textbox(first.prompt, lines=5, max_lines=20, label="Prompt", elem_id="prompt")
                        meter = gr.Markdown("", elem_id="meter")
                        with gr.Row():   # min_width: three to a line on a phone, so the status stays in view
                            run_btn = gr.Button("Generate", variant="primary", elem_id="generate", min_width=96)
                            stop_btn = gr.Button("Stop", variant="stop", elem_id="stop", min_width=96)
                            continue_btn = gr.Button("Continue", elem_id="continue", min_width=96)
                            regen_btn = gr.Button("Regenerate", elem_id="regenerate", min_width=96)
                            undo_btn = gr.Button("Undo", elem_id="undo", min_width=96)
                            clear_btn = gr.Button("Clear", elem_id="clear", min_width=96)
                        status = gr.Markdown("", elem_id="status")
                        view = gr.Radio(list(VIEWS), value=VIEWS[0], label="Show the result as", elem_id="view")
                        tokens = gr.HighlightedText([], label="Prompt + continuation (colour: the model's "
                                                    "probability for each token; select one to inspect it)",
                                                    color_map=BUCKET_COLORS, show_legend=True, combine_adjacent=False,
                                                    elem_id="tokens", interactive=False)
                        output = gr.Textbox(lines=12, max_lines=40, label="Prompt + continuation", interactive=False,
                                            elem_id="output", buttons=["copy"], visible="hidden")
                        rendered = gr.Markdown("", elem_id="rendered", visible="hidden")
                        with gr.Accordion("Token inspector", open=True, elem_id="inspector"):
                            inspect_md = gr.Markdown("Run, then select a token above.", elem_id="inspect-summary")
                            inspect_table = gr.Dataframe(headers=INSPECTOR_HEADERS, datatype=["str"] + ["number"] * 4
                                                         + ["str"], interactive=False, elem_id="inspect-table")
                    with gr.Tab("Compare", id="compare"):
                        gr.Markdown("The same prompt and seed under two settings or two models, one after the "
                                    "other. The other settings are those of the side panel.")
                        with gr.Row():
                            with gr.Column():
                                model_a = gr.Dropdown(catalog.labels, value=initial_label, label="Model A",
                                                      elem_id="model-a")
                                temp_a = slider("temperature", "Temperature A", 0.05, 0.3)
                            with gr.Column():
                                model_b = gr.Dropdown(catalog.labels, value=initial_label, label="Model B",
                                                      elem_id="model-b")
                                temp_b = slider("temperature", "Temperature B", 0.05, 1.0)
                        compare_btn = gr.Button("Compare", variant="primary", elem_id="compare-run")
                        compare_status = gr.Markdown("", elem_id="compare-status")
                        with gr.Row():
                            out_a = gr.Textbox(lines=12, label="A", interactive=False, elem_id="out-a")
                            out_b = gr.Textbox(lines=12, label="B", interactive=False, elem_id="out-b")
                    with gr.Tab("Share & code", id="share"):
                        share_btn = gr.Button("Make a share link", elem_id="share-make")
                        link_query = gr.Textbox(visible=False)
                        share_link = gr.Textbox(label="Link: opens this prompt, preset, model, every setting and "
                                                "the seed", buttons=["copy"], interactive=False, elem_id="share-link")
                        gr.Markdown("Code that repeats the last run (filled in after each run):")
                        code_py = gr.Code("", language="python", label="Python with transformers",
                                          elem_id="code-python", interactive=False)
                        code_client = gr.Code("", language="python", label="Python with gradio_client",
                                              elem_id="code-client", interactive=False)
                        code_cli = gr.Code("", language="shell", label="Command line", elem_id="code-cli",
                                           interactive=False)
                        code_curl = gr.Code("", language="shell", label="curl", elem_id="code-curl",
                                            interactive=False)
            with gr.Column(scale=2):
                model = gr.Dropdown(catalog.labels, value=initial_label, label="Model", elem_id="model")
                info = gr.Markdown(model_info(initial_label), elem_id="model-info")
                s = first.settings
                temperature = slider("temperature", "Temperature", 0.05, s.temperature)
                top_p = slider("top_p", "Top-p", 0.01, s.top_p)
                max_new = slider("max_new_tokens", "Max new tokens", 1, s.max_new_tokens,
                                 hi=_max_new_limit(catalog.get(initial_label)))
                rep = slider("repetition_penalty", "Repetition penalty", 0.05, s.repetition_penalty)
                with gr.Accordion("Advanced", open=False):
                    top_k = slider("top_k", "Top-k", 1, s.top_k)
                    min_p = slider("min_p", "Min-p", 0.01, s.min_p)
                    ngram = slider("no_repeat_ngram_size", "No-repeat n-gram size", 1, s.no_repeat_ngram_size)
                    stop_text = gr.Textbox(format_stop_text(s.stop), lines=2, label="Stop strings",
                                           info=f"one per line, at most {MAX_STOP_STRINGS}; type \\n for a newline")
                    with gr.Row():
                        # A Textbox, not a Number: a Number renders an empty value as 0 and sends 0 from then on.
                        seed = gr.Textbox("", label="Seed", placeholder="random", max_lines=1, elem_id="seed",
                                          info=f"0 to {MAX_SEED}; empty = a new random seed each run", scale=3)
                        reuse_btn = gr.Button("↻ Reuse the last seed", size="sm", elem_id="reuse-seed",
                                              visible=False, scale=1)
        settings_inputs = [temperature, top_p, top_k, min_p, rep, ngram, max_new, stop_text, seed]

        # -- presets --
        def preset_settings(name):
            t = presets[name].settings
            return (t.temperature, t.top_p, t.top_k, t.min_p, t.repetition_penalty, t.no_repeat_ngram_size,
                    t.max_new_tokens, format_stop_text(t.stop))

        def choose_preset(name):
            p = presets[name]
            return (p.description, p.prompt, *preset_settings(name))

        # .input, not .change: a share link sets the preset without replacing the link's own values
        preset.input(choose_preset, preset, [preset_info, prompt] + settings_inputs[:-1], api_visibility="private")
        preset_reset.click(preset_settings, preset, settings_inputs[:-1], api_visibility="private", queue=False)

        # -- the prompt meter --
        def measure(label, text, wanted):
            try:
                lm = catalog.get(label)
            except nucleus.ModelLoadError:
                return ""
            if not isinstance(text, str) or len(text) > MAX_PROMPT_CHARS:
                return f"Prompt: over {MAX_PROMPT_CHARS:,} characters, which is more than this Space accepts"
            n = len(encode_prompt(lm.tokenizer, text))
            return prompt_meter(n, lm.context_length, int(wanted) if isinstance(wanted, (int, float)) else 0)

        for trigger in (prompt.change, max_new.change, model.change):
            trigger(measure, [model, prompt, max_new], meter, api_visibility="private", queue=False,
                    trigger_mode="always_last")
        demo.load(measure, [model, prompt, max_new], meter, api_visibility="private", queue=False)

        # -- runs: Generate, Continue, Regenerate; Stop; Undo; Clear --
        def arm(clicked_ms, request: gr.Request):
            """Runs first at the click, before the run is queued: a Stop from now on reaches this run.
            `clicked_ms` is the browser's clock at the click: a Stop clicked after it whose request
            overtook this one (two requests, either may land first) still stops the run.
            A full queue is refused here, with the wait it would have meant."""
            session = request.session_hash if request else "local"
            waiting = load["runs"]
            if waiting >= QUEUE_SIZE * concurrency:
                raise gr.Error(f"The Space is busy: {waiting} runs are ahead of yours, about "
                               f"{waiting * load['seconds'] / 60:.0f} min of work. Try again in a minute, or "
                               "duplicate the Space to have one of your own.", print_exception=False)
            load["runs"] += 1
            flag = threading.Event()
            if isinstance(clicked_ms, (int, float)) and stopped_at.get(session, -math.inf) >= clicked_ms:
                flag.set()
            armed[session].append(flag)

        def claim(session: str) -> threading.Event:
            queue = armed.get(session)
            cancel = queue.popleft() if queue else threading.Event()
            if queue is not None and not queue:
                armed.pop(session, None)
            return cancel

        def snapshot(text, shown, hist):
            """Undo's step: the prompt and result as they were before this change."""
            return [*hist, (text, shown)]

        def run(label, text, temperature, top_p, top_k, min_p, rep, ngram, max_new, stop_text, seed,
                request: gr.Request, fresh_seed: bool = False):
            session = request.session_hash if request else "local"
            cancel, began = claim(session), time.monotonic()
            try:
                try:
                    settings = _settings_from_ui(temperature, top_p, top_k, min_p, rep, ngram, max_new, stop_text,
                                                 None if fresh_seed else seed)
                    text = _check_prompt(text)
                    try:
                        lm = catalog.get(label)
                    except nucleus.ModelLoadError as e:
                        raise _refuse(str(e)) from None
                except gr.Error as e:   # a mistake in the inputs: say so in the status, keep the last result
                    yield gr.skip(), gr.skip(), f"⚠️ {e.message}", gr.skip()
                    return
                if cancel.is_set():   # Stop was pressed while this run waited in the queue
                    yield gr.skip(), gr.skip(), "Stopped before it started.", gr.skip()
                    return
                running[session] = cancel
                local = isinstance(lm, nucleus.LoadedModel)
                # a remote engine's records come from the logprobs it returns; transformers serve returns none
                record = 10 if local or lm.engine != "transformers" else 0
                shown_at = 0.0
                for update in nucleus.stream(lm, text, settings, cancel, max_seconds, record=record):
                    seen = shown_prompt(text, update)
                    if not update.done:
                        if time.monotonic() - shown_at >= PAGE_UPDATE_SECONDS:
                            shown_at = time.monotonic()
                            yield seen + update.text, [(seen, None), (update.text, "generating")], _status(update), gr.skip()
                        continue
                    done = {"prompt": text, "shown_prompt": seen, "text": update.text, "model": label,
                            "remote": None if local else lm.engine,
                            "settings": settings.replace(seed=update.seed,
                                                         max_new_tokens=update.max_new_tokens).to_dict(),
                            "records": update.records, "source": lm.source, "dtype": str(lm.dtype),
                            "quantized": lm.quantization != "none"}
                    yield seen + update.text, token_entries(seen, update.records)[0], _status(update), done
            except (SettingsError, RemoteError) as e:
                raise _refuse(str(e)) from None
            finally:
                if running.get(session) is cancel:
                    del running[session]
                load["runs"] = max(0, load["runs"] - 1)
                load["seconds"] = 0.8 * load["seconds"] + 0.2 * (time.monotonic() - began)

        def regenerate(label, text, temperature, top_p, top_k, min_p, rep, ngram, max_new, stop_text, seed,
                       request: gr.Request):
            """Regenerate: the same prompt and settings with a new random seed, whatever the seed box says."""
            yield from run(label, text, temperature, top_p, top_k, min_p, rep, ngram, max_new, stop_text, seed,
                           request, fresh_seed=True)

        run_inputs = [model, prompt] + settings_inputs
        run_outputs = [output, tokens, status, last_run]
        lease = lambda *a, **k: lease_seconds(a[8] if len(a) > 8 else None, max_seconds)  # noqa: E731
        queued = dict(api_visibility="private", concurrency_id="generate", concurrency_limit=concurrency)

        def after_run(done, request: gr.Request):
            """Once a run ends: the token view, the Markdown view, the code panel, the seed button."""
            if not done:
                return (gr.skip(),) * 9
            entries, index = token_entries(done["shown_prompt"], done["records"])
            st = SamplingSettings.from_dict({**done["settings"], "stop": done["settings"]["stop"]})
            space = os.environ.get("SPACE_ID") or (f"http://{request.headers.get('host', '127.0.0.1:7860')}/"
                                                   if request else "http://127.0.0.1:7860/")
            code = snippets(done["prompt"], st, done["source"], done["model"], space,
                            done["dtype"].removeprefix("torch."), done["quantized"])
            if not done["remote"]:
                hint = "Select a token above to see its candidates."
            elif done["records"]:
                hint = (f"Token probabilities as the inference engine behind this Space ({done['remote']}) reports "
                        "them: select a token above to see its top alternatives.")
            else:
                hint = (f"The inference engine behind this Space ({done['remote']}) returns no token probabilities: "
                        "the token view is plain text.")
            return (entries, index, md_literal(done["shown_prompt"] + done["text"]), code["python"],
                    code["gradio_client"], code["cli"], code["curl"], gr.Button(visible=True), hint)

        after_outputs = [tokens, token_map, rendered, code_py, code_client, code_cli, code_curl, reuse_btn,
                         inspect_md]
        for button, fn in ((run_btn, run), (regen_btn, regenerate)):
            button.click(arm, clock, None, js=NOW, queue=False,
                         api_visibility="private").then(
                snapshot, [prompt, output, history], history, queue=False, api_visibility="private").then(
                _gpu_lease(fn, lease), run_inputs, run_outputs, **queued).then(
                after_run, last_run, after_outputs, api_visibility="private", queue=False)

        def prepare_continue(text, done, hist):
            """Continue: the whole text so far becomes the prompt (before any run: the prompt as it is)."""
            if not done:
                return text, hist
            return done["prompt"] + done["text"], snapshot(text, done["shown_prompt"] + done["text"], hist)

        continue_btn.click(arm, clock, None, js=NOW, queue=False,
                           api_visibility="private").then(
            prepare_continue, [prompt, last_run, history], [prompt, history], queue=False,
            api_visibility="private").then(
            _gpu_lease(run, lease), run_inputs, run_outputs, **queued).then(
            after_run, last_run, after_outputs, api_visibility="private", queue=False)

        def stop(clicked_ms, request: gr.Request):
            """Set the flags; the run ends within one token and writes the final status itself, so
            Stop and the last streamed update can never race for the status line."""
            session = request.session_hash if request else "local"
            if isinstance(clicked_ms, (int, float)):
                stopped_at[session] = clicked_ms
            for flag in (*armed.get(session, ()), running.get(session)):
                if flag is not None:
                    flag.set()

        stop_btn.click(stop, clock, None, js=NOW, api_visibility="private", queue=False)

        def undo(hist):
            """Back one step: the prompt as it was before the last Generate, Continue or Clear."""
            if not hist:
                return gr.skip(), gr.skip(), gr.skip(), "Nothing to undo.", hist, None
            text, shown = hist[-1]
            return text, shown, [(shown, None)] if shown else [], "Undone.", hist[:-1], None

        undo_btn.click(undo, history, [prompt, output, tokens, status, history, last_run], queue=False,
                       api_visibility="private")
        clear_btn.click(lambda text, shown, hist: ("", "", [], "", snapshot(text, shown, hist), None),
                        [prompt, output, history], [prompt, output, tokens, status, history, last_run],
                        api_visibility="private", queue=False)
        reuse_btn.click(lambda done: str(done["settings"]["seed"]) if done else gr.skip(), last_run, seed,
                        api_visibility="private", queue=False)

        # -- result views and the token inspector --
        # "hidden" keeps a view in the page (its text stays readable and copyable), just not shown
        view.change(lambda v: [gr.update(visible=True if v == name else "hidden") for name in VIEWS], view,
                    [tokens, output, rendered],
                    api_visibility="private", queue=False)

        def inspect(done, index, evt: gr.SelectData):
            if not done or evt.index is None or not isinstance(evt.index, int) or evt.index >= len(index):
                return gr.skip(), gr.skip()
            i = index[evt.index]
            if i < 0:
                return "That is your prompt: select a generated token.", []
            return inspect_step(done["records"][i], i, done["settings"])

        tokens.select(inspect, [last_run, token_map], [inspect_md, inspect_table], api_visibility="private",
                      queue=False)

        # -- compare --
        def compare(label_a, t_a, label_b, t_b, text, temperature, top_p, top_k, min_p, rep, ngram, max_new,
                    stop_text, seed, request: gr.Request):
            session = request.session_hash if request else "local"
            cancel, began = claim(session), time.monotonic()
            try:
                base = _settings_from_ui(temperature, top_p, top_k, min_p, rep, ngram, max_new, stop_text, seed)
                base = base.replace(seed=base.seed if base.seed is not None else random.randrange(2**31))
                text = _check_prompt(text)
                columns, done_line = ["", ""], ""
                running[session] = cancel
                for col, (label, t) in enumerate(((label_a, t_a), (label_b, t_b))):
                    try:
                        lm, settings = catalog.get(label), base.replace(temperature=t)
                    except (nucleus.ModelLoadError, SettingsError) as e:
                        raise _refuse(str(e)) from None
                    try:
                        shown_at = 0.0
                        for update in nucleus.stream(lm, text, settings, cancel, max_seconds):
                            columns[col] = shown_prompt(text, update) + update.text
                            line = f"{'AB'[col]}: {label}, temperature {t:g} · " + _status(update)
                            if update.done or time.monotonic() - shown_at >= PAGE_UPDATE_SECONDS:
                                shown_at = time.monotonic()
                                yield columns[0], columns[1], done_line + line
                        done_line = line + "\n\n"    # A's final line stays while B runs
                    except (SettingsError, RemoteError) as e:
                        raise _refuse(str(e)) from None
                    if cancel.is_set():
                        return
            finally:
                if running.get(session) is cancel:
                    del running[session]
                load["runs"] = max(0, load["runs"] - 1)
                load["seconds"] = 0.8 * load["seconds"] + 0.2 * (time.monotonic() - began)

        compare_btn.click(arm, clock, None, js=NOW, queue=False,
                          api_visibility="private").then(
            _gpu_lease(compare, lambda *a, **k: max_seconds * 2), [model_a, temp_a, model_b, temp_b, prompt]
            + settings_inputs, [out_a, out_b, compare_status], **queued)

        # -- share links --
        def make_link(text, preset_name, label, temperature, top_p, top_k, min_p, rep, ngram, max_new, stop_text,
                      seed, done):
            settings = _settings_from_ui(temperature, top_p, top_k, min_p, rep, ngram, max_new, stop_text, seed)
            if settings.seed is None and done:   # the seed the last run drew, so the link repeats it
                settings = settings.replace(seed=done["settings"]["seed"])
            return share_query(text if isinstance(text, str) else "", settings, label, preset_name)

        share_btn.click(make_link, [prompt, preset, model] + settings_inputs + [last_run], link_query,
                        api_visibility="private", queue=False).then(
            None, link_query, share_link, js="(q) => window.location.origin + window.location.pathname + q")

        def restore(request: gr.Request):
            """Fill the page from a share link's query parameters, each validated, over the link's preset
            when it names one; say what was ignored (also a value outside this page's sliders)."""
            query = {k: request.query_params.getlist(k) for k in request.query_params} if request else {}
            outputs = [preset, preset_info, prompt, model] + settings_inputs + [link_note]
            if not any(k in query for k in ("prompt", "preset", "model", "stop", *BOUNDS)):
                return {c: gr.skip() for c in outputs}
            got = read_query(query, set(presets), set(catalog.labels), MAX_PROMPT_CHARS)
            ranges = {**slider_range, "max_new_tokens": (1, _max_new_limit(catalog.get(got.model or initial_label)))}
            for name, value in list(got.values.items()):
                if name in ranges and not ranges[name][0] <= value <= ranges[name][1]:
                    low, high = ranges[name]
                    got.ignored.append(f"{name}={value:g} (outside this page's range, {low:g} to {high:g})")
                    del got.values[name]
            base = presets[got.preset] if got.preset else None
            values = {preset: got.preset or gr.skip(),
                      preset_info: base.description if base else gr.skip(),
                      prompt: got.prompt if got.prompt is not None else (base.prompt if base else gr.skip()),
                      model: got.model or gr.skip(),
                      seed: str(got.values["seed"]) if "seed" in got.values else gr.skip(),
                      link_note: ("⚠️ Ignored from the link: " + "; ".join(md_literal(x) for x in got.ignored))
                      if got.ignored else ""}
            stops = got.values.get("stop", base.settings.stop if base else None)
            values[stop_text] = format_stop_text(stops) if stops is not None else gr.skip()
            for name, comp in zip(("temperature", "top_p", "top_k", "min_p", "repetition_penalty",
                                   "no_repeat_ngram_size", "max_new_tokens"), settings_inputs):
                values[comp] = got.values.get(name, getattr(base.settings, name) if base else gr.skip())
            return values

        demo.load(restore, None, [preset, preset_info, prompt, model] + settings_inputs + [link_note],
                  api_visibility="private", queue=False)

        # -- model choice --
        def switch_model(label, wanted):
            try:
                limit = _max_new_limit(catalog.get(label))
            except nucleus.ModelLoadError as e:
                raise _refuse(str(e)) from None
            return model_info(label), gr.Slider(maximum=limit, value=min(wanted, limit)), notice_for(
                catalog, label, fallback)

        model.change(switch_model, [model, max_new], [info, max_new, notice], api_visibility="private",
                     concurrency_id="generate")

        def forget(request: gr.Request):
            if request:
                armed.pop(request.session_hash, None)

        demo.unload(forget)

        # -- API (gradio_client): typed endpoints validated by the same SamplingSettings --
        def generate(prompt: str, temperature: float = 0.7, top_p: float = 0.9, top_k: int = 0,
                     min_p: float = 0.0, repetition_penalty: float = 1.5, no_repeat_ngram_size: int = 0,
                     max_new_tokens: int = 200, stop: list[str] | None = None, seed: int | None = None,
                     model: str | None = None, logprobs: int = 0) -> dict:
            """Continue `prompt`. Returns {text, seed, tokens, tokens_per_second, finish_reason, warning,
            prompt_start, model, logprobs}; `predict` gives the final result, `submit` also the progress.
            logprobs (0-20): per generated token its log-probability and that many alternatives, in
            the shape of OpenAI's completions API (tokens, token_logprobs, top_logprobs, text_offset).
            A generator underneath: between updates Gradio notices a client that went away, and
            closing this generator stops the run within one token."""
            try:
                settings = SamplingSettings(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                                            repetition_penalty=repetition_penalty,
                                            no_repeat_ngram_size=no_repeat_ngram_size,
                                            max_new_tokens=max_new_tokens, stop=stop or (), seed=seed)
                lm = catalog.get(initial_label if model is None else model)
                text = _check_prompt(prompt)
                k = check_logprobs(logprobs)
            except (SettingsError, nucleus.ModelLoadError) as e:
                raise _refuse(str(e)) from None
            sent, update, failed = 0.0, None, None
            try:
                local = isinstance(lm, nucleus.LoadedModel)   # a remote engine returns its own logprobs
                record = (max(k, 10) if local else k) if k else 0
                with contextlib.closing(nucleus.stream(lm, text, settings, max_time=max_seconds,
                                                       record=record)) as updates:
                    for update in updates:
                        if update.done or time.monotonic() - sent >= API_UPDATE_SECONDS:
                            sent = time.monotonic()
                            yield {"text": update.text, "seed": update.seed, "tokens": update.tokens,
                                   "tokens_per_second": round(update.tokens_per_second, 2),
                                   "finish_reason": update.finish_reason, "warning": update.warning,
                                   "prompt_start": update.prompt_start, "model": lm.name,
                                   "logprobs": (openai_logprobs(update.records, k) if local else update.logprobs)
                                   if k and update.done else None}
            except (SettingsError, RemoteError) as e:
                failed = e
                raise _refuse(str(e)) from None
            finally:   # a dropped client closes this generator: closing the stream stopped the run
                if update is not None and failed is None:     # a failure was logged by _refuse
                    log.info("api /generate: %s, %d tokens, %.1f tokens/s, %s", lm.name, update.tokens,
                             update.tokens_per_second, update.finish_reason or "cancelled (client gone)")

        def list_presets() -> list[dict]:
            """Every preset: name, title, description, prompt and its settings."""
            return [p.to_dict() for p in presets.values()]

        def list_models() -> list[str]:
            """The model labels accepted by generate's `model` argument."""
            return catalog.labels

        gr.api(_gpu_lease(generate, lambda *a, **k: lease_seconds(k.get("max_new_tokens", 200), max_seconds)),
               api_name="generate", concurrency_id="generate", concurrency_limit=concurrency)
        gr.api(list_presets, api_name="presets", queue=False)
        gr.api(list_models, api_name="models", queue=False)
    return demo


# ---- entry point --------------------------------------------------------------------------------
def open_catalog(args) -> tuple[nucleus.ModelCatalog, str, str]:
    """(catalog with its first model loaded, why that model, fallback note). A model the user named
    that fails to load is fatal; the automatically chosen Hub model falls back to the bundled one."""
    if args.backend:
        why = "NUCLEUS_BACKEND" if os.environ.get("NUCLEUS_BACKEND") == args.backend else "--backend flag"
        for flag in ignored_local_flags(args):
            log.warning("%s is ignored with --backend: the engine serves the model as it was started", flag)
        return RemoteCatalog(connect(args.backend, args.backend_engine, model=args.model)), why, ""
    source, why = nucleus.resolve_model(args.model)
    try:
        catalog = nucleus.ModelCatalog(source, args.device, args.dtype, quantize=args.quantize)
        catalog.get(catalog.labels[0])   # load now: fail at start-up, not on the first visitor
        return catalog, why, ""
    except nucleus.ModelLoadError as e:
        if why != "Hugging Face Hub" or not (loading.BUNDLED_MODEL / "config.json").is_file():
            raise   # only the automatically chosen Hub model falls back
        fallback = f"The Hub model {source} could not be loaded, so the bundled model is served instead: {e}"
        log.warning(fallback)
        catalog = nucleus.ModelCatalog(str(loading.BUNDLED_MODEL), args.device, args.dtype, quantize=args.quantize,
                                       probe_hub=False)
        catalog.get(catalog.labels[0])
        return catalog, "fallback (the Hub model failed to load)", fallback


def port_free(host: str | None, port: int) -> bool:
    import socket
    with socket.socket() as s:
        try:
            s.bind((host or "127.0.0.1", port))
            return True
        except OSError:
            return False


def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.port is not None and not port_free(args.host, args.port):   # say so before a long model load
        sys.exit(f"error: port {args.port} is in use; choose another with --port")
    logging.getLogger("nucleus").setLevel(logging.INFO)   # ours: one line per model load and API request
    try:
        catalog, why, fallback = open_catalog(args)
    except nucleus.ModelLoadError as e:
        sys.exit(f"error: {e}")
    lm = catalog.get(catalog.labels[0])
    concurrency = args.concurrency or (REMOTE_CONCURRENCY if args.backend else CONCURRENCY)
    log.info("serving %s, chosen by %s: %s; time limit %gs per request; %d at once", lm.source, why, lm.describe(),
             args.max_seconds, concurrency)
    demo = build_demo(catalog, why, fallback, args.max_seconds, concurrency)
    demo.queue(max_size=QUEUE_SIZE * concurrency, default_concurrency_limit=concurrency)
    demo.launch(server_name=args.host, server_port=args.port, theme=gr.themes.Soft(), css=CSS)


if __name__ == "__main__":
    main(ARGS)
