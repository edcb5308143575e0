"""Prompt presets: data in examples/presets.json, read into `Preset` objects.

Each preset is a prompt template, its recommended SamplingSettings (validated like any other
settings, so a bad preset file fails loudly at start-up) and one line on what it shows.
A preset of kind "chat" is for a model with a chat template (the page's Instruct tab, the CLI's
`chat`): its prompt is the user's message and `system` the system prompt; kind "completion" (the
default) is text for a base model to continue.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .settings import SamplingSettings, SettingsError

KINDS = ("completion", "chat")
PRESETS_FILE = Path(__file__).resolve().parent.parent / "examples" / "presets.json"


@dataclass(frozen=True)
class Preset:
    name: str           # stable id used by the CLI and the API, e.g. "recipe"
    title: str          # shown in the UI
    description: str
    prompt: str
    settings: SamplingSettings
    kind: str = "completion"   # or "chat"
    system: str = ""           # a chat preset's system prompt

    def to_dict(self) -> dict:
        return {"name": self.name, "title": self.title, "description": self.description, "kind": self.kind,
                "prompt": self.prompt, "system": self.system, "settings": self.settings.to_dict()}

    def messages(self) -> list[dict]:
        """A chat preset as OpenAI-shaped messages."""
        return ([{"role": "system", "content": self.system}] if self.system else []) + \
            [{"role": "user", "content": self.prompt}]


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
                            prompt=item["prompt"], settings=SamplingSettings.from_dict(item.get("settings", {})),
                            kind=item.get("kind", "completion"), system=item.get("system", ""))
        except KeyError as e:
            raise ValueError(f"{path}: preset #{i + 1} lacks the key {e}") from None
        except SettingsError as e:
            raise ValueError(f"{path}: preset {item.get('name')!r}: {e}") from None
        if preset.kind not in KINDS or not isinstance(preset.system, str):
            raise ValueError(f"{path}: preset {preset.name!r}: kind must be one of {', '.join(KINDS)} and system text")
        if preset.name in presets:
            raise ValueError(f"{path}: preset name {preset.name!r} appears twice")
        presets[preset.name] = preset
    return presets
