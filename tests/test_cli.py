import json
import os
import shutil
import subprocess
import sys

from conftest import ROOT


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "nucleus", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def test_presets_lists_names_and_json():
    out = cli("presets")
    assert out.returncode == 0 and out.stdout.startswith("recipe")
    data = json.loads(cli("presets", "--json").stdout)
    assert {"recipe", "question-answer"} <= {p["name"] for p in data}


def test_generate_streams_and_reproduces_with_a_seed(tiny_dir):
    args = ("generate", "--model", str(tiny_dir), "--preset", "recipe", "--temperature", "0.9",
            "--max-new-tokens", "20", "--seed", "11")
    a, b = cli(*args), cli(*args)
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout and a.stdout.startswith("### Recipe: Classic Banana Bread\n")
    assert "seed 11 | 20 tokens" in a.stderr


def test_bad_values_name_the_field(tiny_dir):
    out = cli("generate", "--model", str(tiny_dir), "--prompt", "hi", "--top-p", "1.5")
    assert out.returncode == 2 and "top_p: 1.5 is out of range" in out.stderr and "top_p <= 1" in out.stderr
    out = cli("generate", "--prompt", "hi", "--temperature", "warm")
    assert out.returncode == 2 and "temperature must be a number" in out.stderr
    out = cli("generate", "--model", str(tiny_dir), "--preset", "nope")
    assert out.returncode == 2 and "unknown preset 'nope'" in out.stderr
    out = cli("info", "--model", "/definitely/not/here")
    assert out.returncode == 2 and "does not exist" in out.stderr


def test_info(tiny_dir):
    out = cli("info", "--model", str(tiny_dir))
    assert out.returncode == 0 and "parameters" in out.stdout and "device:  cpu" in out.stdout
    assert "weights: float32 (not quantised)" in out.stdout                 # not "weights: none"


def test_one_token_is_one_token(tiny_dir):
    out = cli("generate", "--model", str(tiny_dir), "--prompt", "hi", "--max-new-tokens", "1", "--seed", "1")
    assert out.returncode == 0 and "| 1 token |" in out.stderr


def test_info_honours_nucleus_quantize_and_reads_no_weights(tiny_dir, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_dir, d)
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])        # unreadable weights: info must not need them
    out = cli("info", "--model", str(d), env={"NUCLEUS_QUANTIZE": "int8"})
    assert out.returncode == 0, out.stderr
    assert "weights: int8" in out.stdout and "4,202,816 parameters" in out.stdout and "context: 512" in out.stdout


def test_generated_text_joins_the_prompt_like_the_decoded_sequence(tiny_lm, tiny_dir):
    import torch
    from nucleus.tokenizer import encode_prompt
    prompt = "One night,"
    out = cli("generate", "--model", str(tiny_dir), "--prompt", prompt, "--temperature", "0",
              "--repetition-penalty", "1", "--max-new-tokens", "12")
    assert out.returncode == 0, out.stderr
    ids = torch.tensor([encode_prompt(tiny_lm.tokenizer, prompt)])
    with torch.no_grad():
        full = tiny_lm.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                      max_new_tokens=12, pad_token_id=2)
    assert out.stdout == tiny_lm.tokenizer.decode(full[0], skip_special_tokens=True)


def test_logprobs_json_lines(tiny_dir):
    out = cli("generate", "--model", str(tiny_dir), "--prompt", "hi", "--max-new-tokens", "4", "--seed", "1",
              "--logprobs", "2")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == 4 and all(r["logprob"] <= 0 and 2 <= len(r["top_logprobs"]) <= 3 for r in rows)
    assert [r["text_offset"] for r in rows][0] == len("hi")             # OpenAI's: from the prompt's start
    bad = cli("generate", "--model", str(tiny_dir), "--prompt", "hi", "--logprobs", "50")
    assert bad.returncode == 2 and "logprobs: expected a whole number from 0 to 20" in bad.stderr


def test_quantisation_flags_that_cannot_hold_are_refused_not_ignored(tiny_dir):
    out = cli("info", "--model", str(tiny_dir), env={"NUCLEUS_QUANTIZE": "int3"})
    assert out.returncode == 2 and "NUCLEUS_QUANTIZE='int3' (from the environment)" in out.stderr
    out = cli("info", "--model", str(tiny_dir), env={"NUCLEUS_STATIC_CACHE": "maybe"})
    assert out.returncode == 2 and "NUCLEUS_STATIC_CACHE='maybe' (from the environment): must be one of auto, on, off" in out.stderr
    out = cli("info", "--model", str(tiny_dir), "--quantize", "int8", "--dtype", "float32")
    assert out.returncode == 2 and "--quantize int8 computes in bfloat16; drop --dtype float32" in out.stderr
    out = cli("info", "--model", str(tiny_dir), "--quantize", "int8", "--dtype", "bfloat16")
    assert out.returncode == 0 and "weights: int8" in out.stdout


def test_the_seed_flag_takes_the_seed_boxs_rule_and_a_closed_pipe_is_quiet(tiny_dir):
    out = cli("generate", "--model", str(tiny_dir), "--prompt", "hi", "--seed", "1e3")
    assert out.returncode == 2 and "written in digits" in out.stderr
    piped = subprocess.run(f"{sys.executable} -m nucleus generate --model {tiny_dir} --prompt hi --max-new-tokens 300 "
                           "| head -c 5", shell=True, cwd=ROOT, capture_output=True, timeout=120)
    assert piped.stdout.startswith(b"hi") and len(piped.stdout) == 5      # head counts bytes
    assert b"Traceback" not in piped.stderr and b"BrokenPipe" not in piped.stderr
