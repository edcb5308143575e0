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
import threading

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home from a playground

import gradio as gr  # noqa: E402

import nucleus  # noqa: E402
from nucleus.settings import (BOUNDS, MAX_SEED, MAX_STOP_STRINGS, SamplingSettings,  # noqa: E402
                              SettingsError, format_stop_text, parse_stop_text)

# ---- limits -----------------------------------------------------------------------------------
CONCURRENCY = 1            # generations at once per replica: on CPU a second one only halves both
QUEUE_SIZE = 16            # requests waiting beyond that are turned away with a "queue full" message
MAX_PROMPT_CHARS = 16_000  # longer prompts are refused; token overflow is cut with a warning
ZERO_GPU_SECONDS = 60      # GPU lease per request on a ZeroGPU Space
DEFAULT_PRESET = "recipe"

TITLE = "Nucleus playground"
INTRO = ("Nucleus is a small base language model that continues your text. It writes textbook-style "
         "lessons, recipes and stories; it is weak at questions and code. Pick a preset or write a "
         "prompt, then press **Generate**.")


# ---- ZeroGPU: a real decorator on a ZeroGPU Space, a no-op everywhere else ---------------------
def _gpu_lease(fn):
    if os.environ.get("SPACES_ZERO_GPU"):
        try:
            import spaces
            return spaces.GPU(duration=ZERO_GPU_SECONDS)(fn)
        except ImportError:
            pass
    return fn


# ---- callbacks that need no model ----------------------------------------------------------------
def _settings_from_ui(temperature, top_p, top_k, min_p, repetition_penalty, no_repeat_ngram_size,
                      max_new_tokens, stop_text, seed) -> SamplingSettings:
    try:
        return SamplingSettings(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                                repetition_penalty=repetition_penalty,
                                no_repeat_ngram_size=no_repeat_ngram_size, max_new_tokens=max_new_tokens,
                                stop=parse_stop_text(stop_text), seed=None if seed in (None, "") else seed)
    except SettingsError as e:
        raise gr.Error(str(e)) from None


def _check_prompt(prompt) -> str:
    if not isinstance(prompt, str):
        raise gr.Error(f"prompt: expected text, got {type(prompt).__name__}")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise gr.Error(f"prompt: {len(prompt):,} characters; at most {MAX_PROMPT_CHARS:,} are accepted")
    return prompt


def _max_new_limit(lm: nucleus.LoadedModel) -> int:
    """The slider's top: what the model's context leaves after at least one prompt token."""
    return min(BOUNDS["max_new_tokens"][2], lm.context_length - 1)


FINISH_REASONS = {"eos": "end of text", "length": "max new tokens reached", "stop": "stop string found",
                  "cancelled": "stopped"}


def _status(update: nucleus.Update) -> str:
    line = (f"Seed **{update.seed}** · {update.tokens} tokens · {update.tokens_per_second:.1f} tokens/s"
            + (f" · {FINISH_REASONS[update.finish_reason]}" if update.done else " · generating…"))
    return line + (f"\n\n⚠️ {update.warning}" if update.warning else "")


# ---- the page -----------------------------------------------------------------------------------
def build_demo(catalog: nucleus.ModelCatalog, chosen_by: str = "") -> gr.Blocks:
    presets = nucleus.load_presets()
    first = presets.get(DEFAULT_PRESET) or next(iter(presets.values()))
    initial_label = catalog.labels[0]
    cancels: dict[str, threading.Event] = {}   # session -> cancel flag of its running generation
    latest: dict[str, nucleus.Update] = {}     # session -> last update shown, for the Stop message

    def model_info(label: str) -> str:
        lm = catalog.get(label)
        return f"**Model:** {lm.describe()}" + (f" · chosen by {chosen_by}" if label == initial_label and chosen_by else "")

    def slider(name, label, step, value, hi=None):
        kind, lo, top, _, help_ = BOUNDS[name]
        return gr.Slider(lo, top if hi is None else hi, value=value, step=step, label=label, info=help_,
                         precision=0 if kind is int else None)

    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
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
                    seed = gr.Number(None, precision=0, minimum=0, maximum=MAX_SEED, label="Seed",
                                     info="empty = a new random seed each run", elem_id="seed")
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

        @_gpu_lease
        def run(label, text, temperature, top_p, top_k, min_p, rep, ngram, max_new, stop_text, seed,
                request: gr.Request):
            settings = _settings_from_ui(temperature, top_p, top_k, min_p, rep, ngram, max_new, stop_text, seed)
            text = _check_prompt(text)
            try:
                lm = catalog.get(label)
            except nucleus.ModelLoadError as e:
                raise gr.Error(str(e)) from None
            session = request.session_hash if request else "local"
            cancel = cancels[session] = threading.Event()
            try:
                for update in nucleus.stream(lm, text, settings, cancel):
                    latest[session] = update
                    yield text + update.text, _status(update), update.seed
            except SettingsError as e:
                raise gr.Error(str(e)) from None
            finally:
                cancels.pop(session, None)
                latest.pop(session, None)

        run_event = run_btn.click(run, [model, prompt] + settings_inputs, [output, status, last_seed],
                                  api_visibility="private", concurrency_id="generate",
                                  concurrency_limit=CONCURRENCY)

        def stop(request: gr.Request):
            session = request.session_hash if request else "local"
            flag, update = cancels.get(session), latest.get(session)
            if flag:
                flag.set()   # the stopping criterion ends generate() within one token
            if update is None:
                return gr.skip()
            return _status(update).replace("generating…", "stopped")

        # `cancels` also drops a request still waiting in the queue.
        stop_btn.click(stop, None, status, cancels=[run_event], api_visibility="private", queue=False)
        clear_btn.click(lambda: ("", "", ""), None, [prompt, output, status], api_visibility="private",
                        queue=False)
        reuse_btn.click(lambda v: v, last_seed, seed, api_visibility="private", queue=False)

        def switch_model(label, wanted):
            try:
                limit = _max_new_limit(catalog.get(label))
                return model_info(label), gr.Slider(maximum=limit, value=min(wanted, limit))
            except nucleus.ModelLoadError as e:
                raise gr.Error(str(e)) from None

        model.change(switch_model, [model, max_new], [info, max_new], api_visibility="private",
                     concurrency_id="generate")

        # -- API (gradio_client): typed endpoints validated by the same SamplingSettings --
        def generate(prompt: str, temperature: float = 0.7, top_p: float = 0.9, top_k: int = 0,
                     min_p: float = 0.0, repetition_penalty: float = 1.5, no_repeat_ngram_size: int = 0,
                     max_new_tokens: int = 200, stop: list[str] | None = None, seed: int | None = None,
                     model: str | None = None) -> dict:
            """Continue `prompt`. Returns {text, seed, tokens, tokens_per_second, finish_reason, warning, model}."""
            try:
                settings = SamplingSettings(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                                            repetition_penalty=repetition_penalty,
                                            no_repeat_ngram_size=no_repeat_ngram_size,
                                            max_new_tokens=max_new_tokens, stop=stop or (), seed=seed)
                lm = catalog.get(model or initial_label)
                result = nucleus.generate(lm, _check_prompt(prompt), settings)
            except (SettingsError, nucleus.ModelLoadError) as e:
                raise gr.Error(str(e)) from None
            return {"text": result.text, "seed": result.seed, "tokens": result.tokens,
                    "tokens_per_second": round(result.tokens_per_second, 2),
                    "finish_reason": result.finish_reason, "warning": result.warning, "model": lm.name}

        def list_presets() -> list[dict]:
            """Every preset: name, title, description, prompt and its settings."""
            return [p.to_dict() for p in presets.values()]

        def list_models() -> list[str]:
            """The model labels accepted by generate's `model` argument."""
            return catalog.labels

        gr.api(_gpu_lease(generate), api_name="generate", concurrency_id="generate",
               concurrency_limit=CONCURRENCY)
        gr.api(list_presets, api_name="presets", queue=False)
        gr.api(list_models, api_name="models", queue=False)
    return demo


# ---- entry point --------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Serve the Nucleus playground.")
    p.add_argument("--model", help="Hub id or local folder (default: NUCLEUS_MODEL, then the Hub, then the bundled nano)")
    p.add_argument("--host", default=None, help="address to bind (default: GRADIO_SERVER_NAME or 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default: GRADIO_SERVER_PORT or 7860)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--quantize", default=os.environ.get("NUCLEUS_QUANTIZE", "auto"), choices=["auto", "int8", "none"],
                   help="int8 weights for fast CPU decoding (default: NUCLEUS_QUANTIZE or auto = on CPU for "
                        "models of >= 500M parameters); none switches it off")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        source, why = nucleus.resolve_model(args.model)
        catalog = nucleus.ModelCatalog(source, args.device, args.dtype, quantize=args.quantize)
        catalog.get(catalog.labels[0])   # load now: fail at start-up, not on the first visitor
    except nucleus.ModelLoadError as e:
        sys.exit(f"error: {e}")
    demo = build_demo(catalog, why)
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=CONCURRENCY)
    demo.launch(server_name=args.host, server_port=args.port, theme=gr.themes.Soft())


if __name__ == "__main__":
    main()
