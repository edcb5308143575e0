"""Share-link query strings and the code panel's snippets, without a browser."""
import subprocess
import sys

import nucleus
from nucleus.reproduce import read_query, share_query, snippets
from nucleus.settings import SamplingSettings


def test_share_query_round_trips_every_setting():
    s = SamplingSettings(temperature=0.35, top_p=0.8, top_k=7, min_p=0.05, repetition_penalty=1.25,
                         no_repeat_ngram_size=3, max_new_tokens=77, stop=["\n\n", "END"], seed=123)
    q = share_query("### Lesson: Å & <b>\n", s, "nucleus-nano", "recipe")
    got = read_query(q, {"recipe"}, {"nucleus-nano"}, 16_000)
    assert got.prompt == "### Lesson: Å & <b>\n" and got.preset == "recipe" and got.model == "nucleus-nano"
    assert SamplingSettings(**got.values) == s and got.ignored == []


def test_bad_values_are_named_and_dropped():
    got = read_query("?temperature=9&top_k=1.5&seed=-1&max_new_tokens=x&model=/etc&preset=nope&top_p=0.5&utm=1",
                     {"recipe"}, {"nano"}, 100)
    assert got.values == {"top_p": 0.5} and got.model is None and got.preset is None
    text = " ".join(got.ignored)
    for key in ("temperature", "top_k", "seed", "max_new_tokens", "model", "preset"):
        assert f"{key}=" in text
    assert "out of range" in text and "not a number" in text
    assert read_query("?prompt=" + "x" * 101, set(), set(), 100).prompt is None


def test_the_transformers_snippet_repeats_the_run(tiny_dir, tiny_lm, tmp_path):
    settings = SamplingSettings(temperature=0.8, top_p=0.9, top_k=20, min_p=0.02, repetition_penalty=1.3,
                                no_repeat_ngram_size=2, max_new_tokens=24, stop=["zzz-never"], seed=99)
    prompt = "### Recipe: Soup\n"
    page = nucleus.generate(tiny_lm, prompt, settings)
    code = snippets(prompt, settings, str(tiny_dir), tiny_dir.name, "http://127.0.0.1:7860/")
    script = tmp_path / "repeat.py"
    script.write_text(code["python"])
    # a folder outside the repository is named by its name only (never the server's path): run it there
    assert str(tiny_dir) not in code["python"] and f"model_id = {tiny_dir.name!r}" in code["python"]
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                         cwd=tiny_dir.parent, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout == prompt + page.text + "\n"
    assert "--seed 99" in code["cli"] and "api_name=\"/generate\"" in code["gradio_client"]
    assert "/gradio_api/call/generate" in code["curl"]


def test_snippets_name_the_model_as_a_visitor_can_use_it_and_the_weights_as_they_were():
    from nucleus.loading import BUNDLED_MODEL

    s = SamplingSettings(seed=1)
    repo = snippets("x", s, str(BUNDLED_MODEL), "nucleus-nano", "http://h/")
    assert "model_id = 'models/nucleus-nano'" in repo["python"] and "--model models/nucleus-nano" in repo["cli"]
    hub = snippets("x", s, "NucleusOrg/Nucleus-1B-alpha-1", "Nucleus-1B-alpha-1", "http://h/")
    assert "model_id = 'NucleusOrg/Nucleus-1B-alpha-1'" in hub["python"]
    notes = {w: snippets("x", s, "a/b", "b", "http://h/", weights=w)["python"].splitlines()[0] for w in
             ("none", "int8", "int4", "engine")}
    assert notes["none"] == "import torch"                       # no note: the same weights
    assert "int8 weights" in notes["int8"] and "int4 weights" in notes["int4"] and "int8" not in notes["int4"]
    assert "inference engine" in notes["engine"] and "int8" not in notes["engine"]
