"""Reproducing a run elsewhere: share-link query strings and the code that repeats a run.

A run is (prompt, SamplingSettings with a concrete seed, model). `share_query` writes it as URL
query parameters and `read_query` reads them back, validating every value with the same
SamplingSettings rules as the UI and API: a bad value is dropped and named, never applied.
`snippets` gives the same run as Python with transformers, Python with gradio_client, the CLI and
curl. The transformers snippet spells out every setting in a GenerationConfig (and clears the
checkpoint's own generation defaults), so it gives the page's text on the same weights and dtype.
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlencode

from .settings import BOUNDS, SamplingSettings, SettingsError, parse_seed

NUMERIC = tuple(BOUNDS)     # temperature, top_p, ..., seed: one query parameter each


# ---- share links ---------------------------------------------------------------------------------
def share_query(prompt: str, settings: SamplingSettings, model: str | None = None,
                preset: str | None = None) -> str:
    """'?prompt=...&temperature=...': every setting, the seed, the model and the preset."""
    params: list[tuple[str, str]] = [("prompt", prompt)]
    if preset:
        params.append(("preset", preset))
    if model:
        params.append(("model", model))
    for name in NUMERIC:
        value = getattr(settings, name)
        if value is not None:
            params.append((name, f"{value:g}" if isinstance(value, float) else str(value)))
    params += [("stop", s) for s in settings.stop]
    return "?" + urlencode(params)


@dataclass
class SharedRun:
    """What a share link asked for, after validation. Fields absent from the link stay None."""
    prompt: str | None = None
    preset: str | None = None
    model: str | None = None
    values: dict = field(default_factory=dict)    # setting name -> validated value
    ignored: list[str] = field(default_factory=list)   # "name=value (why)" for each refused value


def read_query(query: dict[str, list[str]] | str, presets: set[str], models: set[str],
               max_prompt_chars: int) -> SharedRun:
    """Validate a link's parameters one by one; unknown keys are ignored silently (trackers add them)."""
    q = parse_qs(query.lstrip("?"), keep_blank_values=True) if isinstance(query, str) else query
    run = SharedRun()

    def refuse(key, value, why):
        shown = value if len(value) <= 40 else value[:40] + "…"
        run.ignored.append(f"{key}={shown!r} ({why})")

    if "prompt" in q:
        text = q["prompt"][-1]
        if len(text) > max_prompt_chars:
            refuse("prompt", text, f"longer than {max_prompt_chars:,} characters")
        else:
            run.prompt = text
    if "preset" in q:
        name = q["preset"][-1]
        run.preset = name if name in presets else refuse("preset", name, "no such preset")
    if "model" in q:
        label = q["model"][-1]
        run.model = label if label in models else refuse("model", label, "not a model of this Space")
    for name in NUMERIC:
        if name not in q:
            continue
        text = q[name][-1]
        try:
            if name == "seed":                              # the seed box's own rule: digits only
                if (seed := parse_seed(text)) is not None:
                    run.values[name] = seed
                continue
            number = float(text)
            kind = BOUNDS[name][0]
            value = int(number) if kind is int and number.is_integer() else number
            SamplingSettings(**{name: value})             # the same rules as the UI and the API
            run.values[name] = value
        except ValueError as e:                            # SettingsError is a ValueError
            refuse(name, text, str(e) if isinstance(e, SettingsError) else "not a number")
    if "stop" in q:
        try:
            run.values["stop"] = SamplingSettings(stop=q["stop"]).stop
        except SettingsError as e:
            refuse("stop", "|".join(q["stop"]), str(e))
    return run


# ---- code that repeats a run ---------------------------------------------------------------------
def generation_kwargs(settings: SamplingSettings) -> dict:
    """The GenerationConfig fields of a run, spelled out (what nucleus passes to generate)."""
    cfg = settings.to_generation_config(eos_token_id=2).to_diff_dict()
    cfg.pop("transformers_version", None)
    return cfg


WEIGHTS_NOTE = {
    "int8": "# The page used int8 weights (nucleus/quantize.py); these bf16/fp32 weights can give other text.\n",
    "int4": "# The page used int4 weights (nucleus/int4.py); these bf16/fp32 weights can give other text.\n",
    "engine": "# The page's text came from an inference engine; its kernels and sampler can give other text.\n",
}


def shareable_source(source: str) -> str:
    """The model as a visitor can name it: a Hub id as is, a folder of this repository relative to
    it (models/nucleus-nano), any other folder by its name only: the server's own paths say nothing
    to a visitor and should not be shown."""
    from pathlib import Path

    from .loading import REPO_ROOT, is_hub_id

    if is_hub_id(source) or not Path(source).is_absolute():
        return source
    path = Path(source).resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else path.name


def snippets(prompt: str, settings: SamplingSettings, model_source: str, model_label: str, space: str,
             dtype: str = "float32", weights: str = "none") -> dict[str, str]:
    """{"python", "gradio_client", "cli", "curl"}: the run as code. `space` is the Space's URL or id;
    `model_source` the Hub id or folder the weights came from, `model_label` its name on the Space;
    `weights` what the page ran: "none", "int8", "int4" or "engine" (nucleus.Backend.weights).
    `settings.max_new_tokens` should be what the run used (the page lowers it to fit the context)."""
    assert settings.seed is not None, "a run to repeat has a concrete seed"
    kwargs = generation_kwargs(settings)
    py_kwargs = ",\n    ".join(f"{k}={v!r}" for k, v in kwargs.items())
    stops = list(settings.stop)
    note = WEIGHTS_NOTE.get(weights, "")
    model_source = shareable_source(model_source)
    python = f'''{note}import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

model_id = {model_source!r}
tokenizer = AutoTokenizer.from_pretrained(model_id)
model = AutoModelForCausalLM.from_pretrained(model_id, dtype=torch.{dtype})
model.generation_config = GenerationConfig()   # the checkpoint's defaults must not fill in anything

prompt = {prompt!r}
inputs = tokenizer(prompt, return_tensors="pt", split_special_tokens=True)
config = GenerationConfig(
    {py_kwargs},
)
torch.manual_seed({settings.seed})
with torch.inference_mode():
    out = model.generate(**inputs, generation_config=config, tokenizer=tokenizer)
text = tokenizer.decode(out[0], skip_special_tokens=True)[len(prompt):]
for stop in {stops!r}:   # the page ends the text before a stop string
    text = text.split(stop)[0]
print(prompt + text)
'''
    api_args = {**settings.to_dict(), "stop": stops, "model": model_label}
    gradio_client = f'''from gradio_client import Client

client = Client({space!r})
result = client.predict({prompt!r}, {", ".join(f"{k}={v!r}" for k, v in api_args.items())},
                        api_name="/generate")
print({prompt!r} + result["text"])
'''
    flags = " ".join(f"--{name.replace('_', '-')} {getattr(settings, name)}" for name in NUMERIC)
    flags += "".join(f" --stop {shlex.quote(s)}" for s in stops)
    cli = f"python -m nucleus generate --model {shlex.quote(model_source)} \\\n  --prompt {shlex.quote(prompt)} \\\n  {flags}\n"
    body = json.dumps({"data": [prompt, *api_args.values(), 0]})      # positional, in /generate's order
    base = space.rstrip("/") if space.startswith("http") else f"https://{space.replace('/', '-').lower()}.hf.space"
    curl = (f"EVENT=$(curl -s -X POST {base}/gradio_api/call/generate -H 'Content-Type: application/json' \\\n"
            f"  -d {shlex.quote(body)} | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"event_id\"])')\n"
            f"curl -sN {base}/gradio_api/call/generate/$EVENT\n")
    return {"python": python, "gradio_client": gradio_client, "cli": cli, "curl": curl}
