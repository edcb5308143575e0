"""Reading an inference engine's server-sent events (OpenAI's streaming completions) on a thread of
its own, so that the reader of the events can leave at any time: while the engine is silent (a slow
first token, a busy engine), Stop and the time limit are still looked at every POLL_SECONDS.
Leaving abandons the reader thread, which closes the connection when the engine next speaks (or
its read timeout ends); the engine then ends the request."""
from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator

import httpx

CONNECT_SECONDS = 5.0
POLL_SECONDS = 0.25         # how often a silent engine's run looks at Stop and the time limit


class RemoteError(RuntimeError):
    """The engine is unreachable or failed: one sentence a user can act on."""


_END = object()


def events(url: str, body: dict, headers: dict, deadline: float | None) -> Iterator[dict | None]:
    """POST `body` to `url`; the server-sent events, parsed; None every POLL_SECONDS while the
    engine sends nothing. `deadline` (time.monotonic()) bounds the reader's wait."""
    lines: queue.Queue = queue.Queue()
    leave = threading.Event()
    read_limit = max(deadline - time.monotonic(), 1.0) if deadline else 600.0
    base = url.rsplit("/", 1)[0]

    def read():
        try:
            timeout = httpx.Timeout(CONNECT_SECONDS, read=read_limit)
            with httpx.Client(timeout=timeout, headers=headers) as client, \
                    client.stream("POST", url, json=body) as response:
                if response.status_code != 200:
                    lines.put(RemoteError(f"The inference engine refused the request ({error_text(response)})."))
                    return
                for line in response.iter_lines():
                    if leave.is_set():
                        return                       # leaving the block closes the response: the engine stops
                    lines.put(line)
        except httpx.HTTPError as e:
            lines.put(RemoteError(f"The inference engine at {base} is unreachable or dropped the request "
                                  f"({type(e).__name__}); try again in a moment."))
        finally:
            lines.put(_END)

    threading.Thread(target=read, name="nucleus-remote-read", daemon=True).start()
    try:
        while True:
            try:
                line = lines.get(timeout=POLL_SECONDS)
            except queue.Empty:
                yield None
                continue
            if line is _END:
                return
            if isinstance(line, RemoteError):
                raise line
            event = parse(line)
            if event == "done":
                return
            if event is not None:
                yield event
    finally:
        leave.set()


def parse(line: str) -> dict | str | None:
    """One SSE line: a chunk (dict), "done" for [DONE], None for anything that is not data."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if data == "[DONE]":
        return "done"
    try:
        chunk = json.loads(data)
    except ValueError:
        raise RemoteError(f"The inference engine sent an event that is not JSON: {data[:80]!r}.") from None
    if not isinstance(chunk, dict) or not isinstance(chunk.get("choices", []), list):
        raise RemoteError(f"The inference engine sent an event that is not a completion chunk: {data[:80]!r}.")
    if "error" in chunk:
        raise RemoteError(f"The inference engine failed mid-run: {chunk['error']}")
    return chunk


def error_text(response: httpx.Response) -> str:
    try:
        data = json.loads(response.read() or b"{}")
        detail = data.get("error") or data.get("detail") or data.get("message") or data
        if isinstance(detail, dict):
            detail = detail.get("message", detail)
    except ValueError:
        detail = response.text[:200]
    return f"{response.status_code}: {detail}"
