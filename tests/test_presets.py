import json

import pytest

from nucleus.presets import load_presets


def test_the_promised_presets_exist_with_valid_settings():
    presets = load_presets()
    for name in ("recipe", "history-lesson", "story", "textbook-chapter", "python-lesson", "question-answer"):
        p = presets[name]
        assert p.prompt and p.description and p.title
    assert presets["textbook-chapter"].prompt.endswith("\n### Introduction\n")
    assert presets["python-lesson"].prompt.startswith("### Lesson: Python Programming 101\n")
    assert presets["greedy"].settings.temperature == 0.0
    assert presets["question-answer"].settings.stop          # keeps the model to one answer


def test_bad_preset_files_fail_loudly(tmp_path):
    f = tmp_path / "p.json"
    f.write_text(json.dumps([{"name": "x", "title": "X", "description": "d", "prompt": "p",
                              "settings": {"temperature": 9}}]))
    with pytest.raises(ValueError, match="preset 'x': temperature"):
        load_presets(f)
    f.write_text(json.dumps([{"name": "x", "title": "X", "prompt": "p"}]))
    with pytest.raises(ValueError, match="lacks the key 'description'"):
        load_presets(f)
    f.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read presets"):
        load_presets(f)
