"""Start app.py on a free loopback port, for the benchmarks (bench/load.py) and the end-to-end and
browser tests (tests/serve.py re-exports it). The app's log goes to tests/artifacts/app-PORT.log,
where the end-to-end tests read it."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / "tests" / "artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_app(model_dir, timeout: float = 90, **extra_env):
    """Yields the app's URL once it answers; stops the app when the block ends. `extra_env`: more
    environment variables for the app (e.g. NUCLEUS_BACKEND=url)."""
    port = free_port()
    env = {**os.environ, "NUCLEUS_MODEL": str(model_dir), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           **extra_env}
    env.pop("SPACE_ID", None)
    LOGS.mkdir(parents=True, exist_ok=True)
    log = open(LOGS / f"app-{port}.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--host", "127.0.0.1"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {proc.returncode}; see {log.name}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if time.time() > deadline:
                    raise TimeoutError(f"app.py did not answer within {timeout}s; see {log.name}")
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
