"""Code evaluation, HumanEval style: the model completes each problem's function, the program runs
against the problem's unit tests, and pass@1 is the share that pass (one greedy sample each).

    python -m train.code_eval --model runs/code/final                         # openai_humaneval, 164 problems
    python -m train.code_eval --model runs/code/final --problems my.jsonl --max-problems 20

Problems are openai_humaneval's records (task_id, prompt, test, entry_point), from the Hub by
`load_dataset` or from a local JSON-lines file in that schema. Per-problem results go to
--output (JSON lines); the last line printed is the pass@1.

The model's output is untrusted code, so each program runs in a sandbox (`run_program`):
- a subprocess in a fresh session, killed with its whole process group at the wall-clock limit;
- resource limits: CPU seconds, address space (memory), file size, open files, no core dumps;
- a throw-away folder as its working directory, HOME and TMPDIR, deleted afterwards; an empty
  environment; `python -I` (no user site, no PYTHON* variables);
- no network: a new network namespace (`unshare --net`, where the kernel allows it, as for root
  in a container) has no interface but a loopback that is down; and in every case a prelude that
  removes socket creation, process spawning and signals from the program's Python (a program could
  undo a Python-level guard, which is why the namespace comes first where it exists).
This is a sandbox for a model's honest mistakes (loops, huge lists, stray requests), not a jail
for a hostile author: run evaluations of untrusted models in a VM or container as well.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

# HumanEval's own stop sequences: a completion ends where the next top-level statement begins
STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ")
FIELDS = ("task_id", "prompt", "test", "entry_point")

# Run before the program: no sockets, no new processes, no signals (see the module's docstring).
PRELUDE = '''
import os as _os, socket as _socket, subprocess as _subprocess
def _refused(*args, **kwargs):
    raise PermissionError("not allowed in the code evaluation's sandbox")
_socket.socket = _socket.create_connection = _socket.socketpair = _socket.getaddrinfo = _refused
_subprocess.Popen = _subprocess.run = _subprocess.call = _refused
for _name in ("system", "popen", "fork", "forkpty", "execv", "execve", "execvp", "spawnv", "spawnvp", "kill",
              "killpg", "posix_spawn", "posix_spawnp"):
    if hasattr(_os, _name):
        setattr(_os, _name, _refused)
del _os, _socket, _subprocess, _refused, _name
'''


@dataclass(frozen=True)
class Limits:
    seconds: float = 10.0        # wall clock, and CPU seconds (rounded up)
    memory_mb: int = 1024        # address space
    file_mb: int = 16            # largest file it may write
    open_files: int = 64


@dataclass(frozen=True)
class Outcome:
    status: str                  # "passed", "failed", "timed out", "out of memory"
    seconds: float
    detail: str = ""             # the end of stderr, for a failure


@lru_cache(maxsize=1)
def network_namespace() -> bool:
    """Whether programs can run in a network namespace of their own (`unshare --net`)."""
    if not shutil.which("unshare"):
        return False
    try:
        return subprocess.run(["unshare", "--net", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _limit(limits: Limits):
    def apply():            # runs in the child before exec: the limits hold for the program and its children
        mb = 1024 * 1024
        resource.setrlimit(resource.RLIMIT_CPU, (int(limits.seconds) + 1, int(limits.seconds) + 1))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_mb * mb, limits.memory_mb * mb))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_mb * mb, limits.file_mb * mb))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


def run_program(code: str, limits: Limits = Limits()) -> Outcome:
    """Run untrusted Python in the sandbox; its outcome, whatever the program does."""
    with tempfile.TemporaryDirectory(prefix="nucleus-eval-") as tmp:
        (Path(tmp) / "program.py").write_text(PRELUDE + "\n" + code, encoding="utf-8")
        command = [sys.executable, "-I", "program.py"]
        if network_namespace():
            command = ["unshare", "--net", *command]
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8"}
        started = time.perf_counter()
        proc = subprocess.Popen(command, cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True, preexec_fn=_limit(limits))
        try:
            _, err = proc.communicate(timeout=limits.seconds)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)          # the program and anything it started
            proc.communicate()
            return Outcome("timed out", time.perf_counter() - started)
        seconds = time.perf_counter() - started
    tail = err.decode("utf-8", "replace")[-500:]
    if proc.returncode == 0:
        return Outcome("passed", seconds)
    if "MemoryError" in tail or proc.returncode == -signal.SIGKILL:    # its own MemoryError, or the OOM killer
        return Outcome("out of memory", seconds, tail)
    if proc.returncode == -signal.SIGXCPU:
        return Outcome("timed out", seconds)
    return Outcome("failed", seconds, tail)


# ---- problems and completions ------------------------------------------------------------------
def load_problems(source: str, max_problems: int | None = None) -> list[dict]:
    """HumanEval-shaped records from a local JSON-lines file or the Hub (its `test` split)."""
    if Path(source).exists():
        records = []
        for n, line in enumerate(Path(source).read_text(encoding="utf-8").splitlines(), 1):
            try:
                records += [json.loads(line)] if line.strip() else []
            except json.JSONDecodeError:
                raise SystemExit(f"{source}: line {n} is not JSON") from None
    else:
        from datasets import load_dataset

        records = list(load_dataset(source, split="test"))
    for i, r in enumerate(records):
        missing = [f for f in FIELDS if not isinstance(r, dict) or not isinstance(r.get(f), str)]
        if missing:
            raise SystemExit(f"{source}: problem {i + 1} has no {', '.join(missing)} (HumanEval's fields: "
                             f"{', '.join(FIELDS)})")
    return records[:max_problems] if max_problems else records


def truncate(completion: str) -> str:
    """The completion up to the first of HumanEval's stop sequences."""
    cut = min((i for i in (completion.find(s) for s in STOPS) if i >= 0), default=len(completion))
    return completion[:cut]


def program(problem: dict, completion: str) -> str:
    """What runs: the prompt, the model's body, the problem's tests, and the call of its check."""
    return f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def evaluate(lm, problems: list[dict], settings, limits: Limits, say=print):
    """Per problem: (record for the output file, Outcome)."""
    from tqdm.auto import tqdm

    from nucleus.backend import generate

    for p in tqdm(problems, desc="problems", unit=" problem", disable=None):
        update = generate(lm, p["prompt"], settings)
        completion = truncate(update.text)
        outcome = run_program(program(p, completion), limits)
        yield {"task_id": p["task_id"], "completion": completion, **asdict(outcome)}, outcome


# ---- the command -------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m train.code_eval", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="the checkpoint to evaluate: a folder or a Hub id")
    p.add_argument("--problems", default="openai_humaneval",
                   help="a Hub dataset in HumanEval's schema (default openai_humaneval) or a local JSON-lines file")
    p.add_argument("--max-problems", type=int, default=None, help="evaluate only the first N problems")
    p.add_argument("--max-new-tokens", type=int, default=384, help="longest completion per problem")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds each program may run")
    p.add_argument("--memory-mb", type=int, default=1024, help="memory each program may use")
    p.add_argument("--output", default=None, help="per-problem results, JSON lines (default: print only)")
    p.add_argument("--device", default="auto", help="as for the Space: auto, cpu, cuda")
    args = p.parse_args(argv)
    if args.timeout <= 0 or args.memory_mb < 64 or (args.max_problems is not None and args.max_problems < 1):
        p.error("--timeout must be > 0, --memory-mb at least 64, --max-problems at least 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    import nucleus
    from nucleus.settings import SamplingSettings

    problems = load_problems(args.problems, args.max_problems)
    lm = nucleus.load(args.model, device=args.device)
    # greedy, as pass@1 from one sample is usually reported; the stop strings end a completion early
    settings = SamplingSettings(temperature=0, max_new_tokens=args.max_new_tokens, stop=STOPS[:4])
    limits = Limits(args.timeout, args.memory_mb)
    print(f"evaluating {lm.name} on {len(problems)} problems from {args.problems}; sandbox: "
          f"{'network namespace + ' if network_namespace() else ''}Python guard, {args.timeout:g} s, "
          f"{args.memory_mb} MB per program")
    counts: dict[str, int] = {}
    out = open(args.output, "w", encoding="utf-8") if args.output else None
    try:
        for record, outcome in evaluate(lm, problems, settings, limits):
            counts[outcome.status] = counts.get(outcome.status, 0) + 1
            if out:
                out.write(json.dumps(record) + "\n")
                out.flush()
    finally:
        if out:
            out.close()
    passed = counts.get("passed", 0)
    summary = {"model": str(args.model), "problems": len(problems), "pass@1": passed / len(problems), **counts}
    print(f"pass@1: {passed}/{len(problems)} = {passed / len(problems):.1%} ({', '.join(f'{v} {k}' for k, v in sorted(counts.items()))})")
    return summary


if __name__ == "__main__":
    main()
