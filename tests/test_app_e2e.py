"""The Space end to end: app.py in a subprocess, called with gradio_client like any API user."""
import pytest
from gradio_client import Client

from conftest import ARTIFACTS
from serve import running_app


@pytest.fixture(scope="module")
def app_url(tiny_dir):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with running_app(tiny_dir) as url:
        yield url


def test_presets_and_models_endpoints(app_url, tiny_dir):
    client = Client(app_url, verbose=False)
    presets = client.predict(api_name="/presets")
    assert [p["name"] for p in presets][:2] == ["recipe", "history-lesson"]
    assert presets[0]["settings"]["repetition_penalty"] == 1.5
    # the model it was started with first, then the bundled offline default
    assert client.predict(api_name="/models") == [tiny_dir.name, "nucleus-nano"]


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
                            (dict(max_new_tokens=600), "max_new_tokens: 600 leaves no room"),
                            (dict(model="/etc/passwd"), "unknown model")]:
        with pytest.raises(Exception, match=message):
            client.predict("hello", **kwargs, api_name="/generate")
    ok = client.predict("hello", max_new_tokens=5, seed=1, api_name="/generate")
    assert ok["tokens"] == 5


def test_the_example_api_client_runs(app_url, capsys):
    import importlib.util

    from conftest import ROOT
    spec = importlib.util.spec_from_file_location("api_client", ROOT / "examples" / "api_client.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    result = mod.main([app_url, "--preset", "story", "--seed", "3", "--max-new-tokens", "15"])
    out = capsys.readouterr().out
    assert "presets: recipe" in out and out.count("Once upon a time") == 1 and result["tokens"] == 15
