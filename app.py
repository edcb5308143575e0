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
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Serve the Nucleus playground.")
    p.add_argument("--model", help="Hub id or local folder (default: NUCLEUS_MODEL, then the Hub, then the bundled "
                                   "nano). A model named here or in NUCLEUS_MODEL that fails to load stops start-up; "
                                   "the automatically chosen Hub model falls back to the bundled nano")
    p.add_argument("--host", default=None, help="address to bind (default: GRADIO_SERVER_NAME or 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default: GRADIO_SERVER_PORT or 7860)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default: auto)")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16 (default: auto)")
    p.add_argument("--quantize", default=os.environ.get("NUCLEUS_QUANTIZE", "auto"), choices=["auto", "int8", "none"],
                   help="int8 weights for fast CPU decoding (default: NUCLEUS_QUANTIZE or auto = on CPU for "
                        "models of >= 500M parameters); none switches it off")
    p.add_argument("--max-seconds", type=float, default=float(os.environ.get("NUCLEUS_MAX_SECONDS", 60)),
                   help="time limit of one request in seconds, prefill included (default: NUCLEUS_MAX_SECONDS "
                        "or 60); a run that reaches it ends with the finish reason 'time limit'")
    args = p.parse_args(argv)
    if not args.max_seconds > 0:
        p.error(f"--max-seconds must be > 0, got {args.max_seconds:g}")
    return args


if __name__ == "__main__":
    ARGS = parse_args()

import collections  # noqa: E402
import contextlib  # noqa: E402
import logging  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import gradio as gr  # noqa: E402

import nucleus  # noqa: E402
from nucleus import loading  # noqa: E402
from nucleus.settings import (BOUNDS, MAX_SEED, MAX_STOP_STRINGS, SamplingSettings,  # noqa: E402
                              SettingsError, format_stop_text, parse_stop_text)
from nucleus.tokenview import check_logprobs, openai_logprobs  # noqa: E402

log = logging.getLogger("nucleus.space")

# ---- limits -----------------------------------------------------------------------------------
CONCURRENCY = 1            # generations at once per replica: on CPU a second one only halves both
QUEUE_SIZE = 16            # requests waiting beyond that are turned away with a "queue full" message
MAX_PROMPT_CHARS = 16_000  # longer prompts are refused; a prompt longer than the context is cut, with a note
MAX_SECONDS = 60.0         # default time limit per request (--max-seconds / NUCLEUS_MAX_SECONDS)
API_UPDATE_SECONDS = 0.5   # /generate sends progress this often (and notices a dropped client)
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


# ---- the page -----------------------------------------------------------------------------------
def build_demo(catalog: nucleus.ModelCatalog, chosen_by: str = "", fallback: str = "",
               max_seconds: float = MAX_SECONDS) -> gr.Blocks:
    presets = nucleus.load_presets()
    first = presets.get(DEFAULT_PRESET) or next(iter(presets.values()))
    initial_label = catalog.labels[0]
    # session -> cancel flags of its runs: queued ones (armed by the click, claimed in order when
    # they start) and the running one. Stop sets them all; the run itself writes the final status.
    armed: dict[str, collections.deque[threading.Event]] = collections.defaultdict(collections.deque)
    running: dict[str, threading.Event] = {}

    def model_info(label: str) -> str:
        lm = catalog.get(label)
        return f"**Model:** {lm.describe()}" + (f" · chosen by {chosen_by}" if label == initial_label and chosen_by else "")

    def slider(name, label, step, value, hi=None):
        kind, lo, top, lo_incl, help_ = BOUNDS[name]
        return gr.Slider(lo if lo_incl else lo + step, top if hi is None else hi, value=value, step=step,
                         label=label, info=help_, precision=0 if kind is int else None)

    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        notice = gr.Markdown(notice_for(catalog, initial_label, fallback), elem_id="notice")
        if os.environ.get("SPACE_ID"):
            gr.DuplicateButton(value="Duplicate this Space to run it privately")
        with gr.Row():
            with gr.Column(scale=3):
                preset = gr.Dropdown([(p.title, p.name) for p in presets.values()], value=first.name,
                                     label="Preset", elem_id="preset")
                preset_info = gr.Markdown(first.description)
                prompt = gr.Textbox(first.prompt, lines=6, max_lines=20, label="Prompt", elem_id="prompt")
                with gr.Row():
                    run_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
                    clear_btn = gr.Button("Clear", elem_id="clear")
                output = gr.Textbox(lines=14, max_lines=40, label="Prompt + continuation", interactive=False,
                                    elem_id="output", buttons=["copy"])
                status = gr.Markdown("", elem_id="status")
                last_seed = gr.State(None)
                reuse_btn = gr.Button("↻ Reuse this seed", size="sm", elem_id="reuse-seed")
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
                    # A Textbox, not a Number: a Number renders an empty value as 0 and sends 0 from then on.
                    seed = gr.Textbox("", label="Seed", placeholder="random", max_lines=1, elem_id="seed",
                                      info=f"a whole number from 0 to {MAX_SEED}; empty = a new random seed each run")
        gr.Examples([[p.prompt] for p in presets.values()], inputs=[prompt], label="Example prompts")
        settings_inputs = [temperature, top_p, top_k, min_p, rep, ngram, max_new, stop_text, seed]

        # -- events --
        def choose_preset(name):
            p = presets[name]
            t = p.settings
            return (p.description, p.prompt, t.temperature, t.top_p, t.top_k, t.min_p, t.repetition_penalty,
                    t.no_repeat_ngram_size, t.max_new_tokens, format_stop_text(t.stop))

        preset.change(choose_preset, preset, [preset_info, prompt] + settings_inputs[:-1],
                      api_visibility="private")

        def arm(request: gr.Request):
            """Runs at the click, before the run is queued: a Stop from now on reaches this run."""
            armed[request.session_hash if request else "local"].append(threading.Event())

        def run(label, text, temperature, top_p, top_k, min_p, rep, ngram, max_new, stop_text, seed,
                request: gr.Request):
            session = request.session_hash if request else "local"
            queue = armed.get(session)
            cancel = queue.popleft() if queue else threading.Event()
            if queue is not None and not queue:
                armed.pop(session, None)
            settings = _settings_from_ui(temperature, top_p, top_k, min_p, rep, ngram, max_new, stop_text, seed)
            text = _check_prompt(text)
            try:
                lm = catalog.get(label)
            except nucleus.ModelLoadError as e:
                raise _refuse(str(e)) from None
            if cancel.is_set():   # Stop was pressed while this run waited in the queue
                yield gr.skip(), "Stopped before it started.", gr.skip()
                return
            running[session] = cancel
            try:
                for update in nucleus.stream(lm, text, settings, cancel, max_seconds):
                    yield shown_prompt(text, update) + update.text, _status(update), update.seed
            except SettingsError as e:
                raise _refuse(str(e)) from None
            finally:
                if running.get(session) is cancel:
                    del running[session]

        run_event = run_btn.click(arm, None, None, queue=False, api_visibility="private").then(
            _gpu_lease(run, lambda *a, **k: lease_seconds(a[8] if len(a) > 8 else None, max_seconds)),
            [model, prompt] + settings_inputs, [output, status, last_seed],
            api_visibility="private", concurrency_id="generate", concurrency_limit=CONCURRENCY)

        def stop(request: gr.Request):
            """Set the flags; the run ends within one token and writes the final status itself, so
            Stop and the last streamed update can never race for the status line."""
            session = request.session_hash if request else "local"
            for flag in (*armed.get(session, ()), running.get(session)):
                if flag is not None:
                    flag.set()

        stop_btn.click(stop, None, None, api_visibility="private", queue=False)
        clear_btn.click(lambda: ("", "", ""), None, [prompt, output, status], api_visibility="private",
                        queue=False)
        reuse_btn.click(lambda v: "" if v is None else str(v), last_seed, seed, api_visibility="private",
                        queue=False)

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
            sent, update = 0.0, None
            try:
                record = max(k, 10) if k else 0
                with contextlib.closing(nucleus.stream(lm, text, settings, max_time=max_seconds,
                                                       record=record)) as updates:
                    for update in updates:
                        if update.done or time.monotonic() - sent >= API_UPDATE_SECONDS:
                            sent = time.monotonic()
                            yield {"text": update.text, "seed": update.seed, "tokens": update.tokens,
                                   "tokens_per_second": round(update.tokens_per_second, 2),
                                   "finish_reason": update.finish_reason, "warning": update.warning,
                                   "prompt_start": update.prompt_start, "model": lm.name,
                                   "logprobs": openai_logprobs(update.records, k) if k and update.done else None}
            except SettingsError as e:
                raise _refuse(str(e)) from None
            finally:   # a dropped client closes this generator: closing the stream stopped the run
                if update is not None:
                    log.info("api /generate: %s, %d tokens, %.1f tokens/s, %s", lm.name, update.tokens,
                             update.tokens_per_second, update.finish_reason or "cancelled (client gone)")

        def list_presets() -> list[dict]:
            """Every preset: name, title, description, prompt and its settings."""
            return [p.to_dict() for p in presets.values()]

        def list_models() -> list[str]:
            """The model labels accepted by generate's `model` argument."""
            return catalog.labels

        gr.api(_gpu_lease(generate, lambda *a, **k: lease_seconds(k.get("max_new_tokens", 200), max_seconds)),
               api_name="generate", concurrency_id="generate", concurrency_limit=CONCURRENCY)
        gr.api(list_presets, api_name="presets", queue=False)
        gr.api(list_models, api_name="models", queue=False)
    return demo


# ---- entry point --------------------------------------------------------------------------------
def open_catalog(args) -> tuple[nucleus.ModelCatalog, str, str]:
    """(catalog with its first model loaded, why that model, fallback note). A model the user named
    that fails to load is fatal; the automatically chosen Hub model falls back to the bundled one."""
    source, why = nucleus.resolve_model(args.model)
    try:
        catalog = nucleus.ModelCatalog(source, args.device, args.dtype, quantize=args.quantize)
        catalog.get(catalog.labels[0])   # load now: fail at start-up, not on the first visitor
        return catalog, why, ""
    except nucleus.ModelLoadError as e:
        if why in ("--model flag", "NUCLEUS_MODEL") or not (loading.BUNDLED_MODEL / "config.json").is_file():
            raise
        fallback = f"The Hub model {source} could not be loaded, so the bundled model is served instead: {e}"
        log.warning(fallback)
        catalog = nucleus.ModelCatalog(str(loading.BUNDLED_MODEL), args.device, args.dtype, quantize=args.quantize,
                                       probe_hub=False)
        catalog.get(catalog.labels[0])
        return catalog, "fallback (the Hub model failed to load)", fallback


def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("nucleus").setLevel(logging.INFO)   # ours: one line per model load and API request
    try:
        catalog, why, fallback = open_catalog(args)
    except nucleus.ModelLoadError as e:
        sys.exit(f"error: {e}")
    lm = catalog.get(catalog.labels[0])
    log.info("serving %s, chosen by %s: %s; time limit %gs per request", lm.source, why, lm.describe(),
             args.max_seconds)
    demo = build_demo(catalog, why, fallback, args.max_seconds)
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=CONCURRENCY)
    demo.launch(server_name=args.host, server_port=args.port, theme=gr.themes.Soft())


if __name__ == "__main__":
    main(ARGS)
