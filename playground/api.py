"""The Space's API (gradio_client, or raw HTTP at /gradio_api/call/<name>): typed endpoints whose
defaults are SamplingSettings' own, validated by the same rules as the page and the CLI.

    /generate(prompt, temperature, top_p, top_k, min_p, repetition_penalty, no_repeat_ngram_size,
              max_new_tokens, stop, seed, model, logprobs, logprobs_mode)   # this positional order
    /chat(messages, temperature, ..., seed, model, logprobs, logprobs_mode)  # the same, messages first
    /score(text, top, model)       # every token's log-probability, rank and alternatives; the perplexity
    /presets()   /models()
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import time

import nucleus
from nucleus.backend import check_logprobs, check_logprobs_mode
from nucleus.remote import RemoteError
from nucleus.settings import SamplingSettings, SettingsError

from . import handlers
from .session import Space

log = logging.getLogger("nucleus.space")
API_UPDATE_SECONDS = 0.5     # /generate sends progress this often (and notices a dropped client)
D = SamplingSettings()       # the defaults of every setting
SETTING_NAMES = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "no_repeat_ngram_size",
                 "max_new_tokens", "seed")


class Api:
    """The endpoints, bound to one Space (methods, so Gradio reads their signatures and types)."""

    def __init__(self, space: Space):
        self.space = space

    def generate(self, prompt: str, temperature: float = D.temperature, top_p: float = D.top_p,
                 top_k: int = D.top_k, min_p: float = D.min_p, repetition_penalty: float = D.repetition_penalty,
                 no_repeat_ngram_size: int = D.no_repeat_ngram_size, max_new_tokens: int = D.max_new_tokens,
                 stop: list[str] | None = None, seed: int | None = None, model: str | None = None,
                 logprobs: int = 0, logprobs_mode: str = "raw") -> dict:
        """Continue `prompt`. Returns {text, seed, tokens, tokens_per_second, finish_reason, warning,
        prompt_start, model, logprobs}; `predict` gives the final result, `submit` also the progress.
        logprobs (0-20): per generated token its log-probability and that many alternatives, in the
        shape of OpenAI's completions API (tokens, token_logprobs, top_logprobs, text_offset counted
        from the start of prompt + completion, and our token_ids). logprobs_mode: "raw" (the model's
        own distribution) or "processed" (the distribution the token was drawn from).
        A generator underneath: between updates Gradio notices a client that went away, and closing
        this generator stops the run within one token."""
        try:
            settings, lm, k, mode = self._checked(locals())
            text = handlers.check_prompt(prompt)
        except (SettingsError, nucleus.ModelLoadError) as e:
            raise handlers.refuse(str(e)) from None
        yield from self._stream(lm, text, settings, k, mode)

    def chat(self, messages: list[dict], temperature: float = D.temperature, top_p: float = D.top_p,
             top_k: int = D.top_k, min_p: float = D.min_p, repetition_penalty: float = D.repetition_penalty,
             no_repeat_ngram_size: int = D.no_repeat_ngram_size, max_new_tokens: int = D.max_new_tokens,
             stop: list[str] | None = None, seed: int | None = None, model: str | None = None,
             logprobs: int = 0, logprobs_mode: str = "raw") -> dict:
        """Reply to OpenAI-shaped `messages` ([{"role": "system" | "user" | "assistant", "content": text}],
        ending with the user's) with a model that has a chat template; a base model refuses.
        Returns what /generate returns, plus message = {"role": "assistant", "content": the reply}
        and prompt = the template's text (text_offset counts from its start)."""
        try:
            settings, lm, k, mode = self._checked(locals())
            prompt = lm.chat_prompt(messages, settings.max_new_tokens).text
        except (SettingsError, nucleus.ModelLoadError) as e:
            raise handlers.refuse(str(e)) from None
        for out in self._stream(lm, messages, settings, k, mode, chat=True):
            yield {**out, "message": {"role": "assistant", "content": out["text"].strip()}, "prompt": prompt}

    def _checked(self, args: dict):
        """(settings, backend, logprobs, logprobs_mode) from an endpoint's arguments; SettingsError
        or ModelLoadError for a bad one."""
        settings = SamplingSettings.from_dict({name: args[name] for name in SETTING_NAMES} | {"stop": args["stop"] or ()})
        lm = self.space.catalog.get(self.space.initial_label if args["model"] is None else args["model"])
        return settings, lm, check_logprobs(args["logprobs"]), check_logprobs_mode(args["logprobs_mode"])

    def _stream(self, lm, text, settings, k, mode, chat=False):
        sent, update, failed = 0.0, None, None
        run = lm.stream_chat if chat else lm.stream
        try:
            with contextlib.closing(run(text, settings, max_time=self.space.max_seconds, logprobs=k,
                                        logprobs_mode=mode)) as updates:
                for update in updates:
                    if update.done or time.monotonic() - sent >= API_UPDATE_SECONDS:
                        sent = time.monotonic()
                        yield {"text": update.text, "seed": update.seed, "tokens": update.tokens,
                               "tokens_per_second": round(update.tokens_per_second, 2),
                               "finish_reason": update.finish_reason, "warning": update.warning,
                               "prompt_start": update.prompt_start, "model": lm.name, "logprobs": update.logprobs}
        except (SettingsError, RemoteError) as e:
            failed = e
            raise handlers.refuse(str(e)) from None
        finally:   # a dropped client closes this generator: closing the stream stopped the run
            if update is not None and failed is None:     # a failure was logged by refuse
                log.info("api /%s: %s, %d tokens, %.1f tokens/s, %s", "chat" if chat else "generate", lm.name,
                         update.tokens, update.tokens_per_second, update.finish_reason or "cancelled (client gone)")

    def score(self, text: str, top: int = 5, model: str | None = None) -> dict:
        """Score `text` with the model: per token (after <s>) its log-probability, its rank in the model's
        distribution (1 = the most likely) and the `top` (0-20) most likely tokens there. Returns
        {tokens, token_ids, token_logprobs, ranks, top_logprobs, text_offset, perplexity, prompt_start,
        warning, surprising, model}; natural logs of the model's own (raw) distribution; a text longer
        than the context is scored by its last tokens (warning, prompt_start)."""
        try:
            lm = self.space.catalog.get(self.space.initial_label if model is None else model)
            result = lm.score(handlers.check_prompt(text, "text"), top)
        except (SettingsError, nucleus.ModelLoadError) as e:
            raise handlers.refuse(str(e)) from None
        return {**result.to_dict(), "model": lm.name}

    def presets(self) -> list[dict]:
        """Every preset: name, title, description, prompt and its settings."""
        return [p.to_dict() for p in self.space.presets.values()]

    def models(self) -> list[str]:
        """The model labels accepted by generate's `model` argument."""
        return self.space.catalog.labels


def argument(fn, name: str, args: tuple, kwargs: dict, default=None):
    """The value of parameter `name` in a call fn(*args, **kwargs), however it was passed (ZeroGPU
    calls a lease's duration function with the request's own arguments)."""
    try:
        return inspect.signature(fn).bind_partial(*args, **kwargs).arguments.get(name, default)
    except TypeError:
        return default


# ---- raw HTTP: /gradio_api/call/generate with values left out ----------------------------------
class FillDefaults:
    """ASGI middleware for raw HTTP calls of /generate, whose body is {"data": [positional values]}:
    gradio_client sends every value, but a hand-written call may leave the trailing ones out, and
    Gradio then fails with a traceback and answers {"error": null}. Here the missing trailing values
    get /generate's defaults (as keyword calls do); a call without the prompt, or with more values
    than /generate takes, is answered 422 with the positional order. One log line either way. Other paths pass through untouched."""

    ORDER = [name for name in inspect.signature(Api.generate).parameters if name != "self"]
    DEFAULTS = [p.default for name, p in inspect.signature(Api.generate).parameters.items() if name != "self"]

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or \
                not scope["path"].rstrip("/").endswith("/gradio_api/call/generate"):
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        body, problem = self.fill(body)
        if problem:
            log.info("refused raw /generate call: %s", problem)
            return await _reply(send, 422, {"error": problem})
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()           # then whatever comes (a disconnect)

        await self.app(scope, replay, send)

    @classmethod
    def fill(cls, body: bytes) -> tuple[bytes, str | None]:
        """(the body with missing trailing values filled, or a sentence saying what is wrong)."""
        import json

        order = "/generate takes {\"data\": [" + ", ".join(cls.ORDER) + "]}, positional, in this order"
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            return body, f"the body is not JSON; {order}"
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            return body, f"\"data\" is missing or not a list; {order}"
        if not data:
            return body, f"prompt is missing; {order}"
        if len(data) > len(cls.ORDER):
            return body, f"{len(data)} values, but /generate takes {len(cls.ORDER)}; {order}"
        if len(data) < len(cls.ORDER):
            missing = cls.ORDER[len(data):]
            log.info("raw /generate call: %s left out, their defaults used", ", ".join(missing))
            payload["data"] = data + cls.DEFAULTS[len(data):]
            return json.dumps(payload).encode(), None
        return body, None


async def _reply(send, status: int, content: dict) -> None:
    import json

    body = json.dumps(content).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
