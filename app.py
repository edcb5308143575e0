"""The Nucleus Space: a completion playground for Nucleus in the browser.

    python app.py                      # serves the model chosen by nucleus.resolve_model
    python app.py --model PATH_OR_ID --port 7860
    python app.py --backend http://127.0.0.1:8000/v1     # an inference engine generates

The entry point only: flags, the model catalog, launch. The page is the `playground` package;
models, sampling and validation live in `nucleus`, shared with the CLI and the API.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from nucleus.options import add_model_flags, check_environment, ignored_local_flags

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home from a playground

log = logging.getLogger("nucleus.space")

CONCURRENCY = 1            # generations at once per replica: on CPU a second one only halves both
REMOTE_CONCURRENCY = 8     # with a remote engine (--backend): it batches requests, so more may run at once
MAX_SECONDS = 60.0         # default time limit per request (--max-seconds / NUCLEUS_MAX_SECONDS)


# ---- command line (parsed before the heavy imports, so --help answers at once) -------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Serve the Nucleus playground.")
    add_model_flags(p)
    p.add_argument("--host", default=None, help="address to bind (default: GRADIO_SERVER_NAME or 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default: GRADIO_SERVER_PORT or 7860)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="time limit of one request in seconds, prefill included (default: NUCLEUS_MAX_SECONDS "
                        f"or {MAX_SECONDS:g}); a run that reaches it ends with the finish reason 'time limit'")
    p.add_argument("--concurrency", type=int, default=None,
                   help=f"generations at once (default: {CONCURRENCY} locally, {REMOTE_CONCURRENCY} with --backend: "
                        "the engine batches them)")
    args = p.parse_args(argv)
    check_environment(p)
    if args.max_seconds is None:
        text = os.environ.get("NUCLEUS_MAX_SECONDS", "").strip()
        try:
            args.max_seconds = float(text) if text else MAX_SECONDS
        except ValueError:
            p.error(f"NUCLEUS_MAX_SECONDS={text!r} (from the environment): must be a number of seconds")
    if args.port is not None and not 1 <= args.port <= 65535:
        p.error(f"--port must be 1 to 65535, got {args.port}")
    if args.concurrency is not None and args.concurrency < 1:
        p.error(f"--concurrency must be at least 1, got {args.concurrency}")
    if not args.max_seconds > 0:
        p.error(f"--max-seconds must be > 0, got {args.max_seconds:g}")
    return args


# ---- the model catalog ---------------------------------------------------------------------------
def open_catalog(args):
    """(catalog with its first model loaded, why that model, fallback note). A model the user named
    that fails to load is fatal; the automatically chosen Hub model falls back to the bundled one."""
    import nucleus
    from nucleus import loading
    from nucleus.remote import connect

    if args.backend:
        why = "NUCLEUS_BACKEND" if os.environ.get("NUCLEUS_BACKEND") == args.backend else "--backend flag"
        for flag in ignored_local_flags(args):
            log.warning("%s is ignored with --backend: the engine serves the model as it was started", flag)
        return nucleus.RemoteCatalog(connect(args.backend, args.backend_engine, model=args.model)), why, ""
    source, why = nucleus.resolve_model(args.model)
    try:
        catalog = nucleus.ModelCatalog(source, args.device, args.dtype, quantize=args.quantize)
        catalog.get(catalog.labels[0])   # load now: fail at start-up, not on the first visitor
        return catalog, why, ""
    except nucleus.ModelLoadError as e:
        if why != "Hugging Face Hub" or not (loading.BUNDLED_MODEL / "config.json").is_file():
            raise   # only the automatically chosen Hub model falls back
        fallback = f"The Hub model {source} could not be loaded, so the bundled model is served instead: {e}"
        log.warning(fallback)
        catalog = nucleus.ModelCatalog(str(loading.BUNDLED_MODEL), args.device, args.dtype, quantize=args.quantize,
                                       probe_hub=False)
        catalog.get(catalog.labels[0])
        return catalog, "fallback (the Hub model failed to load)", fallback


def port_free(host: str | None, port: int) -> bool:
    import socket
    with socket.socket() as s:
        try:
            s.bind((host or "127.0.0.1", port))
            return True
        except OSError:
            return False


# ---- launch ----------------------------------------------------------------------------------------
def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.port is not None and not port_free(args.host, args.port):   # say so before a long model load
        sys.exit(f"error: port {args.port} is in use; choose another with --port")
    logging.getLogger("nucleus").setLevel(logging.INFO)   # ours: one line per model load and API request
    import gradio as gr

    import nucleus
    from playground import build_demo, layout
    from playground.session import QUEUE_SIZE

    try:
        catalog, why, fallback = open_catalog(args)
    except nucleus.ModelLoadError as e:
        sys.exit(f"error: {e}")
    lm = catalog.get(catalog.labels[0])
    concurrency = args.concurrency or (REMOTE_CONCURRENCY if args.backend else CONCURRENCY)
    log.info("serving %s, chosen by %s: %s; time limit %gs per request; %d at once", lm.source, why, lm.describe(),
             args.max_seconds, concurrency)
    demo = build_demo(catalog, why, fallback, args.max_seconds, concurrency)
    demo.queue(max_size=QUEUE_SIZE * concurrency, default_concurrency_limit=concurrency)
    from starlette.middleware import Middleware

    from playground.api import FillDefaults

    demo.launch(server_name=args.host, server_port=args.port, theme=gr.themes.Soft(), css=layout.CSS,
                app_kwargs={"middleware": [Middleware(FillDefaults)]})


if __name__ == "__main__":
    main(parse_args())
