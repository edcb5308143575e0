"""The Nucleus command line.

    python -m nucleus generate --preset recipe --temperature 0.7 --seed 42
    python -m nucleus generate --prompt "### Lesson: Bees\n### Introduction\n" --max-new-tokens 100
    python -m nucleus generate --preset story --logprobs 5 --logprobs-mode processed
    python -m nucleus chat --model runs/instruct/final --system "Be brief." --message "Why is the sky blue?"
    python -m nucleus chat --model runs/instruct/final          # a conversation: one message per line on stdin
    python -m nucleus score --text "### Recipe: Soup\n### Ingredients\n"     # each token's rank and logprob
    python -m nucleus presets
    python -m nucleus info [--model PATH_OR_HUB_ID]

Text streams to stdout; the seed, token count and speed go to stderr so stdout stays clean.
"""
from __future__ import annotations

import argparse
import json
import sys

from .options import LOGPROBS_MODES, add_model_flags, check_environment
from .settings import BOUNDS, MAX_STOP_STRINGS, SamplingSettings, SettingsError, allowed, parse_seed, unescape


def _number(name: str):
    """argparse type for a numeric setting whose error names the setting and its range."""
    kind = BOUNDS[name][0]

    def parse(text: str):
        if name == "seed":                       # the seed box's and share links' rule: digits only
            try:
                return parse_seed(text)
            except SettingsError as e:
                raise argparse.ArgumentTypeError(str(e)) from None
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number; allowed: {allowed(name)}") from None
        return int(value) if kind is int and value.is_integer() else value
    return parse


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m nucleus", description="Generate with Nucleus models.")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="stream a completion to stdout")
    add_model_flags(g)
    g.add_argument("--prompt", help="prompt text; backslash escapes like \\n are honoured")
    g.add_argument("--preset", help="start from a preset's prompt and settings (see `presets`)")
    _run_flags(g)
    c = sub.add_parser("chat", help="reply to messages with a model that has a chat template (an instruct checkpoint)")
    add_model_flags(c)
    c.add_argument("--system", default="", help="system prompt (backslash escapes honoured)")
    c.add_argument("--message", help="one user message: print the reply and exit; without it, each line read "
                                     "from stdin is a message and the conversation goes on until end of input")
    c.add_argument("--preset", help="start from a chat preset's system prompt, message and settings")
    _run_flags(c)
    sc = sub.add_parser("score", help="score a text: each token's log-probability and rank, and the perplexity")
    add_model_flags(sc)
    sc.add_argument("--text", help="the text (backslash escapes honoured); or --file")
    sc.add_argument("--file", help="a UTF-8 text file to score")
    sc.add_argument("--top", type=int, default=5, help="alternatives per token, 0-20 (default 5)")
    sc.add_argument("--json", action="store_true", help="print the whole result as JSON (the API's /score shape)")
    sub.add_parser("presets", help="list the presets").add_argument("--json", action="store_true")
    add_model_flags(sub.add_parser("info", help="which model would be served, its size, device and dtype"))
    args = p.parse_args(argv)
    check_environment(p)
    return args


def _run_flags(g) -> None:
    """The sampling flags that generate and chat share."""
    for name, (_, _, _, _, help_) in BOUNDS.items():
        g.add_argument("--" + name.replace("_", "-"), dest=name, type=_number(name), default=None,
                       help=f"{help_}; {allowed(name)}")
    g.add_argument("--stop", action="append", default=None,
                   help=f"stop string (repeatable, at most {MAX_STOP_STRINGS}); the text ends before it")
    g.add_argument("--logprobs", type=int, default=0, metavar="K",
                   help="print JSON lines instead of text: per token its text, log-probability and the K (0-20) "
                        "most likely alternatives, as OpenAI's completions logprobs")
    g.add_argument("--logprobs-mode", default="raw", choices=LOGPROBS_MODES,
                   help="raw: the model's own distribution (default, as vLLM and llama.cpp); processed: the "
                        "distribution each token was drawn from, after every sampling setting")
    g.add_argument("--max-seconds", type=float, default=None,
                   help="time limit of the run in seconds (default: none); it then ends with 'time'")


def _settings(args, base: SamplingSettings) -> SamplingSettings:
    changes = {name: getattr(args, name) for name in BOUNDS if getattr(args, name) is not None}
    if args.stop is not None:
        changes["stop"] = [unescape(s) for s in args.stop]
    return base.replace(**changes)


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _presets(args) -> int:
    from .presets import load_presets

    presets = load_presets()
    if args.json:
        print(json.dumps([p.to_dict() for p in presets.values()], indent=1))
    else:
        for p in presets.values():
            print(f"{p.name:18} {p.kind:10} {p.description}")
    return 0


def _info(args) -> int:
    from .loading import inspect, resolve_model
    from .remote import connect

    if args.backend:
        rm = connect(args.backend, args.backend_engine, model=args.model)
        print(f"model:   {rm.model_id} (served by the engine at --backend)\nengine:  {rm.engine} at {rm.base_url}\n"
              f"context: {rm.context_length}" + ("" if rm.context_known else " (assumed: the engine does not say)"))
        return 0
    source, why = resolve_model(args.model)
    facts = inspect(source, args.device, args.dtype, args.quantize)
    size = f"{facts['parameters']:,} parameters" if facts["parameters"] else "not known (not a Mistral config)"
    weights = facts["weights"] if facts["weights"] != "none" else f"{facts['dtype']} (not quantised)"
    print(f"model:   {source}\nchosen:  by {why}\nfolder:  {facts['path']}\n"
          f"size:    {size}\ndevice:  {facts['device']}\n"
          f"dtype:   {facts['dtype']}\nweights: {weights}\ncontext: {facts['context']}")
    return 0


def _score(args) -> int:
    """One line per token (rank, log-probability, text), then the perplexity; or JSON."""
    from pathlib import Path

    from .loading import load, resolve_model
    from .remote import connect

    if (args.text is None) == (args.file is None):
        raise SettingsError("text", "give --text TEXT or --file PATH")
    try:
        text = unescape(args.text) if args.text is not None else Path(args.file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SettingsError("file", f"cannot read {args.file}: {e}") from None
    backend = (connect(args.backend, args.backend_engine, model=args.model) if args.backend
               else load(resolve_model(args.model)[0], args.device, args.dtype, args.quantize))
    result = backend.score(text, args.top)
    if args.json:
        print(json.dumps({**result.to_dict(), "model": backend.name}, ensure_ascii=False))
        return 0
    for token, logprob, rank in zip(result.tokens, result.token_logprobs, result.ranks):
        print(f"{rank:>6} {logprob:9.4f} {json.dumps(token, ensure_ascii=False)}")
    print(f"[perplexity {result.perplexity:.4f} | {_plural(len(result.tokens), 'token')}]"
          + (f"\n[warning] {result.warning}" if result.warning else ""), file=sys.stderr)
    return 0


def _prepare(args):
    """(backend, prompt, settings) for `generate` and `chat`, everything checked before anything is
    printed. For chat, prompt is the message (None: read them from stdin)."""
    from .loading import load, resolve_model
    from .presets import load_presets
    from .remote import connect

    kind = "chat" if args.command == "chat" else "completion"
    every = load_presets()
    presets = {name: p for name, p in every.items() if p.kind == kind}
    if args.preset and args.preset not in presets:
        other = "generate" if kind == "chat" else "chat"
        raise SettingsError("preset", f"{args.preset!r} is a {every[args.preset].kind} preset: use it with `{other}`"
                            if args.preset in every else f"unknown preset {args.preset!r}; for {args.command}, "
                                                         f"choose one of {', '.join(presets)}")
    preset = presets.get(args.preset)
    settings = _settings(args, preset.settings if preset else SamplingSettings())
    given = args.message if kind == "chat" else args.prompt
    prompt = unescape(given) if given is not None else (preset.prompt if preset else None)
    if prompt is None and kind == "completion":
        raise SettingsError("prompt", "give --prompt TEXT or --preset NAME")
    if kind == "chat":
        args.system = unescape(args.system) if args.system else (preset.system if preset else "")
    if args.max_seconds is not None and not args.max_seconds > 0:
        raise SettingsError("max_seconds", f"must be > 0, got {args.max_seconds:g}")
    from .backend import check_logprobs

    check_logprobs(args.logprobs)
    backend = (connect(args.backend, args.backend_engine, model=args.model) if args.backend
               else load(resolve_model(args.model)[0], args.device, args.dtype, args.quantize))
    backend.check(settings, args.logprobs, args.logprobs_mode)   # what this backend cannot do, refused now
    if kind == "chat" and not backend.supports.chat:
        from .chat import base_model_refusal

        raise base_model_refusal(backend.name)
    if args.backend:
        from .options import ignored_local_flags

        for flag in ignored_local_flags(args):
            print(f"warning: {flag} is ignored with --backend: the engine serves the model as it was started",
                  file=sys.stderr)
    return backend, prompt, settings


def _generate(args) -> int:
    backend, prompt, settings = _prepare(args)
    if not args.logprobs:
        sys.stdout.write(prompt)
    update = _show(args, backend.stream(prompt, settings, max_time=args.max_seconds, logprobs=args.logprobs,
                                        logprobs_mode=args.logprobs_mode))
    return update if isinstance(update, int) else 0


def _chat(args) -> int:
    """One reply (--message), or a conversation: each stdin line is the user's next message."""
    backend, message, settings = _prepare(args)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    lines = [message] if message is not None else _stdin_lines()
    for line in lines:
        messages.append({"role": "user", "content": line})
        update = _show(args, backend.stream_chat(messages, settings, max_time=args.max_seconds,
                                                 logprobs=args.logprobs, logprobs_mode=args.logprobs_mode), chat=True)
        if isinstance(update, int):
            return update
        messages.append({"role": "assistant", "content": update.text.strip()})
    return 0


def _stdin_lines():
    prompt = sys.stdin.isatty()
    while True:
        if prompt:
            print("you> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            return
        if line.strip():
            yield unescape(line.rstrip("\n"))


def _show(args, updates, chat: bool = False):
    """Stream the text to stdout and the run's line to stderr; the final Update, or an exit code."""
    from .remote import RemoteError

    shown, update = 0, None
    try:
        for update in updates:
            if not args.logprobs:
                text = update.text.lstrip() if chat else update.text    # a reply's first space is the template's
                sys.stdout.write(text[shown:])
                sys.stdout.flush()
                shown = len(text)
    except (SettingsError, RemoteError) as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:   # leaving the loop has already stopped the run
        print("\n[interrupted]", file=sys.stderr)
        return 130
    if args.logprobs:
        _print_logprobs(update)
    elif chat:
        print()                 # a reply is a line of its own
    else:       # stdout holds exactly prompt + text; the newline that ends the line goes to stderr
        print(file=sys.stderr)
    print(f"[seed {update.seed} | {_plural(update.tokens, 'token')} | {update.tokens_per_second:.1f} tok/s | "
          f"{update.finish_reason}]" + (f"\n[warning] {update.warning}" if update.warning else ""), file=sys.stderr)
    return update


def _print_logprobs(update) -> None:
    lp = update.logprobs
    if lp is None:          # the engine ignored the request; the warning below says so
        return
    for token, logprob, top, offset, tid in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"],
                                                lp["text_offset"], lp["token_ids"]):
        print(json.dumps({"token": token, "logprob": logprob, "top_logprobs": top, "text_offset": offset,
                          "token_id": tid}, ensure_ascii=False))


def main(argv=None) -> int:
    args = parse_args(argv)
    from .backend import ModelLoadError

    try:
        return {"presets": _presets, "info": _info, "generate": _generate, "chat": _chat, "score": _score}[args.command](args)
    except (ModelLoadError, SettingsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:             # `... | head`: the reader has gone, which is no error of ours
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
