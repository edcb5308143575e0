"""Token probabilities from a remote engine: the two shapes engines stream them in become the API's
OpenAI lists and the page's token records. The engine here is a scripted SSE server on loopback
that replays chunks shaped as vLLM (OpenAI legacy lists) and llama.cpp's server (per-token
objects) send them; tests/test_remote.py runs a real engine (transformers serve, no logprobs)."""
import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nucleus.remote import RemoteError, RemoteModel
from nucleus.settings import SamplingSettings
from nucleus.tokenizer import load_tokenizer
from playground import views

# (text, logprob, {alternative: logprob}, id) per token; " cats" loses to " dogs" at step 2
STEPS = [(" I", -0.1, {" I": -0.1, " We": -2.5}, 315), (" like", -0.7, {" like": -0.7, " love": -0.9}, 737),
         (" dogs", -1.2, {" cats": -0.8, " dogs": -1.2, " fish": -3.0}, 9540), (".", -0.05, {".": -0.05}, 28723),
         ("\nEND", -0.3, {"\nEND": -0.3}, 13)]


def legacy_chunks():
    for text, lp, tops, _ in STEPS:
        yield {"choices": [{"text": text, "logprobs": {"tokens": [text], "token_logprobs": [lp],
                                                       "top_logprobs": [tops], "text_offset": [99]}}]}


def per_token_chunks():
    for text, lp, tops, tid in STEPS:
        yield {"choices": [{"text": text, "logprobs": {"content": [{
            "id": tid, "token": text, "logprob": lp,
            "top_logprobs": [{"id": tid if t == text else 9, "token": t, "logprob": v} for t, v in tops.items()]}]}}]}


class Engine(ThreadingHTTPServer):
    def __init__(self, chunks):
        self.chunks, self.bodies = chunks, []
        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):                      # /v1/models, as vLLM answers it
        body = json.dumps({"data": [{"id": "nucleus", "owned_by": "vllm", "max_model_len": 512}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self.server.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        try:
            for chunk in self.server.chunks():
                if isinstance(chunk, float):           # a silent engine: nothing for that many seconds
                    time.sleep(chunk)
                    continue
                line = chunk if isinstance(chunk, bytes) else f"data: {json.dumps(chunk)}\n\n".encode()
                self.wfile.write(line)
                self.wfile.flush()
            self.wfile.write(b"data: [DONE]\n\n")
        except (BrokenPipeError, ConnectionResetError):     # the client left
            pass


@pytest.fixture(params=["vllm", "llama.cpp"])
def served(request):
    engine = Engine(legacy_chunks if request.param == "vllm" else per_token_chunks)
    yield RemoteModel(engine.url, "nucleus", request.param, 512, load_tokenizer()), engine
    engine.shutdown()


def run(rm, settings, **kw):
    settings = settings.replace(repetition_penalty=1.0)        # llama.cpp's server takes no other
    return list(rm.stream("Pets:", settings, **kw))[-1]


def test_records_hold_the_engine_probabilities_and_stop_where_the_text_is_cut(served):
    rm, engine = served
    last = run(rm, SamplingSettings(stop=("\nEND",), seed=1), record=10)
    assert engine.bodies[-1]["logprobs"] == 10
    assert last.text == " I like dogs."                      # the stop string is cut ...
    recs = last.records
    assert [r.text for r in recs] == [" I", " like", " dogs", "."]   # ... and its token has no record
    assert "".join(r.text for r in recs) == last.text
    dogs = recs[2]
    assert dogs.raw_logprob == pytest.approx(-1.2) and math.isnan(dogs.final)
    assert [c.token for c in dogs.candidates] == [" cats", " dogs", " fish"]          # most likely first
    assert dogs.candidates[0].raw == pytest.approx(math.exp(-0.8))
    assert [c.token_id == dogs.token_id for c in dogs.candidates] == [False, True, False]
    if rm.engine == "llama.cpp":
        assert dogs.token_id == 9540                            # ids where the engine gives them


def test_the_api_gets_openai_lists_with_k_alternatives(served):
    rm, _ = served
    last = run(rm, SamplingSettings(seed=1), logprobs=2)
    lp = last.logprobs
    assert lp["tokens"] == [s[0] for s in STEPS] and lp["token_logprobs"] == [s[1] for s in STEPS]
    assert lp["top_logprobs"][2] == pytest.approx({" cats": -0.8, " dogs": -1.2})      # the best 2 of 3
    assert list(lp["top_logprobs"][2]) == [" cats", " dogs"]                            # most likely first
    # OpenAI's offsets: from the start of prompt + completion ("Pets:" is 5), whatever the engine counted
    assert lp["text_offset"] == [5, 7, 12, 17, 18]
    assert not last.records
    cut = run(rm, SamplingSettings(seed=1, stop=("\nEND",)), logprobs=2).logprobs     # no row for the cut stop string
    assert cut["tokens"] == [" I", " like", " dogs", "."] and len(cut["top_logprobs"]) == 4


def test_the_page_shows_engine_tokens_and_their_alternatives(served):
    rm, _ = served
    recs = run(rm, SamplingSettings(seed=1), record=10).records
    entries, index = views.token_entries("Pets:", recs)
    assert entries[0] == ("Pets:", None) and [e[0] for e in entries[1:]] == [s[0] for s in STEPS]
    assert entries[3] == (" dogs", views.bucket(math.exp(-1.2)))                       # 0.30: "0.2 – 0.5"
    summary, rows = views.inspect_step(recs[2], 2, SamplingSettings().to_dict())
    assert "0.301" in summary and "only the model column" in summary
    assert rows[0] == ["␣cats", round(100 * math.exp(-0.8), 3), None, None, None, ""]   # spaces shown
    assert rows[1][-1] == "✔ chosen"


def test_prompts_are_fitted_to_the_engines_context_as_locally():
    """The context rules (docs/playground.md) hold with a backend: max new tokens lowered with a note, an
    over-long prompt cut oldest first (the engine gets only the part the model sees)."""
    import nucleus
    from nucleus.tokenizer import encode_prompt, load_tokenizer

    engine = Engine(legacy_chunks)
    try:
        tok = load_tokenizer()
        rm = RemoteModel(engine.url, "nucleus", "vllm", 512, tok)
        s = SamplingSettings(max_new_tokens=10, seed=1, repetition_penalty=1.0)
        near = "word " * 505                                    # 507 tokens with <s>: 5 new tokens fit
        u = nucleus.generate(rm, near, s)
        assert engine.bodies[-1]["max_tokens"] == 512 - len(encode_prompt(tok, near)) == 5
        assert engine.bodies[-1]["prompt"] == near and u.prompt_start == 0
        assert "Max new tokens lowered from 10 to 5" in u.warning
        long = "".join(f"w{i} " for i in range(700))
        u = nucleus.generate(rm, long, s)
        sent = engine.bodies[-1]["prompt"]
        assert u.prompt_start > 0 and sent == long[u.prompt_start:] and long.endswith(sent)
        assert len(encode_prompt(tok, sent)) + engine.bodies[-1]["max_tokens"] <= 512
        assert "more than the model's 512-token context" in u.warning
    finally:
        engine.shutdown()


def test_llama_cpp_chunk_texts_give_way_to_the_token_pieces():
    """llama.cpp's server reports streamed chunks as token texts: with a stop string pending it holds
    text back (here " I like" arrives on the second token) and rewrites the token it cut. With the
    token ids and the tokenizer, records and the API's lists carry each token's own text."""
    from nucleus.tokenizer import load_tokenizer

    tok = load_tokenizer()
    ids = tok.convert_tokens_to_ids(["▁I", "▁like", "▁dogs", ".", "▁Key"])
    chunks = [("", ids[0]), (" I like", ids[1]), (" dogs", ids[2]), (".", ids[3]), (" K", ids[4])]

    def shifted():
        for text, tid in chunks:
            yield {"choices": [{"text": text, "logprobs": {"content": [{
                "id": tid, "token": text, "logprob": -0.5, "top_logprobs": [{"id": tid, "token": text, "logprob": -0.5}]}]}}]}
        yield {"choices": [{"text": "", "finish_reason": "stop"}]}

    engine = Engine(shifted)
    try:
        rm = RemoteModel(engine.url, "nucleus", "llama.cpp", 512, tok)
        last = run(rm, SamplingSettings(seed=1, stop=("ey",)), logprobs=1, record=10)
        assert last.text == " I like dogs. K" and last.finish_reason == "stop"
        assert [r.text for r in last.records] == [" I", " like", " dogs", "."]     # " Key" was cut: not kept
        assert last.logprobs["tokens"] == [" I", " like", " dogs", "."]
        assert last.logprobs["text_offset"] == [5, 7, 12, 17]
    finally:
        engine.shutdown()


def test_cli_refuses_what_the_engine_cannot_do_before_printing_anything():
    import subprocess
    import sys

    from conftest import ROOT

    engine = Engine(legacy_chunks)
    try:
        out = subprocess.run([sys.executable, "-m", "nucleus", "generate", "--backend", engine.url, "--prompt", "Hello",
                              "--no-repeat-ngram-size", "3"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and out.stdout == ""
        assert out.stderr.strip() == ("error: no_repeat_ngram_size: vllm has no no-repeat n-gram setting; use 0 with "
                                      "this backend")
        assert engine.bodies == []                               # nothing was sent
    finally:
        engine.shutdown()


# ---- the stream itself: bad lines, silence, usage ------------------------------------------------
def scripted(*chunks):
    return Engine(lambda: iter(chunks))


def test_a_malformed_event_line_is_one_clear_error():
    engine = scripted({"choices": [{"text": " I"}]}, b"data: {not json\n\n")
    try:
        rm = RemoteModel(engine.url, "nucleus", "vllm", 512, load_tokenizer())
        with pytest.raises(RemoteError, match="sent an event that is not JSON: '{not json'"):
            run(rm, SamplingSettings(seed=1))
        engine.chunks = lambda: iter([b'data: ["a list"]\n\n'])
        with pytest.raises(RemoteError, match="not a completion chunk"):
            run(rm, SamplingSettings(seed=1))
    finally:
        engine.shutdown()


def test_a_slow_first_token_ends_as_time_and_stop_ends_a_silent_run_within_a_second():
    engine = scripted(5.0, {"choices": [{"text": " late"}]})
    try:
        rm = RemoteModel(engine.url, "nucleus", "vllm", 512, load_tokenizer())
        began = time.monotonic()
        last = run(rm, SamplingSettings(seed=1), max_time=0.5)
        assert last.finish_reason == "time" and last.text == "" and time.monotonic() - began < 2.0
        cancel = threading.Event()
        threading.Timer(0.3, cancel.set).start()
        began = time.monotonic()
        last = run(rm, SamplingSettings(seed=1), cancel=cancel)
        assert last.finish_reason == "cancelled" and time.monotonic() - began < 1.3     # 0.3 s + within a second
    finally:
        engine.shutdown()


def test_token_counts_come_from_the_engines_usage():
    engine = scripted({"choices": [{"text": " I like"}]}, {"choices": [{"text": " dogs", "finish_reason": "length"}]},
                      {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 3}})
    try:
        rm = RemoteModel(engine.url, "nucleus", "vllm", 512, load_tokenizer())
        last = run(rm, SamplingSettings(seed=1, max_new_tokens=3))
        assert engine.bodies[-1]["stream_options"] == {"include_usage": True}
        assert (last.text, last.tokens, last.finish_reason) == (" I like dogs", 3, "length")   # 2 chunks, 3 tokens
    finally:
        engine.shutdown()


def test_cli_logprobs_from_an_engine_that_returns_none_is_one_sentence():
    import subprocess
    import sys

    from conftest import ROOT

    engine = scripted({"choices": [{"text": " I"}]}, {"choices": [{"text": " like", "finish_reason": "stop"}]})
    try:
        out = subprocess.run([sys.executable, "-m", "nucleus", "generate", "--backend", engine.url, "--prompt", "Hi",
                              "--logprobs", "2", "--repetition-penalty", "1"], cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0 and out.stdout == "" and "Traceback" not in out.stderr
        assert "vllm returned no log-probabilities for this run." in out.stderr
    finally:
        engine.shutdown()
