"""app.py and the page's wiring that the end-to-end tests cannot reach: ZeroGPU, the Spaces-only
button, start-up checks."""
import subprocess
import sys
import types

import gradio as gr
import pytest

import app
import nucleus
from conftest import ROOT
from nucleus import loading
from nucleus.settings import SamplingSettings
from playground import build_demo, handlers, zerogpu


def test_gpu_lease_is_a_no_op_off_zerogpu(monkeypatch):
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)

    def fn():
        return 1
    assert zerogpu.gpu_lease(fn) is fn


def test_gpu_leases_follow_the_requests_tokens_however_they_are_passed(monkeypatch, tiny_dir):
    """On ZeroGPU every run asks spaces.GPU for a lease sized by its max new tokens: the API's
    (by keyword or by position, as raw HTTP and the page send them) and the page's runs."""
    leases = {}

    def fake_gpu(duration):
        def wrap(fn):
            leases[getattr(fn, "__name__", "?")] = duration
            return fn
        return wrap

    fake = types.ModuleType("spaces")
    fake.GPU = fake_gpu
    monkeypatch.setitem(sys.modules, "spaces", fake)
    monkeypatch.setenv("SPACES_ZERO_GPU", "1")
    monkeypatch.setattr(loading, "BUNDLED_MODEL", tiny_dir / "none")
    build_demo(nucleus.ModelCatalog(str(tiny_dir), device="cpu", probe_hub=False), max_seconds=60)
    api, page = leases["generate"], leases["run"]
    assert api("hi", max_new_tokens=30) == api("hi", 0.7, 0.9, 0, 0.0, 1.5, 0, 30) == zerogpu.lease_seconds(30, 60)
    assert api("hi", 0.7, 0.9, 0, 0.0, 1.5, 0, 600) == zerogpu.lease_seconds(600, 60) > api("hi", max_new_tokens=30)
    assert api("hi") == zerogpu.lease_seconds(200, 60)                       # the default
    assert page("nano", "hi", 0.7, 0.9, 0, 0.0, 1.5, 0, 600, "", "") == zerogpu.lease_seconds(600, 60)
    # more tokens, a longer lease, never past the time limit (+ margin)
    assert zerogpu.lease_seconds(30, 60) < zerogpu.lease_seconds(600, 60) <= zerogpu.lease_seconds(4000, 60) == 65


def _buttons(demo):
    return [b for b in demo.blocks.values() if isinstance(b, gr.DuplicateButton)]


def test_duplicate_button_only_on_spaces(monkeypatch, tiny_dir):
    monkeypatch.setattr(loading, "BUNDLED_MODEL", tiny_dir / "none")
    catalog = nucleus.ModelCatalog(str(tiny_dir), device="cpu", probe_hub=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert _buttons(build_demo(catalog)) == []
    monkeypatch.setenv("SPACE_ID", "someone/nucleus")
    assert len(_buttons(build_demo(catalog))) == 1


def _demo(monkeypatch, tiny_dir, **kw):
    monkeypatch.setattr(loading, "BUNDLED_MODEL", tiny_dir / "none")
    catalog = nucleus.ModelCatalog(str(tiny_dir), device="cpu", probe_hub=False)
    return build_demo(catalog, **kw)


def test_slider_ranges_equal_the_validated_ranges(monkeypatch, tiny_dir):
    demo = _demo(monkeypatch, tiny_dir)
    sliders = {b.label: b for b in demo.blocks.values() if isinstance(b, gr.Slider)}
    names = {"Temperature": "temperature", "Top-p": "top_p", "Top-k": "top_k", "Min-p": "min_p",
             "Repetition penalty": "repetition_penalty", "No-repeat n-gram size": "no_repeat_ngram_size",
             "Max new tokens": "max_new_tokens"}
    for label, name in names.items():
        sl = sliders[label]
        for end in (sl.minimum, sl.maximum):                  # both ends are accepted values
            SamplingSettings(**{name: end})
    assert sliders["Top-p"].minimum > 0 and sliders["Max new tokens"].maximum == 511
    seed = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "seed")
    assert isinstance(seed, gr.Textbox) and seed.value == ""     # never a Number that shows 0


def test_demo_notice_names_the_bundled_model_and_the_fallback(monkeypatch, tiny_dir):
    from playground.session import Space

    monkeypatch.setattr(loading, "BUNDLED_MODEL", tiny_dir)      # pretend the tiny model is the bundled one
    catalog = nucleus.ModelCatalog(str(tiny_dir), device="cpu", probe_hub=False)
    space = Space(catalog, {}, tiny_dir.name)
    assert "Nucleus-Nano" in handlers.notice(space, tiny_dir.name)
    assert "not meaningful" in handlers.notice(space, tiny_dir.name)
    space.fallback = "The Hub model X could not be loaded"
    assert handlers.notice(space, tiny_dir.name).startswith("The Hub model X could not be loaded")
    other = nucleus.ModelCatalog(str(tiny_dir), device="cpu", probe_hub=False)
    monkeypatch.setattr(loading, "BUNDLED_MODEL", tiny_dir / "none")
    assert handlers.notice(Space(other, {}, tiny_dir.name), tiny_dir.name) == ""


def test_presets_describe_the_prompt_not_what_the_loaded_model_does():
    for p in nucleus.load_presets().values():
        d = p.description
        # claims about a model name the model they are about (Nucleus-1B, base models); never "it does X"
        assert "Nucleus'" not in d and "favourite" not in d and not d.startswith("Nucleus is"), d


def test_automatic_hub_model_falls_back_and_a_named_one_does_not(monkeypatch, tiny_dir, tmp_path):
    monkeypatch.setattr(loading, "BUNDLED_MODEL", tiny_dir)
    monkeypatch.setattr(loading, "hub_reachable", lambda *a: True)
    monkeypatch.delenv("NUCLEUS_MODEL", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")                   # the Hub download fails
    args = app.parse_args(["--device", "cpu"])
    catalog, why, fallback = app.open_catalog(args)
    assert catalog.labels[0] == tiny_dir.name and "fallback" in why
    assert fallback.startswith(f"The Hub model {loading.DEFAULT_HUB_MODEL} could not be loaded")
    with pytest.raises(nucleus.ModelLoadError):
        app.open_catalog(app.parse_args(["--model", str(tmp_path / "nope")]))
    monkeypatch.setenv("NUCLEUS_MODEL", "NucleusOrg/not-here")
    with pytest.raises(nucleus.ModelLoadError):
        app.open_catalog(app.parse_args([]))


def test_help_answers_without_importing_torch():
    code = ("import runpy, sys\nsys.argv = ['app.py', '--help']\n"
            "try:\n    runpy.run_path('app.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "--max-seconds" in out.stdout and out.stdout.strip().endswith("NO-TORCH"), out.stdout + out.stderr


def test_command_line_values_are_checked_before_anything_loads(capsys):
    for argv, message in ((["--dtype", "float33"], "invalid choice: 'float33'"),
                          (["--port", "99999"], "--port must be 1 to 65535"),
                          (["--max-seconds", "0"], "--max-seconds must be > 0")):
        with pytest.raises(SystemExit):
            app.parse_args(argv)
        assert message in capsys.readouterr().err


def test_environment_settings_are_checked_at_start_up(monkeypatch, capsys):
    for name, value in (("NUCLEUS_QUANTIZE", "int3"), ("NUCLEUS_BACKEND_ENGINE", "tgi"),
                        ("NUCLEUS_MAX_SECONDS", "soon")):
        monkeypatch.setenv(name, value)
        with pytest.raises(SystemExit):
            app.parse_args([])
        assert f"{name}={value!r} (from the environment)" in capsys.readouterr().err
        monkeypatch.delenv(name)
    monkeypatch.setenv("NUCLEUS_STATIC_CACHE", "maybe")
    with pytest.raises(SystemExit):
        app.parse_args([])
    assert "NUCLEUS_STATIC_CACHE='maybe' (from the environment): must be one of auto, on, off" in capsys.readouterr().err
    monkeypatch.setenv("NUCLEUS_STATIC_CACHE", "off")
    app.parse_args([])                                                  # a valid value passes


def test_a_busy_port_is_named_before_the_model_loads(monkeypatch):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        monkeypatch.setattr(app, "open_catalog", lambda args: pytest.fail("the model was loaded"))
        with pytest.raises(SystemExit, match=f"port {port} is in use"):
            app.main(app.parse_args(["--port", str(port)]))


def test_raw_http_calls_get_defaults_for_left_out_values_and_a_sentence_for_the_rest():
    import json

    from playground.api import FillDefaults

    body, problem = FillDefaults.fill(json.dumps({"data": ["Hello", 0.5]}).encode())
    data = json.loads(body)["data"]
    assert problem is None and data[:2] == ["Hello", 0.5] and len(data) == 13 and data[7] == 200 and data[12] == "raw"
    for raw, says in ((b'{"data": []}', "prompt is missing"), (b'{"x": 1}', '"data" is missing or not a list'),
                      (b"nope", "the body is not JSON"), (json.dumps({"data": ["a"] * 14}).encode(), "14 values")):
        _, problem = FillDefaults.fill(raw)
        assert problem.startswith(says) and "[prompt, temperature, top_p" in problem
