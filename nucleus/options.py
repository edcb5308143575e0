"""Choice lists and environment-backed flags, defined once for the Space (app.py) and the CLI.

Nothing heavy is imported here (no torch, no transformers), so `python app.py --help` answers
at once. argparse checks the choices of a flag typed on the command line, not of a default read
from the environment; `check_environment` does that, naming the variable.
"""
from __future__ import annotations

import argparse
import os

QUANTIZE_CHOICES = ("auto", "int4", "int8", "none")
ENGINE_CHOICES = ("auto", "vllm", "sglang", "llama.cpp", "transformers", "openai")
STATIC_CACHE_CHOICES = ("auto", "on", "off")
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16")
LOGPROBS_MODES = ("raw", "processed")

# flag dest -> (environment variable, choices, default when unset)
ENV_FLAGS = {
    "quantize": ("NUCLEUS_QUANTIZE", QUANTIZE_CHOICES, "auto"),
    "backend_engine": ("NUCLEUS_BACKEND_ENGINE", ENGINE_CHOICES, "auto"),
}


class OptionError(ValueError):
    """An environment variable holds a value that is not one of its choices."""


def env_choice(name: str, choices: tuple[str, ...], default: str) -> str:
    """The variable's value (trimmed, lower case; set but empty = the default), checked."""
    value = os.environ.get(name, "").strip().lower() or default
    if value not in choices:
        raise OptionError(f"{name}={value!r} (from the environment): must be one of {', '.join(choices)}")
    return value


def static_cache_mode() -> str:
    """NUCLEUS_STATIC_CACHE: auto (a static KV cache and CUDA graphs on a CUDA GPU with unquantised
    weights), on, or off. See nucleus/local.py."""
    return env_choice("NUCLEUS_STATIC_CACHE", STATIC_CACHE_CHOICES, "auto")


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """The flags that choose and shape the model, shared by app.py and `python -m nucleus`."""
    p.add_argument("--model", help="Hub id or local folder (default: NUCLEUS_MODEL, then the Hub, then the "
                                   "bundled nano); with --backend, which of the engine's models to use")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps (default: auto)")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                   help="weights' dtype (default: auto = bfloat16 on GPU and for big models on CPU, else float32)")
    p.add_argument("--quantize", default=os.environ.get("NUCLEUS_QUANTIZE", "").strip().lower() or "auto",
                   choices=QUANTIZE_CHOICES,
                   help="int4 or int8 weights for fast CPU decoding (default: NUCLEUS_QUANTIZE or auto = on CPU "
                        "for models of >= 500M parameters, the faster of the two here); none switches it off")
    p.add_argument("--backend", default=os.environ.get("NUCLEUS_BACKEND") or None,
                   help="URL of an OpenAI-compatible engine (vLLM, SGLang, llama.cpp's server, transformers serve) "
                        "that generates instead of a local model, e.g. http://127.0.0.1:8000/v1 "
                        "(default: NUCLEUS_BACKEND)")
    p.add_argument("--backend-engine", default=os.environ.get("NUCLEUS_BACKEND_ENGINE", "").strip().lower() or "auto",
                   choices=ENGINE_CHOICES,
                   help="which engine --backend is, for the settings only some engines take (default: "
                        "NUCLEUS_BACKEND_ENGINE or auto, from the engine's /v1/models)")


def check_environment(p: argparse.ArgumentParser) -> None:
    """parser.error for an environment variable with a value outside its choices."""
    try:
        for name, choices, default in ENV_FLAGS.values():
            env_choice(name, choices, default)
        static_cache_mode()
    except OptionError as e:
        p.error(str(e))


def ignored_local_flags(args: argparse.Namespace) -> list[str]:
    """The flags that only shape a local model, set alongside --backend (the engine serves the
    model as it was started; --model picks among the models it serves)."""
    return [f"--{name} {getattr(args, name)}" for name in ("device", "dtype", "quantize")
            if getattr(args, name, "auto") not in ("auto", None)]
