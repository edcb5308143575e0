"""The decode loop against transformers' `generate`, the reference: the same greedy text, the same
distribution at every step, the same seeded draws. References come from `generate` itself (and
plain forward passes), never from our own loop."""
import threading

import pytest
import torch

import nucleus
from nucleus import architecture
from nucleus.decode import CompiledForward, DecodeLoop, EagerForward
from nucleus.loading import BUNDLED_MODEL
from nucleus.local import LoadedModel
from nucleus.settings import SamplingSettings
from nucleus.tokenizer import encode_prompt, load_tokenizer

PROMPTS = ["### Lesson: Python Programming 101\n### Introduction\n", "### Recipe: Soup\n### Ingredients\n",
           "Once upon a time, there was a little rabbit", "The history of Rome"]


@pytest.fixture(scope="module")
def nano():
    return nucleus.load(BUNDLED_MODEL, device="cpu")


@pytest.fixture(scope="module")
def big():
    """The Nucleus-1.13B shape (hidden 4096, 4 layers, 32 heads, 8 KV heads, MLP 14336), random bf16
    weights, built in memory (about 30 s and 2.3 GB)."""
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = architecture.build("nucleus-1b", seed=0).eval()
    finally:
        torch.set_default_dtype(torch.float32)
    assert sum(p.numel() for p in model.parameters()) == architecture.NUCLEUS_1B_PARAMS
    yield LoadedModel(model, load_tokenizer(), "random-1.13b", BUNDLED_MODEL, torch.device("cpu"), torch.bfloat16,
                      architecture.NUCLEUS_1B_PARAMS)
    del model


def hf_ids(lm, prompt, settings, n):
    """New token ids from transformers' generate with the same settings (the reference)."""
    ids = torch.tensor([encode_prompt(lm.tokenizer, prompt)])
    config = settings.replace(max_new_tokens=n).to_generation_config(lm.tokenizer.eos_token_id)
    torch.manual_seed(settings.seed or 0)
    with torch.inference_mode():
        out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
    return out[0, ids.shape[1]:].tolist()


def our_ids(lm, prompt, settings, n):
    out = nucleus.generate(lm, prompt, settings.replace(max_new_tokens=n), record=1)
    return [r.token_id for r in out.records], out


@pytest.mark.parametrize("settings", [SamplingSettings(temperature=0, repetition_penalty=1.5),
                                      SamplingSettings(temperature=0, repetition_penalty=1.0, no_repeat_ngram_size=2),
                                      SamplingSettings(temperature=0, repetition_penalty=1.3, no_repeat_ngram_size=3)],
                         ids=["penalty-1.5", "ngram-2", "both"])
def test_greedy_text_equals_generate_on_the_nano(nano, settings):
    for prompt in PROMPTS:
        ref = hf_ids(nano, prompt, settings, 40)
        ours, out = our_ids(nano, prompt, settings, 40)
        assert ours == ref, prompt
        # the text: the whole sequence decoded, as a reader would, minus the prompt
        whole = nano.tokenizer.decode(encode_prompt(nano.tokenizer, prompt) + ref, skip_special_tokens=True)
        assert prompt + out.text == whole


def test_greedy_text_equals_generate_on_the_1b_shape(big):
    for settings in (SamplingSettings(temperature=0, repetition_penalty=1.5),
                     SamplingSettings(temperature=0, repetition_penalty=1.0, no_repeat_ngram_size=2)):
        for prompt in PROMPTS[:3]:
            assert our_ids(big, prompt, settings, 6)[0] == hf_ids(big, prompt, settings, 6), (prompt, settings)


def test_each_step_has_transformers_distribution_and_draw(nano):
    """Sampled with the same seed: generate's raw logits and processed scores (output_logits,
    output_scores) against the loop's own stage tensors, step by step; the same tokens."""
    s = SamplingSettings(temperature=0.8, top_p=0.9, top_k=50, min_p=0.02, repetition_penalty=1.5,
                         no_repeat_ngram_size=3, seed=7, max_new_tokens=30)
    prompt = PROMPTS[0]
    ids = torch.tensor([encode_prompt(nano.tokenizer, prompt)])
    torch.manual_seed(s.seed)
    with torch.inference_mode():
        ref = nano.model.generate(ids, attention_mask=torch.ones_like(ids), output_scores=True, output_logits=True,
                                  return_dict_in_generate=True,
                                  generation_config=s.to_generation_config(nano.tokenizer.eos_token_id))
    loop = DecodeLoop(EagerForward(nano.model), ids[0].tolist(), s.chain(), greedy=False, seed=s.seed,
                      max_new_tokens=30, eos_id=nano.tokenizer.eos_token_id, keep_stages=True)
    steps = list(loop)
    assert [int(st.token[0]) for st in steps] == ref.sequences[0, ids.shape[1]:].tolist()
    assert len(steps) == len(ref.scores) == 30
    for st, logits, scores in zip(steps, ref.logits, ref.scores):
        stages = dict(st.stages)
        assert list(stages) == ["raw", "penalties", "temperature", "top-k", "top-p", "min-p"]
        torch.testing.assert_close(stages["raw"], logits.float(), rtol=1e-5, atol=1e-5)
        final = st.stages[-1][1]
        assert torch.equal(torch.isinf(final), torch.isinf(scores))          # the same tokens removed
        kept = ~torch.isinf(scores)
        torch.testing.assert_close(final[kept], scores[kept], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(torch.softmax(final, -1), torch.softmax(scores, -1), rtol=1e-5, atol=1e-7)


def test_seeded_sampling_equals_generate_and_repeats(nano):
    for s in (SamplingSettings(temperature=1.0, top_p=0.95, repetition_penalty=1.0, seed=3),
              SamplingSettings(temperature=0.7, top_k=40, repetition_penalty=1.5, seed=11)):
        ref = hf_ids(nano, PROMPTS[1], s, 30)
        first, _ = our_ids(nano, PROMPTS[1], s, 30)
        again, _ = our_ids(nano, PROMPTS[1], s, 30)
        assert first == ref == again


def test_eos_on_the_last_allowed_token_is_eos(tmp_path):
    """A model steered to write "I like dogs." then </s>: allowed exactly that many tokens, the
    run ends with "eos", not "length"; one token fewer is "length"."""
    from conftest import write_parrot_checkpoint

    lm = nucleus.load(write_parrot_checkpoint(tmp_path / "parrot", "Pets:", "I like dogs."), device="cpu")
    s = SamplingSettings(temperature=0, repetition_penalty=1.0)
    n = len(lm.tokenizer("I like dogs.", add_special_tokens=False).input_ids) + 1        # + </s>
    out = nucleus.generate(lm, "Pets:", s.replace(max_new_tokens=n))
    assert (out.text, out.tokens, out.finish_reason) == (" I like dogs.", n, "eos")
    short = nucleus.generate(lm, "Pets:", s.replace(max_new_tokens=n - 1))
    assert (short.text, short.finish_reason) == (" I like dogs.", "length")


def test_cancel_is_seen_before_the_next_forward(nano):
    calls = []
    forward = EagerForward(nano.model)
    real = forward.__call__

    class Counting(EagerForward):
        def __call__(self, *a):
            calls.append(1)
            return real(*a)

    cancel = threading.Event()
    loop = DecodeLoop(Counting(nano.model), encode_prompt(nano.tokenizer, "x"), [], greedy=True, seed=0,
                      max_new_tokens=100, eos_id=None, cancel=cancel)
    for i, _ in enumerate(loop):
        if i == 4:
            cancel.set()
    assert loop.reason == "cancelled" and loop.tokens == 5 and len(calls) == 5   # no forward after the flag


def test_static_cache_gives_the_dynamic_caches_tokens(nano):
    """CompiledForward's cache, uncompiled (as NUCLEUS_STATIC_CACHE=on runs on a CPU): the same tokens,
    run after run of different lengths in the one reused cache; a run longer than it goes eager."""
    static = CompiledForward(nano.model, max_len=128, mode=None)
    eager = EagerForward(nano.model)
    for prompt, s, n in ((PROMPTS[0], SamplingSettings(temperature=0.9, seed=1), 40),
                         (PROMPTS[2], SamplingSettings(temperature=0, repetition_penalty=1.5), 12),
                         (PROMPTS[1], SamplingSettings(temperature=0.7, top_k=20, seed=4), 90),
                         (PROMPTS[3], SamplingSettings(temperature=1.0, seed=2), 200)):    # past max_len: eager
        ids = encode_prompt(nano.tokenizer, prompt)
        runs = [[int(st.token[0]) for st in DecodeLoop(fw, ids, s.chain(), greedy=s.greedy, seed=s.seed or 0,
                                                        max_new_tokens=n, eos_id=None)] for fw in (eager, static)]
        assert runs[0] == runs[1] and len(runs[0]) == n


def test_the_package_has_no_forward_hooks_and_no_import_circles():
    import ast
    from pathlib import Path

    root = Path(nucleus.__file__).parent.parent
    pkg = root / "nucleus"
    assert not [p.name for p in pkg.glob("*.py") if "register_forward_hook" in p.read_text()]
    # module graph of the two packages the Space imports (nucleus, playground), absolute and relative
    modules = {f"{d}.{p.stem}": p for d in ("nucleus", "playground") for p in (root / d).glob("*.py")}
    edges = {}
    for name, p in modules.items():
        package = name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = f"{package}.{node.module}" if node.level == 1 and node.module else \
                    package if node.level == 1 else node.module or ""
                deps |= {base} | {f"{base}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
        edges[name] = {d for d in deps if d in modules and d != name and not d.endswith(".__init__")}
    assert len(edges) > 30 and "nucleus.backend" in edges["nucleus.local"]      # the graph was read

    def reach(start, seen):
        for nxt in edges.get(start, ()):
            if nxt not in seen:
                seen.add(nxt)
                reach(nxt, seen)
        return seen
    circles = sorted(m for m in edges if m in reach(m, set()) and not m.endswith(".__init__"))
    assert not circles, f"import circles through {circles}"


def test_bench_and_tests_never_edit_the_import_path():
    from pathlib import Path

    root = Path(nucleus.__file__).parent.parent
    edits = ("sys.path.insert", "sys.path.append", "sys.path.extend", "sys.path[", 'setattr(sys, "path"',
             "sys.path =", "sys.path +=")
    found = [f"{p.relative_to(root)}: {e}" for d in ("bench", "tests") for p in (root / d).rglob("*.py")
             for e in edits if e in p.read_text() and p.name != "test_decode.py"]
    assert not found, found
