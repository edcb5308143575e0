"""The Nucleus command line.

    python -m nucleus generate --preset recipe --temperature 0.7 --seed 42
    python -m nucleus generate --prompt "### Lesson: Bees\n### Introduction\n" --max-new-tokens 100
    python -m nucleus presets
    python -m nucleus info [--model PATH_OR_HUB_ID]

Text streams to stdout; the seed, token count and speed go to stderr so stdout stays clean.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .generation import static_cache_mode
from .settings import BOUNDS, MAX_STOP_STRINGS, SamplingSettings, SettingsError, allowed, unescape


def _number(name: str):
    """argparse type for a numeric setting whose error names the setting and its range."""
    kind = BOUNDS[name][0]

    def parse(text: str):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number; allowed: {allowed(name)}") from None
        return int(value) if kind is int and value.is_integer() else value
    return parse


QUANTIZE_CHOICES = ["auto", "int4", "int8", "none"]
ENGINE_CHOICES = ["auto", "vllm", "sglang", "llama.cpp", "transformers", "openai"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m nucleus", description="Generate with Nucleus models.")
    sub = p.add_subparsers(dest="command", required=True)

    def model_flags(sp):
        sp.add_argument("--model", help="Hub id or local folder (default: NUCLEUS_MODEL, Hub, bundled nano)")
        sp.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default: auto)")
        sp.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16 (default: auto)")
        sp.add_argument("--backend", default=os.environ.get("NUCLEUS_BACKEND"),
                        help="URL of an OpenAI-compatible engine that generates instead of a local model "
                             "(default: NUCLEUS_BACKEND), e.g. http://127.0.0.1:8000/v1")
        sp.add_argument("--backend-engine", default=os.environ.get("NUCLEUS_BACKEND_ENGINE", "auto"),
                        choices=ENGINE_CHOICES)
        sp.add_argument("--quantize", default=os.environ.get("NUCLEUS_QUANTIZE", "auto"),
                        choices=QUANTIZE_CHOICES,
                        help="int4 or int8 weights for fast CPU decoding (default: NUCLEUS_QUANTIZE or auto = on "
                             "CPU for models of >= 500M parameters, the faster of the two here)")

    g = sub.add_parser("generate", help="stream a completion to stdout")
    model_flags(g)
    g.add_argument("--prompt", help="prompt text; backslash escapes like \\n are honoured")
    g.add_argument("--preset", help="start from a preset's prompt and settings (see `presets`)")
    for name, (_, _, _, _, help_) in BOUNDS.items():
        g.add_argument("--" + name.replace("_", "-"), dest=name, type=_number(name), default=None,
                       help=f"{help_}; {allowed(name)}")
    g.add_argument("--stop", action="append", default=None,
                   help=f"stop string (repeatable, at most {MAX_STOP_STRINGS}); the text ends before it")
    g.add_argument("--logprobs", type=int, default=0, metavar="K",
                   help="print JSON lines instead of text: per token its text, log-probability and the K (0-20) "
                        "most likely alternatives, as OpenAI's completions logprobs")
    g.add_argument("--max-seconds", type=float, default=None,
                   help="time limit of the run in seconds (default: none); it then ends with 'time'")
    sub.add_parser("presets", help="list the presets").add_argument("--json", action="store_true")
    model_flags(sub.add_parser("info", help="which model would be served, its size, device and dtype"))
    args = p.parse_args(argv)
    # argparse checks the choices of a typed flag, not of a default read from the environment
    for env, name, choices in (("NUCLEUS_QUANTIZE", "quantize", QUANTIZE_CHOICES),
                               ("NUCLEUS_BACKEND_ENGINE", "backend_engine", ENGINE_CHOICES)):
        if getattr(args, name, None) is not None and getattr(args, name) not in choices:
            p.error(f"{env}={getattr(args, name)!r} (from the environment): must be one of {', '.join(choices)}")
    try:
        static_cache_mode()
    except ValueError as e:
        p.error(str(e).replace("NUCLEUS_STATIC_CACHE: ", "NUCLEUS_STATIC_CACHE="))
    return args


def _settings(args, base: SamplingSettings) -> SamplingSettings:
    changes = {name: getattr(args, name) for name in BOUNDS if getattr(args, name) is not None}
    if args.stop is not None:
        changes["stop"] = [unescape(s) for s in args.stop]
    return base.replace(**changes)


def main(argv=None) -> int:
    args = parse_args(argv)
    from .presets import load_presets

    if args.command == "presets":
        presets = load_presets()
        if args.json:
            print(json.dumps([p.to_dict() for p in presets.values()], indent=1))
        for p in presets.values() if not args.json else ():
            print(f"{p.name:18} {p.description}")
        return 0

    from .generation import stream
    from .remote import RemoteError, RemoteModel, connect, ignored_local_flags, request_body
    from .tokenview import check_logprobs, openai_logprobs
    from .loading import ModelLoadError, inspect, load, resolve_model

    try:
        source, why = (args.backend, "--backend") if args.backend else resolve_model(args.model)
        if args.command == "generate":
            presets = load_presets()
            if args.preset and args.preset not in presets:
                raise SettingsError("preset", f"unknown preset {args.preset!r}; choose one of {', '.join(presets)}")
            preset = presets.get(args.preset)
            settings = _settings(args, preset.settings if preset else SamplingSettings())
            prompt = unescape(args.prompt) if args.prompt is not None else (
                preset.prompt if preset else None)
            if prompt is None:
                raise SettingsError("prompt", "give --prompt TEXT or --preset NAME")
            check_logprobs(args.logprobs)
            if args.max_seconds is not None and not args.max_seconds > 0:
                raise SettingsError("max_seconds", f"must be > 0, got {args.max_seconds:g}")
            lm = (connect(args.backend, args.backend_engine, model=args.model) if args.backend
                  else load(source, args.device, args.dtype, args.quantize))
        elif args.backend:
            rm = connect(args.backend, args.backend_engine, model=args.model)
        if args.backend:
            for flag in ignored_local_flags(args):
                print(f"warning: {flag} is ignored with --backend: the engine serves the model as it was started",
                      file=sys.stderr)
        else:   # info: read from the config, without loading the weights
            facts = inspect(source, args.device, args.dtype, args.quantize)
    except (ModelLoadError, SettingsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.command == "info" and args.backend:
        print(f"model:   {rm.model_id} (served by the engine at --backend)\nengine:  {rm.engine} at {rm.base_url}\n"
              f"context: {rm.context_length}" + ("" if rm.context_known else " (assumed: the engine does not say)"))
        return 0
    if args.command == "info":
        size = f"{facts['parameters']:,} parameters" if facts["parameters"] else "not known (served remotely)"
        print(f"model:   {source} (chosen by {why})\nfolder:  {facts['path']}\n"
              f"size:    {size}\ndevice:  {facts['device']}\n"
              f"dtype:   {facts['dtype']}\nweights: {facts['weights']}\ncontext: {facts['context']}")
        return 0

    remote = isinstance(lm, RemoteModel)
    if remote:   # what this engine cannot honour is refused before anything is printed
        try:
            request_body(lm, prompt, settings, settings.seed or 0, args.logprobs)
        except SettingsError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if not args.logprobs:
        sys.stdout.write(prompt)
    shown = 0
    try:
        for update in stream(lm, prompt, settings, max_time=args.max_seconds,
                             record=(args.logprobs if remote else max(args.logprobs, 10)) if args.logprobs else 0):
            if not args.logprobs:
                sys.stdout.write(update.text[shown:])
                sys.stdout.flush()
                shown = len(update.text)
        if args.logprobs:
            lp = update.logprobs if remote else openai_logprobs(update.records, args.logprobs)
            for token, logprob, top, offset in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"],
                                                   lp["text_offset"]):
                print(json.dumps({"token": token, "logprob": logprob, "top_logprobs": top, "text_offset": offset},
                                 ensure_ascii=False))
    except (SettingsError, RemoteError) as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the stream's cleanup has already stopped the worker
        print("\n[interrupted]", file=sys.stderr)
        return 130
    print(f"\n[seed {update.seed} | {update.tokens} tokens | {update.tokens_per_second:.1f} tok/s | "
          f"{update.finish_reason}]" + (f"\n[warning] {update.warning}" if update.warning else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
