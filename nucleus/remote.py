"""The remote backend: an OpenAI-compatible inference engine generates in place of a local model.

    NUCLEUS_BACKEND=http://127.0.0.1:8000/v1 python app.py     # or --backend URL (app and CLI)

Engines built for serving many people (vLLM, SGLang, llama.cpp's server, `transformers serve`)
batch requests on one GPU and scale out; they all speak the OpenAI completions API, and Nucleus
(a plain MistralForCausalLM) runs on all of them. `RemoteModel` sends the same validated
`SamplingSettings` to `/v1/completions` and yields the same `Update`s as a local model:

- standard fields: temperature, top_p, max_tokens, stop, seed, logprobs, stream_options (usage);
- the rest where each engine takes it: vLLM and SGLang read top_k, min_p and repetition_penalty
  from extra body fields; llama.cpp's server reads top_k, min_p and its repeat_penalty, which is
  transformers' rule once its window (repeat_last_n) spans the whole context and its samplers run
  in transformers' order (both sent); `transformers serve` takes a whole GenerationConfig as JSON,
  so every field is sent. Any other server ("openai") gets the standard fields only.
A setting the engine cannot honour is refused with a sentence, never dropped in silence.

Streaming is server-sent events read with httpx on a thread of its own, so that the run can end
while the engine is silent: Stop, or the time limit, ends it within a quarter second (nucleus/sse.py). Why not the `openai`
client: see docs/architecture.md. An engine that is down or fails mid-run becomes one sentence
(`RemoteError`); the next request tries again.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

from .backend import Backend, ModelLoadError, Request, Supports, Update, cut_at_stop
from .chat import ChatPrompt, check_messages
from .engine_logprobs import Collected
from .options import ENGINE_CHOICES
from .settings import SamplingSettings, SettingsError
from .sse import CONNECT_SECONDS, RemoteError, events  # noqa: F401 - RemoteError: what callers catch
from .tokenizer import load_tokenizer

# "openai": any other OpenAI-compatible server: only the standard fields are sent (a setting that
# needs more is refused), since what it does with extra fields is unknown.
ENGINES = ENGINE_CHOICES[1:]
OWNED_BY = {"vllm": "vllm", "sglang": "sglang", "llamacpp": "llama.cpp", "local": "transformers"}
# llama.cpp's sampler chain in transformers' order: penalties, then temperature, then the cuts
# (its default applies temperature last, which changes what top-p and min-p keep)
LLAMA_CPP_SAMPLERS = ["penalties", "temperature", "top_k", "top_p", "min_p"]
LLAMA_CPP_RANDOM_SEED = 2**32 - 1       # llama.cpp's LLAMA_DEFAULT_SEED: "pick one at random"
DEFAULT_CONTEXT = 4096      # when the engine does not say (vLLM and SGLang report max_model_len,
                            # llama.cpp's server meta.n_ctx)
GENERATION_FIELDS = {"max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "min_p", "repetition_penalty",
                     "no_repeat_ngram_size", "eos_token_id", "pad_token_id", "stop_strings"}


@dataclass(eq=False)
class RemoteModel(Backend):
    """A model served elsewhere, as the page, the API and the CLI see it."""
    base_url: str           # ".../v1"
    model_id: str           # the engine's name for it (from /v1/models)
    engine: str             # one of ENGINES
    context: int
    tokenizer: object       # the Mistral 32k tokenizer: prompt meter, context fit, llama.cpp's token texts
    api_key: str | None = None
    context_known: bool = True   # False: the engine did not say; DEFAULT_CONTEXT is assumed
    weights = "engine"
    fit_slack = 2           # a cut prompt is tokenised again by the engine: a word cut in two may take more
    dtype = "bfloat16"      # for the code panel: how to load the same weights with transformers

    @property
    def supports(self) -> Supports:
        listed = self.engine != "transformers"          # transformers serve returns no logprobs
        return Supports(logprobs=listed, stages=False, processed_logprobs=False, chat=True)

    @property
    def name(self) -> str:
        return self.model_id.rstrip("/").split("/")[-1]

    @property
    def source(self) -> str:
        """The engine's model id: a Hub id or a folder, what transformers would load."""
        return self.model_id

    @property
    def context_length(self) -> int:
        return self.context

    def describe_engine(self) -> str:
        return {"transformers": "transformers serve", "openai": f"the engine at {self.base_url}"}.get(
            self.engine, self.engine)

    def describe(self) -> str:
        engine = self.engine if self.engine != "openai" else "an OpenAI-compatible engine"
        context = (f"context {self.context} tokens" if self.context_known else
                   f"context {self.context} tokens (assumed: the engine does not say)")
        return f"{self.name}, served by {engine} at {self.base_url}, {context}"

    def check(self, settings: SamplingSettings, logprobs: int = 0, logprobs_mode: str = "raw") -> None:
        super().check(settings, logprobs, logprobs_mode)
        request_body(self, "", settings, settings.seed or 0, logprobs)

    def chat_prompt(self, messages: list[dict], max_new_tokens: int) -> ChatPrompt:
        """The engine applies the served model's own template (its /chat/completions): here the
        messages are only checked, and shown one per line. The engine says whether the model has a
        template, and how long the conversation is; its refusal comes back as a RemoteError."""
        messages = check_messages(messages)
        shown = "\n".join(f"[{m['role']}] {m['content']}" for m in messages)
        return ChatPrompt(shown, [self.tokenizer.bos_token_id], messages=tuple(messages))

    def _generate(self, req: Request) -> Iterator[Update]:
        s, asked = req.settings, max(req.record, req.logprobs) if self.supports.logprobs else 0
        body, url = request_body(self, req.prompt, s, req.seed, asked), f"{self.base_url}/completions"
        if req.messages:         # chat: the engine's chat endpoint, which streams deltas of a message
            if req.logprobs:
                raise SettingsError("logprobs", f"Nucleus reads {self.describe_engine()}'s log-probabilities from "
                                                "completions only; use generate with a prompt for them")
            body = {**{k: v for k, v in request_body(self, "", s, req.seed, 0).items() if k != "prompt"},
                    "messages": list(req.messages)}
            url = f"{self.base_url}/chat/completions"
        text, tokens, reason, got = "", 0, None, Collected()
        for chunk in events(url, body, _headers(self.api_key), req.deadline):
            if chunk is None:                       # the engine is silent: look at Stop and the clock
                reason = "cancelled" if req.cancel.is_set() else "time" if _late(req) else None
                if reason:
                    break
                continue
            choice = (chunk.get("choices") or [{}])[0]
            piece = choice.get("text") or (choice.get("delta") or {}).get("content") or ""
            if piece:
                text, tokens = text + piece, tokens + 1
            got.add(choice.get("logprobs"))
            usage = chunk.get("usage") if isinstance(chunk.get("usage"), dict) else {}
            tokens = usage.get("completion_tokens", tokens)         # the engine's own count, when it sends one
            reason = choice.get("finish_reason") or reason
            yield req.update(cut_at_stop(text, s.stop)[0], tokens)
            reason = "cancelled" if req.cancel.is_set() else "time" if _late(req) else reason
            if reason in ("cancelled", "time"):
                break
        if reason == "stop":    # OpenAI's "stop" is the end of text or a stop string; it does not say which
            reason = "stop" if s.stop else "eos"
        elif reason not in ("cancelled", "time", "length"):
            reason = "length" if tokens >= s.max_new_tokens else "eos"
        shown, _ = cut_at_stop(text, s.stop)
        cut = bool(s.stop) and (reason == "stop" or shown != text)      # ended on a stop string
        yield req.update(shown, tokens, done=True, finish_reason=reason,
                         records=got.records(shown, s.greedy, self.tokenizer, cut))


def _late(req: Request) -> bool:
    return req.deadline is not None and time.monotonic() >= req.deadline


# ---- connecting ----------------------------------------------------------------------------------
def _headers(api_key: str | None) -> dict:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def connect(url: str, engine: str = "auto", model: str | None = None, api_key: str | None = None) -> RemoteModel:
    """Ask the engine which models it serves (GET /v1/models); pick `model` or its first one."""
    base = url.rstrip("/")
    if not base.endswith("/v1"):
        base += "/v1"
    if engine != "auto" and engine not in ENGINES:
        raise ModelLoadError(f"backend engine must be auto or one of {', '.join(ENGINES)}, got {engine!r}")
    try:
        r = httpx.get(f"{base}/models", headers=_headers(api_key), timeout=CONNECT_SECONDS)
        r.raise_for_status()
        listed = r.json().get("data", [])
    except (httpx.HTTPError, ValueError, AttributeError) as e:
        detail = str(e).splitlines()[0] if str(e) else ""      # httpx adds a second line with a help link
        raise ModelLoadError(f"The inference engine at {base} did not answer /models ({type(e).__name__}: {detail}); "
                             "is it running, and is the URL right (it ends in /v1)?") from None
    if not listed:
        raise ModelLoadError(f"The inference engine at {base} serves no model.")
    entry = next((m for m in listed if m.get("id") == model), None) if model else listed[0]
    if entry is None:
        raise ModelLoadError(f"The engine at {base} does not serve {model!r}; it serves "
                             f"{', '.join(m.get('id', '?') for m in listed)}.")
    if engine == "auto":
        engine = OWNED_BY.get(str(entry.get("owned_by", "")).lower(), "openai")
    meta = entry.get("meta") if isinstance(entry.get("meta"), dict) else {}     # llama.cpp's server: per slot
    context = entry.get("max_model_len") or entry.get("context_length") or meta.get("n_ctx") or \
        _config_context(entry["id"])
    return RemoteModel(base, entry["id"], engine, int(context or DEFAULT_CONTEXT), load_tokenizer(), api_key,
                       context_known=bool(context))


def _config_context(model_id: str) -> int | None:
    """The context of the model an engine serves, from its config.json when that is at hand: a
    folder on this machine (`transformers serve models/nucleus-nano`) or a Hub id already in the
    local cache. Nothing is downloaded."""
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(model_id, local_files_only=True, trust_remote_code=False)
    except Exception:    # noqa: BLE001 - not a folder, not cached, not a config: the engine's word is all
        return None
    return getattr(cfg, "max_position_embeddings", None)


# ---- the request ---------------------------------------------------------------------------------
def request_body(rm: RemoteModel, prompt: str, settings: SamplingSettings, seed: int, logprobs: int) -> dict:
    """The /v1/completions body for these settings on this engine; SettingsError for what it cannot do."""
    body = {"model": rm.model_id, "prompt": prompt, "max_tokens": settings.max_new_tokens,
            "temperature": settings.temperature, "top_p": settings.top_p, "seed": seed, "stream": True,
            "stream_options": {"include_usage": True}}
    if settings.stop:
        body["stop"] = list(settings.stop)
    if rm.engine == "transformers":
        if logprobs:
            raise SettingsError("logprobs", "transformers serve does not return log-probabilities")
        # every field spelled out: the served model's generation_config.json fills whatever is left unset
        cfg = settings.to_generation_config(eos_token_id=rm.tokenizer.eos_token_id).to_dict()
        cfg = {k: v for k, v in cfg.items() if k in GENERATION_FIELDS and v is not None}
        if not settings.greedy:
            cfg.setdefault("min_p", 0.0)   # explicit: the served model's own min_p must not fill it in
        body["generation_config"] = json.dumps(cfg)
        return body
    if logprobs:
        body["logprobs"] = logprobs
    if settings.no_repeat_ngram_size:
        raise SettingsError("no_repeat_ngram_size", f"{rm.engine} has no no-repeat n-gram setting; use 0 with "
                                                    "this backend")
    if rm.engine == "openai":
        _only_standard(rm, settings)
    elif rm.engine == "llama.cpp":
        # llama.cpp's repeat penalty is transformers' rule (logit / p if > 0, else * p) over its last
        # repeat_last_n tokens, prompt included: over the whole context it is the same penalty.
        if seed == LLAMA_CPP_RANDOM_SEED:
            raise SettingsError("seed", f"llama.cpp reads {seed} as 'a random seed'; use a smaller one")
        # cache_prompt off: with llama-server's prompt cache on, the same seeded request gave other
        # text depending on whether its prompt was still cached
        body.update(top_k=settings.top_k, min_p=settings.min_p, repeat_penalty=settings.repetition_penalty,
                    repeat_last_n=rm.context, samplers=LLAMA_CPP_SAMPLERS, cache_prompt=False)
    else:   # vLLM and SGLang: extra sampling parameters in the body; top_k -1 = off in vLLM
        body.update(top_k=settings.top_k or -1, min_p=settings.min_p, repetition_penalty=settings.repetition_penalty)
    return body


def _only_standard(rm: RemoteModel, settings: SamplingSettings) -> None:
    extra = [name for name, value, off in (("top_k", settings.top_k, 0), ("min_p", settings.min_p, 0.0),
                                           ("repetition_penalty", settings.repetition_penalty, 1.0)) if value != off]
    if extra:
        raise SettingsError(extra[0], f"the engine at {rm.base_url} is not one Nucleus knows, so only temperature, "
                                      "top-p, max new tokens, stop strings and the seed are sent; set "
                                      f"{extra[0]} to {dict(top_k=0, min_p=0, repetition_penalty=1)[extra[0]]}, or, "
                                      "if it is vLLM, SGLang, llama.cpp's server or transformers serve, name it "
                                      "with --backend-engine")
