import math

import pytest

from nucleus.settings import (BOUNDS, MAX_STOP_STRINGS, SamplingSettings, SettingsError, format_stop_text,
                              parse_stop_text)

# (field, a value just outside the range on each side that has one)
OUT_OF_RANGE = [
    ("temperature", -0.01), ("temperature", 2.01),
    ("top_p", 0.0), ("top_p", 1.01),
    ("top_k", -1), ("top_k", 1001),
    ("min_p", -0.1), ("min_p", 1.5),
    ("repetition_penalty", 0.99), ("repetition_penalty", 2.01),
    ("no_repeat_ngram_size", -1), ("no_repeat_ngram_size", 21),
    ("max_new_tokens", 0), ("max_new_tokens", 4097),
    ("seed", -1), ("seed", 2**32),
]
EDGES_OK = [("temperature", 0.0), ("temperature", 2.0), ("top_p", 1.0), ("top_p", 1e-6), ("top_k", 0),
            ("top_k", 1000), ("min_p", 0.0), ("min_p", 1.0), ("repetition_penalty", 1.0),
            ("repetition_penalty", 2.0), ("no_repeat_ngram_size", 0), ("max_new_tokens", 1),
            ("max_new_tokens", 4096), ("seed", 0), ("seed", 2**32 - 1)]


def test_every_field_has_a_bound_and_the_table_covers_the_tests():
    assert {f for f, _ in OUT_OF_RANGE} == set(BOUNDS)


@pytest.mark.parametrize("field,value", OUT_OF_RANGE)
def test_out_of_range_names_the_field_and_the_range(field, value):
    with pytest.raises(SettingsError) as err:
        SamplingSettings(**{field: value})
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}:") and "allowed:" in str(err.value) and "<=" in str(err.value)


@pytest.mark.parametrize("field,value", EDGES_OK)
def test_edges_are_allowed_and_kept_exactly(field, value):
    assert getattr(SamplingSettings(**{field: value}), field) == value


@pytest.mark.parametrize("field", sorted(BOUNDS))
@pytest.mark.parametrize("bad", ["0.5", True, None, [1], math.nan, math.inf])
def test_wrong_types_are_rejected(field, bad):
    if field == "seed" and bad is None:
        assert SamplingSettings(seed=None).seed is None      # None means "random seed"
        return
    with pytest.raises(SettingsError, match=f"^{field}:"):
        SamplingSettings(**{field: bad})


def test_integer_fields_refuse_fractions_but_accept_integral_floats():
    assert SamplingSettings(top_k=5.0).top_k == 5 and isinstance(SamplingSettings(top_k=5.0).top_k, int)
    with pytest.raises(SettingsError, match="whole number"):
        SamplingSettings(max_new_tokens=10.5)


def test_stop_strings_are_validated():
    assert SamplingSettings(stop=["\n\n", "END"]).stop == ("\n\n", "END")
    for bad, msg in [("END", "list of strings"), (["a"] * (MAX_STOP_STRINGS + 1), "at most"),
                     ([""], "1 to"), (["x" * 65], "1 to"), ([3], "1 to")]:
        with pytest.raises(SettingsError, match=msg):
            SamplingSettings(stop=bad)


def test_from_dict_rejects_unknown_keys_and_settings_are_frozen():
    with pytest.raises(SettingsError, match="unknown setting"):
        SamplingSettings.from_dict({"temprature": 0.5})
    s = SamplingSettings()
    with pytest.raises(Exception):
        s.temperature = 1.0
    assert s.replace(top_k=40).top_k == 40 and s.top_k == 0
    with pytest.raises(SettingsError):
        s.replace(top_p=2.0)


def test_generation_config_mapping():
    g = SamplingSettings(temperature=0.8, top_p=0.95, top_k=0, min_p=0.05, repetition_penalty=1.5,
                         no_repeat_ngram_size=3, max_new_tokens=77, stop=["\n\n"]).to_generation_config(2)
    assert (g.do_sample, g.temperature, g.top_p, g.top_k, g.min_p) == (True, 0.8, 0.95, 0, 0.05)
    assert (g.repetition_penalty, g.no_repeat_ngram_size, g.max_new_tokens) == (1.5, 3, 77)
    assert g.stop_strings == ["\n\n"] and g.eos_token_id == 2 and g.pad_token_id == 2
    greedy = SamplingSettings(temperature=0).to_generation_config(2)
    assert greedy.do_sample is False and greedy.repetition_penalty == 1.5


def test_stop_text_box_round_trip():
    stops = ["\nQuestion:", "\n\n", "a\\b", "tab\there"]
    assert parse_stop_text(format_stop_text(stops)) == stops
    assert parse_stop_text("") == [] and parse_stop_text(None) == []


def test_the_chain_is_transformers_order_and_greedy_keeps_the_penalties():
    s = SamplingSettings(temperature=0.8, top_k=40, top_p=0.9, min_p=0.05, repetition_penalty=1.5,
                         no_repeat_ngram_size=3)
    assert [name for name, _ in s.chain()] == ["penalties", "penalties", "temperature", "top-k", "top-p", "min-p"]
    assert [type(p).__name__ for _, p in s.chain()][:2] == ["RepetitionPenaltyLogitsProcessor",
                                                            "NoRepeatNGramLogitsProcessor"]
    greedy = s.replace(temperature=0)
    assert [name for name, _ in greedy.chain()] == ["penalties", "penalties"]
    assert SamplingSettings(temperature=1.0, top_p=1.0, repetition_penalty=1.0).chain() == []
    # the help text no longer promises "the most likely token" when penalties apply
    assert "after the repetition penalty" in BOUNDS["temperature"][4]


def test_one_seed_rule_for_the_seed_box_and_share_links():
    from nucleus.reproduce import read_query
    from nucleus.settings import parse_seed

    assert parse_seed("") is None and parse_seed("  ") is None and parse_seed(None) is None
    assert parse_seed(" 42 ") == 42 and parse_seed(7) == 7
    for bad in ("1e3", "4.0", "-3", "٣", "0x10"):
        with pytest.raises(SettingsError, match="seed: expected a whole number from 0 to 4294967295 written in digits"):
            parse_seed(bad)
        got = read_query(f"?seed={bad}", set(), set(), 100)
        assert "seed" not in got.values and "written in digits" in got.ignored[0]
    with pytest.raises(SettingsError, match="seed"):
        parse_seed(str(2**32))
    assert read_query("?seed=1000", set(), set(), 100).values["seed"] == 1000
