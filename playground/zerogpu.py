"""ZeroGPU: on a ZeroGPU Space each run asks for a GPU lease (`spaces.GPU`) sized to the request;
everywhere else these are no-ops."""
from __future__ import annotations

import os

from nucleus.settings import BOUNDS

ZERO_GPU_TOKENS_PER_SECOND = 15   # assumed speed when sizing a lease (eager 1.13B on a GPU slice)


def lease_seconds(max_new_tokens, max_seconds: float) -> int:
    """GPU seconds to ask for: the request's tokens at a conservative speed, never above its time limit."""
    tokens = max_new_tokens if isinstance(max_new_tokens, (int, float)) else BOUNDS["max_new_tokens"][2]
    return int(min(max_seconds, 5 + tokens / ZERO_GPU_TOKENS_PER_SECOND)) + 5


def gpu_lease(fn, duration=None):
    """spaces.GPU(duration=...)(fn) on a ZeroGPU Space; `duration` may be a callable of the request's
    arguments (ZeroGPU calls it with the same arguments as `fn`)."""
    if os.environ.get("SPACES_ZERO_GPU"):
        try:
            import spaces
            return spaces.GPU(duration=duration)(fn)
        except ImportError:
            pass
    return fn
