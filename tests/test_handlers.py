"""The page's handlers called as Gradio would call them, without a browser: values in, values out."""
import threading

import gradio as gr
import pytest
from starlette.datastructures import QueryParams

import nucleus
from nucleus import loading
from playground import handlers, links, views
from playground.session import Space

SETTINGS = dict(temperature=0.8, top_p=0.9, top_k=0, min_p=0.0, rep=1.3, ngram=0, max_new=12, stop_text="", seed="7")


class Request:
    """What a handler reads of gr.Request."""

    def __init__(self, session="visitor-a", query=""):
        self.session_hash, self.headers, self.query_params = session, {"host": "example.org:7860"}, QueryParams(query)


@pytest.fixture
def space(monkeypatch, tiny_dir):
    monkeypatch.setattr(loading, "BUNDLED_MODEL", tiny_dir / "none")
    catalog = nucleus.ModelCatalog(str(tiny_dir), device="cpu", probe_hub=False)
    return Space(catalog, nucleus.load_presets(), catalog.labels[0], max_seconds=30)


def values(**changes):
    return list({**SETTINGS, **changes}.values())


def run(space, text="### Recipe: Soup\n", session="visitor-a", **changes):
    return list(handlers.run(space, space.initial_label, text, *values(**changes), Request(session)))


def test_a_run_streams_then_hands_over_the_finished_run(space):
    out = run(space, max_new=20)
    text, tokens, status, done = out[-1]
    assert done["text"] and text == "### Recipe: Soup\n" + done["text"] and "Seed **7** · 20 tokens" in status
    assert len(done["records"]) == 20 and done["weights"] == "none" and done["engine"] is None
    assert tokens[0] == ("### Recipe: Soup\n", None) and "".join(t for t, _ in tokens[1:]) == done["text"]
    again = run(space, max_new=20)[-1][3]
    assert again["text"] == done["text"]                                   # the seed box's seed: the same text
    assert all(o[3] == gr.skip() or isinstance(o[3], dict) for o in out)


def test_bad_values_are_said_in_the_status_and_keep_the_last_result(space):
    (text, tokens, status, done), = run(space, seed="1e3")
    assert text == gr.skip() and "seed: expected a whole number" in status and "written in digits" in status
    (_, _, status, _), = run(space, text="x" * 20_000)
    assert "at most 16,000 are accepted" in status
    (_, _, status, _), = list(handlers.run(space, "no-such-model", "hi", *values(), Request()))
    assert "unknown model 'no-such-model'" in status


def test_stop_reaches_a_running_run_and_a_queued_one(space):
    req = Request("visitor-b")
    handlers.arm(space, 1000, req)                                          # clicked Generate ...
    status, *buttons = handlers.stop(space, 2000, req)                      # ... then Stop, while it waited
    assert status == "Stopped before it started." and all(b["interactive"] for b in buttons)   # said at once
    assert run(space, session="visitor-b")[-1][2] == "Stopped before it started."
    handlers.arm(space, 3000, req)
    updates = handlers.run(space, space.initial_label, "x", *values(max_new=400), req)
    next(updates)
    assert handlers.stop(space, 4000, req) == (gr.skip(),) * 6              # Stop while it streams: the run
                                                                           # writes its own last status
    *_, last = updates
    assert "· stopped" in last[2] and last[3]["text"] is not None
    assert space.sessions.busy() == 0


def test_a_visitor_who_leaves_with_runs_queued_does_not_leave_the_space_busy(space):
    for clicked in (1, 2, 3):
        handlers.arm(space, clicked, Request("leaver"))                     # three runs queued ...
    handlers.arm(space, 4, Request("stayer"))
    assert space.sessions.busy() == 4 and space.sessions.busy("leaver") == 3
    handlers.leave(space, Request("leaver"))                                # ... and the tab closed
    assert space.sessions.busy() == 1
    # a run of the leaver that the queue starts anyway is stopped before it runs, and counts nothing
    assert run(space, session="leaver")[-1][2] == "Stopped before it started."
    assert space.sessions.busy() == 1


def test_the_status_says_why_a_run_waits(space):
    assert handlers.arm(space, 1, Request("a")) == gr.skip()                 # nothing ahead: no word
    assert "1 run of other visitors ahead" in handlers.arm(space, 2, Request("b"))
    assert "your own 1 run" in handlers.arm(space, 3, Request("a"))          # e.g. its own Compare
    for i in range(space.queue_limit - 3):
        handlers.arm(space, 10 + i, Request(f"v{i}"))
    with pytest.raises(gr.Error, match="The Space is busy: 16 runs are ahead of yours"):
        handlers.arm(space, 99, Request("late"))


def test_undo_clear_and_continue(space):
    hist = handlers.snapshot("first prompt", "", [])
    prompt, hist2 = handlers.prepare_continue("ignored", {"prompt": "A", "text": "B", "shown_prompt": "A"}, hist)
    assert prompt == "AB" and hist2[-1] == ("ignored", "AB")
    assert handlers.prepare_continue("as is", None, hist) == ("as is", hist)  # before any run
    text, shown, tokens, status, rest, last = handlers.undo(hist2)
    assert (text, shown, status, rest) == ("ignored", "AB", "Undone: back to before the last step (1 more step to "
                                                            "undo).", hist)
    assert handlers.undo(hist)[3] == "Undone: back to where you started."
    assert handlers.undo([])[3] == "Nothing to undo."
    assert handlers.clear("p", "p+t", [])[4] == [("p", "p+t")]


def test_presets_meter_and_model_menu(space):
    desc, prompt, temperature, *_ = handlers.choose_preset(space, "greedy")
    assert prompt == space.presets["greedy"].prompt and temperature == 0.0
    with pytest.raises(gr.Error, match="unknown preset"):
        handlers.choose_preset(space, "nope")
    assert "tokens of the model's 512-token context" in handlers.measure(space, space.initial_label, "hello", 50)
    info, max_new, notice = handlers.switch_model(space, space.initial_label, 2000)
    assert max_new.maximum == 511 and max_new.value == 511 and space.initial_label in info


def test_the_code_panel_says_which_weights_ran(space):
    done = run(space)[-1][3]
    tokens, index, rendered, py, client, cli, curl, button, hint = handlers.after_run(done, Request())
    assert "int8" not in py and "api_name=\"/generate\"" in client and "http://example.org:7860/" in client
    assert hint == views.inspector_hint(None, True) and index[0] == -1
    py_int4 = handlers.after_run({**done, "weights": "int4"}, Request())[3]
    assert py_int4.startswith("# The page used int4 weights")


def test_the_inspector_reads_the_selected_token(space):
    done = run(space)[-1][3]
    _, index = views.token_entries(done["shown_prompt"], done["records"])
    event = gr.SelectData(None, {"index": 1, "value": "x"})
    summary, rows = handlers.inspect(done, index, event)
    assert summary.startswith("Token 1,") and any("✔ chosen" in r[-1] for r in rows)
    assert handlers.inspect(done, index, gr.SelectData(None, {"index": 0, "value": "p"}))[0].startswith("That is your prompt")


def test_compare_runs_both_columns_with_one_seed(space):
    out = list(handlers.compare(space, space.initial_label, 0.3, space.initial_label, 1.0, "Once", *values(),
                                Request()))
    a, b, status = out[-1]
    assert a.startswith("Once") and b.startswith("Once") and "A: " in status and "B: " in status
    assert "Seed **7**" in status and space.sessions.busy() == 0


def test_share_links_round_trip_and_bad_values_are_named(space):
    query = links.make_link(space, "Hello <b>", "recipe", space.initial_label, *values(seed=""),
                            {"settings": {"seed": 42}})
    assert "seed=42" in query                                              # the seed the last run drew
    restored = links.restore(space, Request(query=query.lstrip("?")))
    assert restored[2] == "Hello <b>" and restored[12] == "42" and restored[13] == ""
    bad = links.restore(space, Request(query="temperature=5&seed=1e3&max_new_tokens=500"))
    assert "temperature='5'" in bad[13] and "seed='1e3'" in bad[13]
    assert "max_new_tokens=500 (outside this page's range, 1 to 511)" not in bad[13] and bad[10] == 500
    over = links.restore(space, Request(query="max_new_tokens=4000"))
    assert "max_new_tokens=4000 (outside this page's range, 1 to 511)" in over[13] and over[10] == gr.skip()
    assert links.restore(space, Request(query="utm=1")) == (gr.skip(),) * 14


def test_stop_from_another_thread_ends_the_run_within_one_token(space):
    req = Request("threads")
    handlers.arm(space, 1, req)
    got, streaming = [], threading.Event()

    def consume():
        for update in handlers.run(space, space.initial_label, "x", *values(max_new=500), req):
            got.append(update)
            streaming.set()

    t = threading.Thread(target=consume)
    t.start()
    assert streaming.wait(30)
    handlers.stop(space, 2, req)
    t.join(30)
    assert not t.is_alive() and "· stopped" in got[-1][2]


def test_the_inspector_shows_whitespace_and_never_pads_with_removed_tokens(space):
    assert [views.visible(t) for t in (" The", "The", "\n", "a\tb", "\x00")] == ["␣The", "The", "⏎", "a⇥b", "\\x00"]
    lm = space.catalog.get(space.initial_label)
    out = nucleus.generate(lm, "### Recipe: Soup\n", nucleus.SamplingSettings(top_p=0.3, max_new_tokens=20, seed=1),
                           record=10)
    for r in out.records:
        raw_best = sorted(r.candidates, key=lambda c: -c.raw)[:10]
        for c in r.candidates:       # every row: among the model's 10 best, kept to draw from, or the one drawn
            assert c in raw_best or c.final > 0 or c.token_id == r.token_id
        _, rows = views.inspect_step(r, 0, nucleus.SamplingSettings(top_p=0.3).to_dict())
        assert all(row[0] and row[0].isprintable() for row in rows), rows
