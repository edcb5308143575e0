"""Nucleus: the small-LM library behind the Space, the CLI and the training kit.

    import nucleus
    lm = nucleus.load("models/nucleus-nano")
    print(nucleus.generate(lm, "### Lesson: Bread\n", nucleus.SamplingSettings(seed=1)).text)
"""
from .generation import Update, generate, stream
from .loading import LoadedModel, ModelCatalog, ModelLoadError, load, resolve_model
from .presets import Preset, load_presets
from .settings import SamplingSettings, SettingsError

__all__ = ["LoadedModel", "ModelCatalog", "ModelLoadError", "Preset", "SamplingSettings", "SettingsError",
           "Update", "generate", "load", "load_presets", "resolve_model", "stream"]
