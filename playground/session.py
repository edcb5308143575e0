"""Server-side state of the page: the Space (what every visitor shares: the catalog, the presets,
the limits) and each visitor's runs, kept per Gradio session and dropped when the visitor leaves.

Why a registry and not gr.State for the runs: Stop must reach a run while it streams, from another
request of the same visitor, and gr.State is only read when an event starts. The page's own data
(history, the last run, the token map) does live in gr.State, per visitor.

The busy count ("N runs ahead of yours") is counted from the registry, not kept as a counter, so
a visitor who leaves with runs still queued takes them out of it (`leave`).
"""
from __future__ import annotations

import collections
import math
import threading
import time
from dataclasses import dataclass, field

import gradio as gr

QUEUE_SIZE = 16          # runs waiting per generation slot beyond which a new one is turned away
GONE_KEPT = 1000         # visitors who left, remembered so that their queued runs do not start


@dataclass
class Visitor:
    armed: collections.deque = field(default_factory=collections.deque)   # cancel flags of queued runs, oldest first
    running: list = field(default_factory=list)     # cancel flags of the runs streaming now
    stopped_at: float = -math.inf                   # browser clock (ms) of the last Stop click


class Sessions:
    """Each visitor's runs: armed at the click (a Stop from then on reaches them), claimed when the
    queue starts them, finished when they end; Stop sets every flag of the visitor."""

    def __init__(self):
        self._lock = threading.Lock()
        self._visitors: dict[str, Visitor] = {}
        self._gone: collections.OrderedDict[str, None] = collections.OrderedDict()   # recent leavers
        self.mean_seconds = 10.0          # a run's mean duration, for the busy message

    def busy(self, session: str | None = None) -> int:
        """Runs queued or running: everyone's, or one visitor's."""
        with self._lock:
            visitors = [self._visitors.get(session, Visitor())] if session else list(self._visitors.values())
            return sum(len(v.armed) + len(v.running) for v in visitors)

    def arm(self, session: str, clicked_ms, limit: int) -> threading.Event:
        """A cancel flag for a run just clicked; already set when a Stop was clicked after it (the two
        requests may arrive in either order). A full queue is refused with the wait it would mean."""
        waiting = self.busy()
        if waiting >= limit:
            raise gr.Error(f"The Space is busy: {waiting} runs are ahead of yours, about "
                           f"{waiting * self.mean_seconds / 60:.0f} min of work. Try again in a minute, or "
                           "duplicate the Space to have one of your own.", print_exception=False)
        flag = threading.Event()
        with self._lock:
            visitor = self._visitors.setdefault(session, Visitor())
            if isinstance(clicked_ms, (int, float)) and visitor.stopped_at >= clicked_ms:
                flag.set()
            visitor.armed.append(flag)
        return flag

    def claim(self, session: str) -> threading.Event:
        """The flag of the visitor's oldest queued run, now running (a fresh one if none was armed:
        an API call, or a visitor who has left)."""
        with self._lock:
            visitor = self._visitors.get(session)
            flag = visitor.armed.popleft() if visitor and visitor.armed else threading.Event()
            if visitor is not None:
                visitor.running.append(flag)
            if session in self._gone:     # queued before its visitor left: nobody would see it
                flag.set()
        return flag

    def finish(self, session: str, flag: threading.Event, began: float) -> None:
        with self._lock:
            visitor = self._visitors.get(session)
            if visitor is not None and flag in visitor.running:
                visitor.running.remove(flag)
            self.mean_seconds = 0.8 * self.mean_seconds + 0.2 * (time.monotonic() - began)

    def stop(self, session: str, clicked_ms) -> tuple[int, int]:
        """Stop every run of the visitor, queued or running; remember when, for runs armed later
        whose click came before it. Returns (running, queued): how many of each were stopped."""
        with self._lock:
            visitor = self._visitors.setdefault(session, Visitor())
            if isinstance(clicked_ms, (int, float)):
                visitor.stopped_at = clicked_ms
            for flag in (*visitor.armed, *visitor.running):
                flag.set()
            return len(visitor.running), len(visitor.armed)

    def leave(self, session: str) -> None:
        """The visitor closed the page: their runs stop, and no longer count as busy."""
        with self._lock:
            visitor = self._visitors.pop(session, None)
            self._gone[session] = None
            while len(self._gone) > GONE_KEPT:
                self._gone.popitem(last=False)
        for flag in (*visitor.armed, *visitor.running) if visitor else ():
            flag.set()


@dataclass
class Space:
    """What every visitor's page shares: fixed at start-up, except the sessions."""
    catalog: object                 # nucleus.ModelCatalog or nucleus.RemoteCatalog
    presets: dict
    initial_label: str
    chosen_by: str = ""
    fallback: str = ""
    max_seconds: float = 60.0
    concurrency: int = 1
    sessions: Sessions = field(default_factory=Sessions)
    slider_range: dict = field(default_factory=dict)     # setting -> (min, max) of its slider on this page

    @property
    def queue_limit(self) -> int:
        return QUEUE_SIZE * self.concurrency


def session_of(request: gr.Request | None) -> str:
    return request.session_hash if request is not None and request.session_hash else "local"
