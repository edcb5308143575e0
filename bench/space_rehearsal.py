"""Space rehearsal: the real Nucleus-1.13B shape, served by app.py on a free CPU Space's budget.

    python bench/space_rehearsal.py                              # ~3-5 min on 2 cores; JSON in runs/
    python bench/space_rehearsal.py --out rehearsal.json --users 4 --requests 3
    python bench/space_rehearsal.py --app-args "--quantize none"     # the same, bf16 weights

Builds (once, ~20 s, 2.3 GB) a random-weight checkpoint with exactly the Hub model's config.json
(nucleus/architecture.py's 1.13B MistralConfig, bf16 safetensors) and the tokenizer files, starts
`app.py --model FOLDER` as a subprocess limited to 2 cores (`taskset`) and 16 GiB (`prlimit --as`,
an address-space limit: stricter than a Space's cgroup limit on resident memory), and measures,
through the app's own API (`/generate` with gradio_client, loopback only):

  start-up        process start until the page answers (imports, load, quantisation)
  peak RSS        of the app's process tree, sampled from /proc every 0.2 s, and the main process's VmHWM
  time to first   a 512-token prompt: submit until the first streamed update
  tokens/s        over 200 new tokens after that prompt, measured by the client between updates
  Stop latency    cancel a streaming request, until the next visitor's request starts running
  4 users         p50/p95 request latency of 4 concurrent clients, a bounded number of requests each

Random weights: speed and memory do not depend on the values, the text is meaningless. Not a test:
timings on a shared machine vary; the load average (from `uptime`) is printed with the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from bench.app_server import free_port

ROOT = Path(__file__).resolve().parent.parent

SPACE_CORES, SPACE_MEMORY = 2, 16 * 2**30      # a free CPU Space: 2 vCPU, 16 GB
SAMPLE_SECONDS = 0.2


# ---- the checkpoint -----------------------------------------------------------------------------
def make_checkpoint(folder: Path, seed: int = 0) -> Path:
    """The 1.13B config and random bf16 weights (normal, std 0.02; norms 1), written tensor by tensor
    from a model built on the meta device, so no fp32 copy of the model is ever made."""
    if (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file():
        return folder
    import torch
    from safetensors.torch import save_file

    from nucleus import architecture
    from nucleus.tokenizer import load_tokenizer

    cfg = architecture.config("nucleus-1b")
    cfg.architectures, cfg.dtype = ["MistralForCausalLM"], torch.bfloat16
    shapes = {k: v.shape for k, v in architecture.build(cfg, device="meta").state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in shapes.items():
        t = torch.empty(shape, dtype=torch.bfloat16)
        if name.endswith("norm.weight"):
            t.fill_(1.0)
        else:
            for i in range(0, shape[0], 1024):        # fp32 draws in row blocks, stored as bf16
                t[i:i + 1024] = torch.randn((min(1024, shape[0] - i), *shape[1:]), generator=gen) * 0.02
        tensors[name] = t
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    cfg.save_pretrained(tmp)
    load_tokenizer().save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def prompt_of(n_tokens: int, folder: Path) -> tuple[str, int]:
    """(English text from this README, its length in tokens with BOS) of about n_tokens tokens."""
    from nucleus.tokenizer import load_tokenizer

    tok = load_tokenizer(folder)
    ids = tok.encode((ROOT / "README.md").read_text(), add_special_tokens=False)
    ids = (ids * (n_tokens // len(ids) + 1))[:n_tokens - 1]
    text = tok.decode(ids)
    return text, len(tok.encode(text))


# ---- the app process ------------------------------------------------------------------------------
def limited(cmd: list[str], cores: int, memory: int) -> tuple[list[str], str]:
    """cmd wrapped in taskset/prlimit when they exist, and a sentence saying how it was limited."""
    how = []
    if shutil.which("prlimit"):
        cmd = ["prlimit", f"--as={memory}", "--", *cmd]
        how.append(f"address space <= {memory / 2**30:g} GiB (prlimit --as)")
    else:
        how.append("memory NOT limited (no prlimit)")
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", ",".join(map(str, range(cores))), *cmd]
        how.append(f"cores 0-{cores - 1} (taskset; this machine has {os.cpu_count()})")
    else:
        how.append("cores NOT limited (no taskset)")
    return cmd, "; ".join(how)


class RssSampler(threading.Thread):
    """Peak resident bytes of a process and all its children, sampled from /proc."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        import psutil

        self.proc, self.peak, self.stopped = psutil.Process(pid), 0, threading.Event()

    def tree_rss(self) -> int:
        import psutil

        total = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:     # a child that just exited
                pass
        return total

    def run(self):
        import psutil

        while not self.stopped.wait(SAMPLE_SECONDS):
            try:
                self.peak = max(self.peak, self.tree_rss())
            except psutil.Error:
                return

    def hwm(self) -> int:
        """VmHWM of the main process: its exact peak, which sampling can miss."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0


def wait_until_up(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"app.py exited with {proc.returncode} during start-up; see {log}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"app.py did not answer within {timeout:.0f} s; see {log}")
            time.sleep(0.1)


# ---- measurements through the API ------------------------------------------------------------------
STARTED = {"PROCESSING", "ITERATING", "PROGRESS", "FINISHED"}   # gradio_client Status names


def stream_once(client, prompt: str, new_tokens: int, seed: int) -> dict:
    """Submit one streaming /generate and time its updates."""
    t0 = time.perf_counter()
    job = client.submit(prompt=prompt, max_new_tokens=new_tokens, seed=seed, api_name="/generate")
    first = first_tokens = None
    last = None
    for out in job:
        if out["tokens"] >= 1 and first is None:
            first, first_tokens = time.perf_counter(), out["tokens"]
        last = out
    end = time.perf_counter()
    final = job.result()
    decode_tokens = final["tokens"] - (first_tokens or 0)
    return {"ttft_s": round(first - t0, 2) if first else None, "tokens_at_first_update": first_tokens,
            "total_s": round(end - t0, 2), "tokens": final["tokens"], "finish_reason": final["finish_reason"],
            "server_tokens_per_s": final["tokens_per_second"], "updates_seen": last is not None,
            "decode_tokens_per_s": round(decode_tokens / (end - first), 2) if first and end > first else None}


def stop_latency(client, other, prompt: str, log: Path) -> dict:
    """Cancel a long streaming request once it produces text; time until another visitor's request
    (1 new token) starts running, i.e. until the one generation slot is free again."""
    job = client.submit(prompt=prompt, max_new_tokens=1000, seed=1, api_name="/generate")
    for out in job:
        if out["tokens"] >= 8:
            break
    time.sleep(1.0)                                   # well into decoding
    t0 = time.perf_counter()
    job.cancel()
    nxt = other.submit(prompt="### Lesson: Salt\n", max_new_tokens=1, seed=2, api_name="/generate")
    started = None
    while started is None and time.perf_counter() - t0 < 120:
        if nxt.status().code.name in STARTED:
            started = time.perf_counter()
        time.sleep(0.01)
    nxt.result(timeout=120)
    done = time.perf_counter()
    time.sleep(0.5)                                   # let the server log its line for the cancelled run
    lines = [ln for ln in log.read_text().splitlines() if "api /generate" in ln]
    cancelled = [ln for ln in lines if "cancel" in ln]
    return {"stop_to_next_start_s": round(started - t0, 2) if started else None,
            "stop_to_next_done_s": round(done - t0, 2),
            "server_log_of_cancelled_run": cancelled[-1].split("api /generate: ", 1)[-1] if cancelled else None}


def concurrent_users(url: str, users: int, requests: int, new_tokens: int) -> dict:
    """`users` clients at once, each sending `requests` requests back to back."""
    from gradio_client import Client

    clients = [Client(url, verbose=False) for _ in range(users)]
    latencies, errors, lock = [], [], threading.Lock()

    def visitor(k: int):
        for r in range(requests):
            t = time.perf_counter()
            try:
                clients[k].predict(prompt=f"### Lesson: Topic {k}-{r}\n", max_new_tokens=new_tokens,
                                   seed=100 * k + r, api_name="/generate")
                with lock:
                    latencies.append(time.perf_counter() - t)
            except Exception as e:  # report, do not hide: a queue-full or server error counts here
                with lock:
                    errors.append(f"{type(e).__name__}: {str(e)[:200]}")

    t0 = time.perf_counter()
    threads = [threading.Thread(target=visitor, args=(k,)) for k in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=20, method="inclusive") if len(latencies) >= 2 else [float("nan")] * 19
    return {"users": users, "requests": users * requests, "new_tokens": new_tokens, "ok": len(latencies),
            "errors": errors, "p50_s": round(statistics.median(latencies), 2) if latencies else None,
            "p95_s": round(q[18], 2), "max_s": round(max(latencies), 2) if latencies else None,
            "wall_s": round(wall, 1)}


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load average: %.2f, %.2f, %.2f" % os.getloadavg()


# ---- main -------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default=str(ROOT / "runs" / "space-rehearsal"),
                   help="where the random 1.13B checkpoint and the app log go (default: runs/space-rehearsal)")
    p.add_argument("--out", default=None, help="JSON results (default: WORK/result.json)")
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=200)
    p.add_argument("--users", type=int, default=4)
    p.add_argument("--requests", type=int, default=5, help="requests per concurrent user")
    p.add_argument("--user-tokens", type=int, default=32, help="new tokens per concurrent-user request")
    p.add_argument("--startup-timeout", type=float, default=300)
    p.add_argument("--app-args", default="", help="extra arguments for app.py, e.g. '--quantize none'")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    work = Path(args.work)
    out_path = Path(args.out) if args.out else work / "result.json"
    t = time.perf_counter()
    folder = make_checkpoint(work / "nucleus-1b-random")
    print(f"checkpoint {folder} ({time.perf_counter() - t:.0f} s)", flush=True)
    prompt, prompt_tokens = prompt_of(args.prompt_tokens, folder)

    from gradio_client import Client

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    cmd, how = limited([sys.executable, "app.py", "--model", str(folder), "--port", str(port),
                        "--host", "127.0.0.1", *args.app_args.split()], SPACE_CORES, SPACE_MEMORY)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("SPACE_ID", None)
    log = work / "app.log"
    result = {"machine_load_before": uptime(), "limits": how, "command": " ".join(cmd),
              "prompt_tokens": prompt_tokens}
    print(f"limits: {how}\n{result['machine_load_before']}", flush=True)
    with open(log, "w") as log_file:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        sampler = RssSampler(proc.pid)
        sampler.start()
        try:
            wait_until_up(url, proc, log, args.startup_timeout)
            result["startup_s"] = round(time.perf_counter() - t0, 1)
            served = [ln for ln in log.read_text().splitlines() if " serving " in ln]
            result["served"] = served[-1].split(" serving ", 1)[-1] if served else None
            result["rss_after_startup_gb"] = round(sampler.tree_rss() / 1e9, 2)
            print(f"up after {result['startup_s']} s", flush=True)
            client, other = Client(url, verbose=False), Client(url, verbose=False)
            t = time.perf_counter()
            client.predict(prompt="Hello", max_new_tokens=1, seed=0, api_name="/generate")
            result["first_request_s"] = round(time.perf_counter() - t, 2)
            result["long_prompt"] = stream_once(client, prompt, args.new_tokens, seed=0)
            print("long prompt:", result["long_prompt"], flush=True)
            result["stop"] = stop_latency(client, other, prompt, log)
            print("stop:", result["stop"], flush=True)
            result["concurrent"] = concurrent_users(url, args.users, args.requests, args.user_tokens)
            print("concurrent:", result["concurrent"], flush=True)
            result["peak_rss_tree_sampled_gb"] = round(max(sampler.peak, sampler.tree_rss()) / 1e9, 2)
            result["peak_rss_main_vmhwm_gb"] = round(sampler.hwm() / 1e9, 2)
        finally:
            sampler.stopped.set()
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
    result["machine_load_after"] = uptime()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result, args)
    print(f"\nJSON: {out_path}\napp log: {log}")
    return result


def print_table(r: dict, args) -> None:
    lp, st, cu = r["long_prompt"], r["stop"], r["concurrent"]
    rows = [
        ("start-up (process start -> page answers)", f"{r['startup_s']} s"),
        ("peak RSS, app process tree (sampled / main VmHWM)",
         f"{r['peak_rss_tree_sampled_gb']} / {r['peak_rss_main_vmhwm_gb']} GB"),
        ("first request after start-up (1 token)", f"{r['first_request_s']} s"),
        (f"time to first token, {r['prompt_tokens']}-token prompt", f"{lp['ttft_s']} s"),
        (f"tokens/s over {lp['tokens']} new tokens (client; server incl. prefill)",
         f"{lp['decode_tokens_per_s']} ; {lp['server_tokens_per_s']} ({lp['finish_reason']})"),
        ("Stop -> next request starts (-> it is done)",
         f"{st['stop_to_next_start_s']} s ({st['stop_to_next_done_s']} s)"),
        (f"{cu['users']} users x {args.requests} requests, {cu['new_tokens']} tokens: p50 / p95",
         f"{cu['p50_s']} / {cu['p95_s']} s ({cu['ok']} ok, {len(cu['errors'])} errors, {cu['wall_s']} s wall)"),
    ]
    width = max(len(a) for a, _ in rows)
    print(f"\nSpace rehearsal: Nucleus-1.13B shape (random weights), {r['limits']}\n  served: {r['served']}")
    for a, b in rows:
        print(f"  {a:<{width}}  {b}")
    print(f"  machine load before: {r['machine_load_before']}\n  machine load after:  {r['machine_load_after']}")


if __name__ == "__main__":
    main()
