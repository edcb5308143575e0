"""Many visitors at once: the Space with its local backend against the Space on a remote engine.

    python bench/load.py                          # 8 users, 60 s each side, the bundled nano
    python bench/load.py --users 32 --seconds 120 --tokens 16
    python bench/load.py --engine-url http://127.0.0.1:8012/v1     # + a running llama-server

Each side starts `app.py` on a loopback port (the remote side also starts `transformers serve`
with the same model and points the Space at it with --backend), then N gradio_client users send
/generate requests back to back for a bounded time. Printed per side: completed requests, errors
by kind (queue full, other), p50/p95 latency and generated tokens/s over the whole run. Loopback
only; every loop is bounded in count and time. --engine-url adds a third side: the Space in front of
an engine you started (llama.cpp's server, vLLM, ...). --repetition-penalty sets the penalty every
user sends, on every side (an engine Nucleus does not know takes only 1). Not a test: figures depend on the machine's load,
printed with them. On CPU the engine has little to batch with; the figure that matters is vLLM on
a GPU (bench/gpu_suite.py is where a lent GPU runs things).
"""
from __future__ import annotations

import argparse
import collections
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from bench.app_server import free_port, running_app
from nucleus.loading import BUNDLED_MODEL

MAX_REQUESTS_PER_USER = 500     # a bound besides time


@contextmanager
def engine(model: Path):
    """`transformers serve` with `model` on a loopback port, until the block ends."""
    port = free_port()
    cli = os.path.join(os.path.dirname(sys.executable), "transformers")
    proc = subprocess.Popen([cli, "serve", "--host", "127.0.0.1", "--port", str(port), str(model)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 180
        while True:
            try:
                if b"loaded" in urllib.request.urlopen(url + "/models", timeout=2).read():
                    break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("transformers serve did not start") from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def hammer(url: str, users: int, seconds: float, tokens: int, rep: float | None = None) -> dict:
    from gradio_client import Client

    latencies, generated, errors = [], [0], collections.Counter()
    lock, stop_at = threading.Lock(), time.monotonic() + seconds

    def user(i: int):
        client = Client(url, verbose=False)
        for n in range(MAX_REQUESTS_PER_USER):
            if time.monotonic() >= stop_at:
                return
            t = time.monotonic()
            try:
                extra = {} if rep is None else {"repetition_penalty": rep}
                out = client.predict(f"### Lesson {i}-{n}: Bees\n", max_new_tokens=tokens, seed=n,
                                     api_name="/generate", **extra)
                with lock:
                    latencies.append(time.monotonic() - t)
                    generated[0] += out["tokens"]
            except Exception as e:   # the kind is what the figure reports
                with lock:
                    errors["queue full" if "queue" in str(e).lower() or "busy" in str(e).lower() else
                           type(e).__name__] += 1
                time.sleep(1)

    start = time.monotonic()
    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 300)
    wall = time.monotonic() - start
    q = statistics.quantiles(latencies, n=20) if len(latencies) >= 2 else [float("nan")] * 19
    return {"completed": len(latencies), "errors": dict(errors), "p50": statistics.median(latencies)
            if latencies else float("nan"), "p95": q[18], "tokens_per_second": generated[0] / wall}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--model", default=str(BUNDLED_MODEL))
    p.add_argument("--engine-url", default=None, help="also the Space on this running engine (ends in /v1)")
    p.add_argument("--repetition-penalty", type=float, default=None, help="sent by every user (default: the Space's)")
    args = p.parse_args(argv)
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    rows = []
    with running_app(Path(args.model)) as url:
        rows.append(("local backend (concurrency 1)", hammer(url, args.users, args.seconds, args.tokens,
                                                             args.repetition_penalty)))
    with engine(Path(args.model)) as backend, running_app(Path(args.model), NUCLEUS_BACKEND=backend) as url:
        rows.append(("remote: transformers serve (concurrency 8)", hammer(url, args.users, args.seconds, args.tokens,
                                                                          args.repetition_penalty)))
    if args.engine_url:
        with running_app(Path(args.model), NUCLEUS_BACKEND=args.engine_url) as url:
            rows.append((f"remote: {args.engine_url} (concurrency 8)", hammer(url, args.users, args.seconds,
                                                                              args.tokens, args.repetition_penalty)))
    print(f"\n{args.users} users, {args.seconds:g} s, {args.tokens} new tokens per request, model {args.model}\n")
    print("| Space | completed | errors | p50 latency | p95 latency | generated tokens/s |\n|---|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['completed']} | {r['errors'] or 'none'} | {r['p50']:.2f} s | {r['p95']:.2f} s "
              f"| {r['tokens_per_second']:.1f} |")
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
