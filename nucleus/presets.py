"""Prompt presets: data in examples/presets.json, read into `Preset` objects.

Each preset is a prompt template, its recommended SamplingSettings (validated like any other
settings, so a bad preset file fails loudly at start-up) and one line on what it shows.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .settings import SamplingSettings, SettingsError

PRESETS_FILE = Path(__file__).resolve().parent.parent / "examples" / "presets.json"


@dataclass(frozen=True)
class Preset:
    name: str           # stable id used by the CLI and the API, e.g. "recipe"
    title: str          # shown in the UI
    description: str
    prompt: str
    settings: SamplingSettings

    def to_dict(self) -> dict:
        return {"name": self.name, "title": self.title, "description": self.description,
                "prompt": self.prompt, "settings": self.settings.to_dict()}


def load_presets(path: str | Path = PRESETS_FILE) -> dict[str, Preset]:
    """Presets by name, in file order."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read presets from {path}: {e}") from None
    presets: dict[str, Preset] = {}
    for i, item in enumerate(raw):
        try:
            preset = Preset(name=item["name"], title=item["title"], description=item["description"],
                            prompt=item["prompt"], settings=SamplingSettings.from_dict(item.get("settings", {})))
        except KeyError as e:
            raise ValueError(f"{path}: preset #{i + 1} lacks the key {e}") from None
        except SettingsError as e:
            raise ValueError(f"{path}: preset {item.get('name')!r}: {e}") from None
        if preset.name in presets:
            raise ValueError(f"{path}: preset name {preset.name!r} appears twice")
        presets[preset.name] = preset
    return presets
