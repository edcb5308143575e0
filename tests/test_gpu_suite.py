"""bench/gpu_suite.py on CPU: every part for a step or two, as the GPU machine's image would run it
(no `datasets`, no `mistral-common`), so the one device call never meets its first bug there.
Also the engine's config fields the suite relies on (tokenizer folder, liger)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from train.config import ConfigError, TrainConfig

ROOT = Path(__file__).resolve().parent.parent

# `import datasets` / `import mistral_common` raise ImportError, as on the GPU image
BLOCKED = ("import runpy, sys\n"
           "sys.modules['datasets'] = None\n"
           "sys.modules['mistral_common'] = None\n"
           "sys.argv = ['bench/gpu_suite.py'] + sys.argv[1:]\n"
           "runpy.run_path('bench/gpu_suite.py', run_name='__main__')\n")


def numbers(value):
    """Every int/float inside a JSON value."""
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from numbers(v)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    # the device command's PYTHONPATH (docs/benchmarks.md): the checkout and the carried packages
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / ".carry" / "site")]),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-c", BLOCKED, "--cpu-smoke", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, json.loads((out / "gpu_suite.json").read_text()), proc.stdout


def test_smoke_runs_every_part_without_datasets_or_mistral_common(smoke):
    _, result, _ = smoke
    rows = result["rows"]
    errors = [r for r in rows if "error" in r]
    assert not errors, errors
    cases = {(r["part"], r["case"]) for r in rows}
    for expected in [("nano", "committed"), ("nano", "stage1"), ("nano", "stage2"), ("nano", "held-out"),
                     ("nano", "packed"), ("train", "setup"), ("train", "a_plain_hf"), ("train", "b_compile"),
                     ("train", "b_compile_no_ckpt"), ("serve", "hf_eager"), ("serve", "hf_static"),
                     ("serve", "ours_static"), ("serve", "ours_dynamic"), ("suite", "done")]:
        assert expected in cases, f"no row {expected}"
    assert all(math.isfinite(x) for x in numbers(result)), "a figure is NaN or infinite"


def test_smoke_figures_have_their_keys(smoke):
    _, result, _ = smoke
    rows = {(r["part"], r["case"], r.get("batch"), "ttft_ms" in r): r for r in result["rows"]}
    a, b = rows[("train", "a_plain_hf", None, False)], rows[("train", "b_compile", None, False)]
    for row in (a, b):
        assert row["tokens_per_second"] > 0 and row["mfu_vs_ceiling"] > 0 and len(row["losses"]) == 3
    assert b["ratio_vs_a"] > 0 and b["loss_max_rel_diff_vs_a"] < 0.01     # same stream, same recipe on CPU
    for batch in (1, 2):
        assert rows[("serve", "hf_eager", batch, False)]["tok_per_s"] > 0
    assert rows[("serve", "hf_eager", None, True)]["ttft_ms"] > 0
    for case in ("ours_static", "ours_dynamic"):                 # the product's loop, records on and off
        ours = [r for r in result["rows"] if r["part"] == "serve" and r["case"] == case]
        assert sorted(r.get("records", -1) for r in ours) == [-1, 0, 10]
        assert all(r["tok_per_s"] > 0 for r in ours if "records" in r) and ours[-1]["ttft_ms"] > 0
    held_out = rows[("nano", "held-out", None, False)]
    for key in ("new stage1 on stage1", "new final on stage2", "new final on passages"):
        assert held_out[key]["ppl"] > 1 and held_out[key]["tokens"] > 0
    assert rows[("nano", "stage2", None, False)]["tokens_seen"] > 0


def test_smoke_packs_a_loadable_nano(smoke, tmp_path):
    out, result, stdout = smoke
    packed = next(r for r in result["rows"] if r["case"] == "packed")
    parts = [out / name for name in packed["parts"]]
    assert parts and all(p.stat().st_size <= 16 * 2**20 for p in parts)      # the device returns <= 16 MiB files
    whole = tmp_path / "nano.tar"
    whole.write_bytes(b"".join(p.read_bytes() for p in parts))
    with tarfile.open(whole) as tf:
        tf.extractall(tmp_path, filter="data")
    folder = tmp_path / "nucleus-nano-gpu"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md"):
        assert (folder / name).is_file(), name
    assert (tmp_path / "logs" / "stage2" / "metrics.csv").is_file()
    cfg = json.loads((folder / "train_config.json").read_text())          # no device or temp paths recorded
    assert cfg["stage"] == "finetune" and cfg["init"].startswith("<run>/") and not cfg["tokenizer"].startswith("/")
    import nucleus

    lm = nucleus.load(folder, device="cpu", quantize="none")
    assert lm.n_params > 0
    assert "part  | case" in stdout                         # the closing table the device reply carries


# ---- engine fields the suite uses --------------------------------------------------------------------
def test_scratch_tokenizer_comes_from_the_configured_folder(tmp_path):
    from train.model_setup import scratch_tokenizer

    cfg = TrainConfig(tokenizer=str(ROOT / "models/nucleus-nano"))
    assert len(scratch_tokenizer(cfg)) == 32000
    with pytest.raises(ConfigError, match="tokenizer"):
        scratch_tokenizer(TrainConfig(tokenizer=str(tmp_path)))


def test_liger_without_the_package_is_a_config_error():
    from train.model_setup import apply_liger

    try:
        import liger_kernel.transformers  # noqa: F401
        pytest.skip("liger-kernel and triton are importable here")
    except ImportError:
        pass
    with pytest.raises(ConfigError, match="liger"):
        apply_liger(None)


def test_new_fields_are_typed():
    with pytest.raises(ConfigError, match="liger"):
        TrainConfig.load(None, liger="yes")
    assert TrainConfig().liger is False and TrainConfig().tokenizer is None


def test_legacy_split_holds_out_by_position_as_the_committed_nano_was(tmp_path):
    """The carried token cache is split as models/nucleus-nano was trained and scored: by a hash of
    each document's position (reference.json then reproduces the card's perplexities)."""
    import numpy as np

    from bench.gpu_carry import legacy_is_validation, legacy_split_cache
    from nucleus.tokenizer import load_tokenizer
    from train import data as D

    docs = [f"Document number {i}: a short lesson about bread." for i in range(300)]
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    tok = load_tokenizer(ROOT / "models/nucleus-nano")
    meta = legacy_split_cache(D.DataSpec(str(tmp_path / "corpus"), validation_fraction=0.05), tok, tmp_path / "out")
    held = [d for i, d in enumerate(docs) if legacy_is_validation(i, 0.05)]
    assert 0 < meta["val_documents"] == len(held) and meta["documents"] == len(docs) - len(held)
    val = np.fromfile(tmp_path / "out" / "val.bin", dtype=np.uint16)
    expected = [t for d in held for t in (tok.bos_token_id, *tok(d, add_special_tokens=False).input_ids,
                                          tok.eos_token_id)]
    assert val.tolist() == expected and meta["val_tokens"] == len(expected)


def test_train_cases_can_be_chosen_by_name():
    from bench.gpu_suite import train_cases

    every = [name for name, _ in train_cases(smoke=True)]
    assert "b_compile_no_ckpt_mb2" in every and len(every) == len(set(every))
    chosen = train_cases(smoke=True, only=["b_compile_no_ckpt_mb2", "b_compile"])
    assert [n for n, _ in chosen] == [n for n in every if n in ("b_compile", "b_compile_no_ckpt_mb2")]
    assert dict(chosen)["b_compile_no_ckpt_mb2"] == {"activation_checkpointing": False, "micro_batch": 2}
    with pytest.raises(ValueError, match=r"b_nonsense \(unknown\)"):
        train_cases(smoke=True, only=["b_compile", "b_nonsense"])
    try:
        import liger_kernel.transformers  # noqa: F401
    except ImportError:                       # as here: the case exists, and the reason it cannot run is given
        with pytest.raises(ValueError, match=r"b_compile_liger_no_ckpt_mb2 \(needs liger-kernel"):
            train_cases(smoke=True, only=["b_compile_liger_no_ckpt_mb2"])


def test_carried_packages_off_the_path_are_named(tmp_path, monkeypatch):
    """.carry/site reaches the path only through PYTHONPATH (the device command); run without it,
    the liger cases would be skipped with no word, so the suite says why."""
    from bench import gpu_suite

    monkeypatch.setattr(gpu_suite, "CARRY", tmp_path / ".carry")
    assert gpu_suite.carry_site_hint() == ""                          # nothing carried: nothing to say
    (tmp_path / ".carry" / "site").mkdir(parents=True)
    assert "PYTHONPATH=.:.carry/site" in gpu_suite.carry_site_hint()
    assert gpu_suite.carry_site_hint([*sys.path, str(tmp_path / ".carry" / "site")]) == ""   # on the path


@pytest.mark.parametrize("flags, message", [
    (["--parts", "trian"], "unknown part trian in --parts; known: nano, train, serve"),
    (["--parts", "train", "--train-cases", "bogus_case"], "--train-cases: train cases not available: bogus_case (unknown)"),
])
def test_wrong_names_are_refused_before_any_work(flags, message, tmp_path):
    out = subprocess.run([sys.executable, "bench/gpu_suite.py", "--cpu-smoke", "--out", str(tmp_path / "o"), *flags],
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0 and message in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "o" / "gpu_suite.json").exists()                # nothing was run


def test_serving_measures_the_products_loop_and_a_failing_case_keeps_the_others(monkeypatch):
    """The serve part times nucleus's own decode loop (static and dynamic cache, records on and off)
    beside plain generate; a case that fails mid-way keeps the rows it measured, and the others run."""
    import torch

    from bench import serve_gpu

    real = serve_gpu.ours_rows

    def failing(lm, new, long_prompt, static):
        rows = real(lm, new, long_prompt, static)
        yield next(rows)                          # records on: measured
        if static:
            raise RuntimeError("CUDA graphs failed")
        yield from rows

    monkeypatch.setattr(serve_gpu, "ours_rows", failing)
    rows = []
    serve_gpu.measure(torch.device("cpu"), True, rows.append)
    static = [r for r in rows if r["case"] == "ours_static"]
    assert static[0]["records"] == 10 and static[0]["tok_per_s"] > 0 and "CUDA graphs failed" in static[1]["error"]
    dynamic = [r for r in rows if r["case"] == "ours_dynamic"]
    assert [r.get("records") for r in dynamic] == [10, 0, None] and dynamic[2]["ttft_ms"] > 0
    assert {r["case"] for r in rows} >= {"hf_eager", "hf_static"}        # the other paths still ran


def test_replay_mixes_stage1_blocks_into_stage2_training_only(tmp_path):
    import numpy as np

    from bench.gpu_suite import replay_cache

    seq = 8
    for stage, n, base in (("stage1", 10 * seq + 3, 1000), ("stage2", 4 * seq + 5, 5000)):
        f = tmp_path / "tokens" / stage
        f.mkdir(parents=True)
        (np.arange(n, dtype=np.uint16) + base).tofile(f / "train.bin")
        (np.arange(2 * seq, dtype=np.uint16) + base + 500).tofile(f / "val.bin")
        (f / "meta.json").write_text(json.dumps({"source": stage, "tokens": n}))
    out = replay_cache(tmp_path / "tokens", tmp_path / "replay", seq, share=0.5)
    train = np.fromfile(out / "stage2" / "train.bin", dtype=np.uint16)
    # stage 2's full blocks first (its 5-token tail dropped), then 2 whole stage-1 blocks (0.5 x 32 tokens)
    assert list(train[: 4 * seq]) == list(range(5000, 5000 + 4 * seq))
    extra = train[4 * seq:].reshape(-1, seq)
    assert len(extra) == 2 and all(b[0] >= 1000 and b[0] < 2000 and list(b) == list(range(b[0], b[0] + seq))
                                   for b in extra)
    assert extra[0][0] == 1000 and extra[1][0] == 1000 + 9 * seq                # spread over stage 1
    assert (out / "stage2" / "val.bin").read_bytes() == (tmp_path / "tokens/stage2/val.bin").read_bytes()
    meta = json.loads((out / "stage2" / "meta.json").read_text())
    assert meta["tokens"] == len(train) and "16 stage-1 tokens" in meta["replay"]
