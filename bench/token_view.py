"""What the token view costs: decode tokens/s with the per-token records on and off, same process.

    python bench/token_view.py                       # the bundled nano and a random-weight 1.13B
    python bench/token_view.py --skip-1b --runs 5

The records are taken inside the same generate call (nucleus/tokenview.py), so the only cost is
the extra softmaxes and comparisons per token. Runs alternate off/on so load drifts hit both
alike; the table gives the median of each and every single run. Not a test: timings on a shared
machine vary; the load average is printed with the figures.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import time  # noqa: E402

import nucleus  # noqa: E402
from nucleus import tokenview  # noqa: E402
from nucleus.loading import BUNDLED_MODEL  # noqa: E402

PROMPT = "### Lesson: The Water Cycle\n### Introduction\n"


class RecorderClock:
    """Thread CPU time spent in the recorder's own code (snapshots and per-step summaries): a
    figure that load on the other cores disturbs far less than wall-clock tokens/s."""

    def __init__(self):
        self.seconds = 0.0
        for name in ("_see", "_summarise"):
            real = getattr(tokenview.Recorder, name)

            def timed(rec, *a, _real=real, **k):
                t = time.thread_time()
                try:
                    return _real(rec, *a, **k)
                finally:
                    self.seconds += time.thread_time() - t
            setattr(tokenview.Recorder, name, timed)


def measure(lm, tokens: int, runs: int, top_n: int, clock: RecorderClock) -> dict:
    settings = nucleus.SamplingSettings(temperature=0.7, top_p=0.9, repetition_penalty=1.5,
                                        max_new_tokens=tokens, seed=1)
    nucleus.generate(lm, PROMPT, settings.replace(max_new_tokens=4))          # warm-up
    off, on, share = [], [], []
    for _ in range(runs):
        for record, out in ((0, off), (top_n, on)):
            clock.seconds = 0.0
            u = nucleus.generate(lm, PROMPT, settings, record=record)
            out.append(u.tokens_per_second)
            if record:   # the worker thread's CPU time is not ours: compare with wall time per token
                share.append(clock.seconds / u.seconds)
    return {"off": off, "on": on, "overhead": 1 - statistics.median(on) / statistics.median(off),
            "recorder_share": statistics.median(share)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--top-n", type=int, default=10, help="candidates kept per token (the page uses 10)")
    p.add_argument("--skip-1b", action="store_true")
    p.add_argument("--checkpoint-1b", default=str(ROOT / "runs" / "space-rehearsal" / "nucleus-1b-random"))
    args = p.parse_args(argv)

    models = [("nucleus-nano (bundled)", str(BUNDLED_MODEL), args.tokens)]
    if not args.skip_1b:
        from space_rehearsal import make_checkpoint
        models.append(("Nucleus-1.13B shape (random, int8 on CPU)", str(make_checkpoint(Path(args.checkpoint_1b))),
                       min(args.tokens, 64)))
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    rows, clock = [], RecorderClock()
    for name, path, tokens in models:
        lm = nucleus.load(path)
        r = measure(lm, tokens, args.runs, args.top_n, clock)
        rows.append((name, tokens, r))
        del lm
    print("\n| model | new tokens | view off, tokens/s (runs) | view on, tokens/s (runs) | wall overhead "
          "| recorder CPU time / run time |\n|---|---|---|---|---|---|")
    for name, tokens, r in rows:
        print(f"| {name} | {tokens} | {statistics.median(r['off']):.1f} ({', '.join(f'{x:.1f}' for x in r['off'])}) "
              f"| {statistics.median(r['on']):.1f} ({', '.join(f'{x:.1f}' for x in r['on'])}) "
              f"| {100 * r['overhead']:.1f}% | {100 * r['recorder_share']:.1f}% |")
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
