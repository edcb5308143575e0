"""The code evaluation (train/code_eval.py): the sandbox stops a program that loops, one that
allocates too much and one that tries the network, and the evaluation goes on; pass@1 is counted
over local problems in HumanEval's schema, with a steered model whose answers are known."""
import json
import socket
import subprocess
import sys
import threading

import pytest

from conftest import ROOT, write_parrot_checkpoint
from train import code_eval
from train.code_eval import Limits, run_program

QUICK = Limits(seconds=3, memory_mb=256)


def test_a_program_that_loops_is_stopped_at_the_time_limit():
    out = run_program("while True:\n    pass\n", QUICK)
    assert out.status == "timed out" and out.seconds < 10


def test_a_program_that_sleeps_past_the_limit_is_stopped():
    out = run_program("import time\ntime.sleep(60)\n", Limits(seconds=1))
    assert out.status == "timed out"


def test_a_program_that_allocates_too_much_is_stopped():
    out = run_program("block = bytearray(2 * 1024 ** 3)\n", QUICK)      # 2 GB against a 256 MB limit
    assert out.status == "out of memory", out


@pytest.mark.parametrize("namespace", [True, False])
def test_a_program_that_tries_the_network_fails_and_nothing_reaches_the_server(namespace, monkeypatch):
    if not namespace:       # the Python guard alone, as where `unshare --net` is not allowed
        monkeypatch.setattr(code_eval, "network_namespace", lambda: False)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(5)
    port, reached = server.getsockname()[1], []

    def accept():
        try:
            reached.append(server.accept())
        except OSError:
            pass
    watcher = threading.Thread(target=accept)
    watcher.start()
    code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'hi')\n"
    out = run_program(code, QUICK)
    watcher.join()
    server.close()
    assert out.status == "failed" and not reached
    # even a program that puts the socket module back cannot connect where a network namespace exists
    raw = f"import importlib, _socket\ns = _socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', {port}))\n"
    if namespace and code_eval.network_namespace():      # (where the kernel allows one, as here and in CI)
        assert run_program(raw, QUICK).status == "failed"


def test_it_writes_only_in_its_own_folder_which_is_deleted():
    out = run_program("import os\nopen('x.txt', 'w').write('hi')\nprint(os.getcwd())\n"
                      "assert os.getcwd().split('/')[-1].startswith('nucleus-eval-')\n", QUICK)
    assert out.status == "passed"
    assert run_program("import subprocess\nsubprocess.run(['true'])\n", QUICK).status == "failed"


def test_a_run_of_programs_goes_on_after_each_is_stopped():
    programs = ["while True: pass", "x = bytearray(2 * 1024 ** 3)", "assert 1 + 1 == 2", "raise ValueError('no')"]
    assert [run_program(p, QUICK).status for p in programs] == ["timed out", "out of memory", "passed", "failed"]


def test_truncate_and_program_follow_humaneval():
    assert code_eval.truncate("    return a + b\n\ndef other():\n    pass") == "    return a + b\n"
    problem = {"prompt": "def f():\n", "test": "def check(c):\n    assert c() == 1", "entry_point": "f"}
    assert run_program(code_eval.program(problem, "    return 1\n"), QUICK).status == "passed"
    assert run_program(code_eval.program(problem, "    return 2\n"), QUICK).status == "failed"


def test_pass_at_1_over_local_problems_with_a_model_whose_answer_is_known(tmp_path):
    # the steered model continues "(a, b):" with a correct body for add(); for sub() it writes the
    # same body, which is wrong there: pass@1 must be 1/2, counted by hand
    model = write_parrot_checkpoint(tmp_path / "parrot", "def add(a, b):", "\n    return a + b")
    problems = tmp_path / "problems.jsonl"
    rows = [{"task_id": "local/0", "prompt": "def add(a, b):", "entry_point": "add",
             "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n"},
            {"task_id": "local/1", "prompt": "def sub(a, b):", "entry_point": "sub",
             "test": "def check(candidate):\n    assert candidate(5, 3) == 2\n"}]
    problems.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = subprocess.run([sys.executable, "-m", "train.code_eval", "--model", str(model), "--problems", str(problems),
                          "--output", str(tmp_path / "results.jsonl"), "--timeout", "5", "--device", "cpu"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1].startswith("pass@1: 1/2 = 50.0%")
    results = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in results] == ["passed", "failed"]
    assert results[0]["completion"].strip() == "return a + b"


def test_a_problem_file_without_the_fields_is_named(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"task_id": "x", "prompt": "def f():"}) + "\n")
    with pytest.raises(SystemExit, match="problem 1 has no test, entry_point"):
        code_eval.load_problems(str(bad))
