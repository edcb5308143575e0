"""Nucleus: the small-LM library behind the Space, the CLI and the training kit.

    import nucleus
    lm = nucleus.load("models/nucleus-nano")
    print(nucleus.generate(lm, "### Lesson: Bread\n", nucleus.SamplingSettings(seed=1)).text)

Names are imported on first use, so `nucleus.options` (the flags app.py parses before anything
heavy) loads without torch.
"""
from __future__ import annotations

import importlib

_WHERE = {"Backend": "backend", "ModelLoadError": "backend", "Update": "backend", "generate": "backend",
          "stream": "backend", "LoadedModel": "local", "load": "loading", "resolve_model": "loading",
          "ModelCatalog": "catalog", "RemoteCatalog": "catalog", "Preset": "presets", "load_presets": "presets",
          "SamplingSettings": "settings", "SettingsError": "settings"}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'nucleus' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
