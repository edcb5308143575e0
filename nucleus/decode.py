"""The decode loop: prefill, then one visible step at a time. It knows token ids only, no text.

    loop = DecodeLoop(model, ids, settings.chain(), greedy=False, seed=42, max_new_tokens=64, eos_id=2)
    for step in loop:          # step.token: (B,) ids; step.stages: the scores at each stage
        ...
    loop.reason                # "eos" | "length" | "cancelled" | "time" (None while it runs)

Each step is what transformers' `generate` does, written out: the model's forward with one of
transformers' cache classes, the logits of the last position copied to float32, the processors of
`SamplingSettings.chain()` (transformers' own classes, in transformers' order), then the draw:
argmax at temperature 0, else `torch.multinomial` over the softmax with the run's own seeded
`torch.Generator`. On CPU that is the very call `generate` makes with the global generator, so a
seeded run gives the text `torch.manual_seed(seed); model.generate(...)` gives (tests/test_decode.py).

The stages are the loop's own tensors: every processor returns a new tensor, so keeping a
reference to each costs nothing; nothing is hooked into the model.

The consumer ends a run by leaving the loop (closing the generator), or from another thread by
setting `cancel`; both are seen before the next forward. `deadline` (time.monotonic()) ends it
with "time". Shapes are (B, ...) throughout so that several runs can share one forward later;
today B = 1.

The forward is one of two: `EagerForward` (a DynamicCache per run; CPU, and any device by
default) or `CompiledForward` (GPU: one StaticCache reused run after run and the one-token forward
compiled with CUDA graphs; nucleus/local.py decides when, NUCLEUS_STATIC_CACHE). The processors and
the draw stay eager on both, so a setting moved on the page never makes torch.compile record a new
graph.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import inspect
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers import DynamicCache, LogitsProcessor, StaticCache

Stage = tuple[str, LogitsProcessor]     # (stage name, processor): SamplingSettings.chain()


@dataclass(frozen=True)
class Step:
    token: torch.Tensor                                     # (B,) the ids drawn
    stages: tuple[tuple[str, torch.Tensor], ...] = ()       # ("raw", (B, vocab)), ... the drawn-from last


def _forward_kwargs(model) -> tuple[str, bool]:
    """(name of the cache argument, whether cache_position is taken): transformers 5.24 names it
    `cache`, 5.17 (the GPU image) `past_key_values` and also takes `cache_position`."""
    # the class's own forward: an instance may wrap it (torch.compile's _orig_mod, a test's spy)
    params = inspect.signature(type(getattr(model, "_orig_mod", model)).forward).parameters
    return ("cache" if "cache" in params else "past_key_values"), "cache_position" in params


class Chain:
    """The processors of one run, applied in order. `stages`: the scores after each named stage
    ("raw" first: the model's float32 logits; each stage's last processor marks its end)."""

    def __init__(self, chain: list[Stage], greedy: bool):
        self.chain, self.greedy = chain, greedy
        # a stage ends where the next processor belongs to another stage (or at the end)
        self.ends = [i == len(chain) - 1 or chain[i + 1][0] != name for i, (name, _) in enumerate(chain)]

    def __call__(self, ids: torch.Tensor, raw: torch.Tensor, keep: bool):
        """(final scores, stages). ids: (B, T) the sequence so far; raw: (B, vocab) float32."""
        scores, stages = raw, [("raw", raw)] if keep else []
        for (name, proc), end in zip(self.chain, self.ends):
            scores = proc(ids, scores)                     # a new tensor every time: no copy needed
            if keep and end:
                stages.append((name, scores))
        return scores, tuple(stages)

    def draw(self, scores: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(B,) ids: argmax when greedy, else one multinomial draw per row (what generate does)."""
        if self.greedy:
            return scores.argmax(-1)
        return torch.multinomial(torch.softmax(scores, -1), 1, generator=generator).squeeze(1)


class EagerForward:
    """The model's forward with a fresh DynamicCache per run (what generate uses by default)."""

    def __init__(self, model):
        self.model = model
        self.cache_arg, self.takes_position = _forward_kwargs(model)

    @contextlib.contextmanager
    def session(self, total: int):
        """A cache for one run of at most `total` positions."""
        yield DynamicCache(config=self.model.config)

    def __call__(self, cache, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """ids, positions (B, T) -> (B, vocab) float32 logits of the last position (a copy, as generate)."""
        kw = {self.cache_arg: cache}
        if self.takes_position:
            kw["cache_position"] = positions[0]
        out = self.model(input_ids=ids, position_ids=positions, use_cache=True, logits_to_keep=1, **kw)
        return out.logits[:, -1].to(dtype=torch.float32, copy=True)


class CompiledForward(EagerForward):
    """One StaticCache of `max_len` positions, reset and reused run after run, and (on a GPU) the
    one-token forward compiled with CUDA graphs (torch.compile mode "reduce-overhead"). Reused
    because a new cache would have new addresses and the graphs would be recorded again; so one run
    at a time holds it (`session`). A run longer than the cache falls back to the eager forward. The
    prefill (a new shape per prompt) runs eagerly into the same cache.

    compile's CUDA graphs are kept per thread, and a Gradio generator is advanced by whichever
    worker thread is free; so the compiled call runs on one thread of its own (`pool`), the only
    thread the decode path starts, and only here. mode=None: the static cache without compiling
    (what NUCLEUS_STATIC_CACHE=on gives on a CPU, where the tests run this path)."""

    def __init__(self, model, max_len: int, mode: str | None = "reduce-overhead"):
        super().__init__(model)
        cfg = copy.deepcopy(model.config)
        window = getattr(cfg, "sliding_window", None)
        if window is None or window >= max_len:
            # full attention gives the same mask while no sequence outgrows the window, and keeps the
            # cache's length a tensor (a sliding layer's Python int would recompile at every token)
            cfg.sliding_window = None
            if getattr(cfg, "layer_types", None):
                cfg.layer_types = ["full_attention"] * cfg.num_hidden_layers
        self.max_len = max_len
        self.cache = StaticCache(config=cfg, max_cache_len=max_len)
        self.lock = threading.Lock()
        self.compiled, self.pool = None, None
        if mode:
            self.compiled = torch.compile(super().__call__, mode=mode, fullgraph=True, dynamic=False)
        if mode == "reduce-overhead":         # CUDA graphs: one thread of their own (see above)
            self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nucleus-cuda-graphs")

    @contextlib.contextmanager
    def session(self, total: int):
        if total > self.max_len:
            yield DynamicCache(config=self.model.config)
            return
        with self.lock:
            with torch.inference_mode():       # the cache's tensors were made in inference mode, lazily
                self.cache.reset()
            yield self.cache

    def _graph_step(self, cache, ids, positions):
        with torch.inference_mode():           # thread-local: the pool's thread needs its own
            return self.compiled(cache, ids, positions).clone()    # a CUDA graph reuses its output buffer

    def __call__(self, cache, ids, positions):
        if self.compiled is None or cache is not self.cache or ids.shape[1] > 1:
            return super().__call__(cache, ids, positions)
        if self.pool is None:
            return self.compiled(cache, ids, positions)
        return self.pool.submit(self._graph_step, cache, ids, positions).result()


class DecodeLoop:
    """One run: iterate for its Steps, then read `reason`. See the module docstring."""

    def __init__(self, forward: EagerForward, ids: list[int], chain: list[Stage], *, greedy: bool, seed: int,
                 max_new_tokens: int, eos_id: int | None, cancel: threading.Event | None = None,
                 deadline: float | None = None, keep_stages: bool = False):
        self.forward, self.chain = forward, Chain(chain, greedy)
        self.device = next(forward.model.parameters()).device
        self.prompt = torch.tensor([ids], device=self.device)                   # (1, T)
        self.max_new, self.eos_id, self.keep = max_new_tokens, eos_id, keep_stages
        self.cancel, self.deadline = cancel or threading.Event(), deadline
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.reason: str | None = None    # "eos" | "length" | "cancelled" | "time", once it has ended
        self.tokens = 0                   # drawn so far

    def _stopped(self) -> bool:
        if self.cancel.is_set():
            self.reason = "cancelled"
        elif self.deadline is not None and time.monotonic() >= self.deadline:
            self.reason = "time"
        return self.reason is not None

    def __iter__(self) -> Iterator[Step]:
        if self._stopped():
            return
        n = self.prompt.shape[1]
        with torch.inference_mode():   # per step, never across a yield: the consumer may be another thread
            # the sequence grows in place in one buffer; the processors see a view of its filled part
            seq = torch.empty((1, n + self.max_new), dtype=torch.long, device=self.device)
            seq[:, :n] = self.prompt
        ids, positions = self.prompt, torch.arange(n, device=self.device).unsqueeze(0)     # (1, T)
        with self.forward.session(n + self.max_new) as cache:
            while True:
                with torch.inference_mode():
                    raw = self.forward(cache, ids, positions)                         # (B, vocab)
                    scores, stages = self.chain(seq[:, :n], raw, self.keep)
                    token = self.chain.draw(scores, self.generator)                 # (B,)
                    seq[:, n] = token
                n += 1
                self.tokens += 1
                yield Step(token, stages)
                if self.eos_id is not None and int(token[0]) == self.eos_id:
                    self.reason = "eos"
                    return
                if self.tokens >= self.max_new:
                    self.reason = "length"
                    return
                if self._stopped():
                    return
                ids, positions = token.view(1, 1), positions[:, -1:] + 1
