"""The Space end to end: app.py in a subprocess, called with gradio_client like any API user."""
import re
import subprocess
import sys
import time

import pytest
from gradio_client import Client

from conftest import ARTIFACTS
from serve import running_app


@pytest.fixture(scope="module")
def app_url(tiny_dir):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with running_app(tiny_dir) as url:
        yield url


def app_log(url) -> str:
    """The console of the app at `url` (tests/serve.py keeps it in tests/artifacts/)."""
    return (ARTIFACTS / f"app-{url.rstrip('/').rsplit(':', 1)[1]}.log").read_text()


def test_presets_and_models_endpoints(app_url, tiny_dir):
    client = Client(app_url, verbose=False)
    presets = client.predict(api_name="/presets")
    assert [p["name"] for p in presets][:2] == ["recipe", "history-lesson"]
    assert presets[0]["settings"]["repetition_penalty"] == 1.5
    # the model it was started with first, then the bundled models (the offline default and its stage 1)
    assert client.predict(api_name="/models") == [tiny_dir.name, "nucleus-nano", "nucleus-nano-stage1"]


def test_generate_with_every_setting_is_reproducible(app_url):
    client = Client(app_url, verbose=False)
    kw = dict(temperature=0.9, top_p=0.95, top_k=40, min_p=0.01, repetition_penalty=1.3,
              no_repeat_ngram_size=3, max_new_tokens=24, stop=["never-zzz"], seed=21)
    a = client.predict("### Recipe: Soup\n", **kw, api_name="/generate")
    b = client.predict("### Recipe: Soup\n", **kw, api_name="/generate")
    assert a["text"] == b["text"] and a["seed"] == 21 and a["tokens"] == 24
    assert a["finish_reason"] == "length" and a["tokens_per_second"] > 0


def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(app_url):
    client = Client(app_url, verbose=False)
    for kwargs, message in [(dict(temperature=7.0), "temperature: 7.0 is out of range"),
                            (dict(top_k="many"), "top_k: expected a number"),
                            (dict(stop=["a", "b", "c", "d", "e"]), "at most 4 stop strings"),
                            (dict(model="/etc/passwd"), "model: unknown model"),
                            (dict(model={"x": 1}), "model: expected one of the labels .* got dict"),
                            (dict(model=["a"]), "model: expected one of the labels .* got list"),
                            (dict(model=[]), "model: expected one of the labels .* got list")]:
        with pytest.raises(Exception, match=message):
            client.predict("hello", **kwargs, api_name="/generate")
    ok = client.predict("hello", max_new_tokens=5, seed=1, api_name="/generate")
    assert ok["tokens"] == 5
    log = app_log(app_url)
    assert "refused: temperature: 7.0 is out of range" in log and "Traceback" not in log   # one line each


def test_start_up_says_which_model_and_why(app_url, tiny_dir):
    assert f"serving {tiny_dir}, chosen by NUCLEUS_MODEL" in app_log(app_url)


def test_more_new_tokens_than_the_context_leaves_are_lowered_not_the_prompt_cut(app_url):
    client = Client(app_url, verbose=False)
    out = client.predict("### Recipe: Soup\n", max_new_tokens=600, seed=2, repetition_penalty=1.0,
                         api_name="/generate")
    assert "lowered from 600" in out["warning"] and out["prompt_start"] == 0 and out["tokens"] <= 505


def test_visitors_choose_models_per_request_and_nothing_reloads(app_url, tiny_dir):
    a, b = Client(app_url, verbose=False), Client(app_url, verbose=False)
    for _ in range(2):
        assert a.predict("hi", max_new_tokens=3, seed=1, api_name="/generate")["model"] == tiny_dir.name
        assert b.predict("hi", max_new_tokens=3, seed=1, model="nucleus-nano", api_name="/generate")["model"] \
            == "nucleus-nano"
    log = app_log(app_url)
    assert log.count("loading model nucleus-nano") == 1 and log.count(f"loading model {tiny_dir.name}") == 1


def test_a_client_that_goes_away_stops_its_generation(long_dir):
    """/generate is not streamed to the caller, but a caller killed mid-request still frees the worker."""
    caller = ("import sys\nfrom gradio_client import Client\n"
              "job = Client(sys.argv[1], verbose=False).submit('x', max_new_tokens=4000, repetition_penalty=1.0, "
              "api_name='/generate')\n"
              "import time\nwhile not job.outputs():\n    time.sleep(0.05)\nprint('STARTED', flush=True)\n"
              "time.sleep(600)\n")
    with running_app(long_dir) as url:
        proc = subprocess.Popen([sys.executable, "-c", caller, url], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "STARTED"
        finally:
            proc.kill()                                       # the caller vanishes mid-request
            proc.wait()
        deadline = time.time() + 120
        while "api /generate:" not in app_log(url) and time.time() < deadline:
            time.sleep(0.2)
        line = next(ln for ln in app_log(url).splitlines() if "api /generate:" in ln)
        tokens = int(re.search(r", (\d+) tokens", line)[1])
        assert "cancelled" in line and tokens < 4000, line


def test_the_example_api_client_runs(app_url, capsys):
    import importlib.util

    from conftest import ROOT
    spec = importlib.util.spec_from_file_location("api_client", ROOT / "examples" / "api_client.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    result = mod.main([app_url, "--preset", "story", "--seed", "3", "--max-new-tokens", "15"])
    out = capsys.readouterr().out
    assert "presets: recipe" in out and out.count("Once upon a time") == 1 and result["tokens"] == 15


def test_api_text_joins_the_prompt_like_the_decoded_sequence(app_url, tiny_lm):
    import torch
    from nucleus.tokenizer import encode_prompt
    prompt = "One night,"
    out = Client(app_url, verbose=False).predict(prompt, temperature=0, repetition_penalty=1.0, max_new_tokens=12,
                                                 api_name="/generate")
    ids = torch.tensor([encode_prompt(tiny_lm.tokenizer, prompt)])
    with torch.no_grad():
        full = tiny_lm.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                      max_new_tokens=12, pad_token_id=2)
    assert prompt + out["text"] == tiny_lm.tokenizer.decode(full[0], skip_special_tokens=True)


def test_api_logprobs_in_openai_shape(app_url):
    client = Client(app_url, verbose=False)
    prompt = "### Recipe: Soup\n"
    out = client.predict(prompt, max_new_tokens=6, seed=4, logprobs=3, api_name="/generate")
    lp = out["logprobs"]
    assert "".join(lp["tokens"]) == out["text"] and len(lp["token_logprobs"]) == 6
    # 3 alternatives, and the chosen token when it is not among them (as OpenAI)
    assert all(3 <= len(top) <= 4 and all(v <= 0 for v in top.values()) for top in lp["top_logprobs"])
    assert lp["text_offset"] == [len(prompt) + sum(len(t) for t in lp["tokens"][:i]) for i in range(6)]
    # processed at temperature 0 with a penalty: each token is the top of its alternatives
    greedy = client.predict(prompt, temperature=0, repetition_penalty=1.5, max_new_tokens=8, logprobs=2,
                            logprobs_mode="processed", api_name="/generate")["logprobs"]
    assert all(max(top.values()) == chosen for top, chosen in zip(greedy["top_logprobs"], greedy["token_logprobs"]))
    with pytest.raises(Exception, match="logprobs_mode: expected one of raw, processed, got 'cooked'"):
        client.predict("hi", logprobs=2, logprobs_mode="cooked", api_name="/generate")
    assert client.predict("hi", max_new_tokens=2, api_name="/generate")["logprobs"] is None
    with pytest.raises(Exception, match="logprobs: expected a whole number from 0 to 20"):
        client.predict("hi", logprobs=21, api_name="/generate")


def test_a_seeded_run_gives_one_text_on_the_api_the_cli_and_the_library(app_url, tiny_dir, tiny_lm):
    import os

    import nucleus
    from conftest import ROOT
    from nucleus.settings import SamplingSettings

    prompt = "### Recipe: Soup\n"
    kw = dict(temperature=0.9, top_p=0.9, top_k=30, min_p=0.0, repetition_penalty=1.4, no_repeat_ngram_size=0,
              max_new_tokens=20, seed=77)
    api = Client(app_url, verbose=False).predict(prompt, **kw, api_name="/generate")["text"]
    flags = [x for k, v in kw.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    cli = subprocess.run([sys.executable, "-m", "nucleus", "generate", "--model", str(tiny_dir), "--prompt", prompt,
                          *flags], cwd=ROOT, capture_output=True, text=True, timeout=120, env=os.environ)
    library = nucleus.generate(tiny_lm, prompt, SamplingSettings(**kw)).text
    assert cli.returncode == 0 and cli.stdout == prompt + api and api == library and len(api) > 20
