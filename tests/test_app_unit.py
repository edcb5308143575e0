"""app.py wiring that the end-to-end tests cannot reach: ZeroGPU and the Spaces-only button."""
import sys
import types

import gradio as gr

import app
import nucleus
from nucleus import loading


def test_gpu_lease_is_a_no_op_off_zerogpu(monkeypatch):
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)

    def fn():
        return 1
    assert app._gpu_lease(fn) is fn


def test_gpu_lease_uses_spaces_gpu_on_zerogpu(monkeypatch):
    calls = []
    fake = types.ModuleType("spaces")
    fake.GPU = lambda duration: (calls.append(duration), lambda f: ("leased", f))[1]
    monkeypatch.setitem(sys.modules, "spaces", fake)
    monkeypatch.setenv("SPACES_ZERO_GPU", "1")
    assert app._gpu_lease(print) == ("leased", print) and calls == [app.ZERO_GPU_SECONDS]


def _buttons(demo):
    return [b for b in demo.blocks.values() if isinstance(b, gr.DuplicateButton)]


def test_duplicate_button_only_on_spaces(monkeypatch, tiny_dir):
    monkeypatch.setattr(loading, "BUNDLED_MODEL", tiny_dir / "none")
    catalog = nucleus.ModelCatalog(str(tiny_dir), device="cpu", probe_hub=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert _buttons(app.build_demo(catalog)) == []
    monkeypatch.setenv("SPACE_ID", "someone/nucleus")
    assert len(_buttons(app.build_demo(catalog))) == 1
