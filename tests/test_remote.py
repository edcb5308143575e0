"""The remote backend against a real OpenAI-compatible engine on this machine: `transformers
serve` with the bundled nano on a loopback port, the Space pointed at it with --backend."""
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from gradio_client import Client

import nucleus
from nucleus.loading import BUNDLED_MODEL
from nucleus.remote import RemoteModel, connect, request_body
from nucleus.settings import SamplingSettings, SettingsError
from serve import free_port, running_app

PROMPT = "One night,"
TRANSFORMERS_CLI = os.path.join(os.path.dirname(sys.executable), "transformers")


class Engine:
    """`transformers serve` in a subprocess that the tests can kill and start again on the same port."""

    def __init__(self, model=BUNDLED_MODEL):
        self.port, self.proc, self.model = free_port(), None, model

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout=180):
        self.log = open(f"/tmp/transformers-serve-{self.port}.log", "w")
        self.proc = subprocess.Popen([TRANSFORMERS_CLI, "serve", "--host", "127.0.0.1", "--port", str(self.port),
                                      str(self.model)], stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + timeout
        while True:                     # up once /v1/models lists the preloaded model
            try:
                if b"loaded" in urllib.request.urlopen(self.url + "/models", timeout=2).read():
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"transformers serve did not start; see {self.log.name}")
            time.sleep(0.5)

    def kill(self):
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture(scope="module")
def engine():
    e = Engine()
    e.start()
    yield e
    e.kill()


@pytest.fixture(scope="module")
def bf16_nano():
    """The local reference: the engine loads the nano in its stored dtype, bf16; so does this."""
    return nucleus.load(BUNDLED_MODEL, device="cpu", dtype="bfloat16")


def after_join(local: str, remote: str) -> bool:
    """Equal, except that transformers serve 5.24 drops the first token's leading space."""
    return local == remote or local == " " + remote


def test_greedy_and_seeded_text_equal_the_local_backend(engine, bf16_nano):
    rm = connect(engine.url)
    assert rm.engine == "transformers" and rm.name == "nucleus-nano"
    for s in (SamplingSettings(temperature=0, max_new_tokens=24),
              SamplingSettings(temperature=0.8, top_p=0.9, top_k=40, repetition_penalty=1.3, max_new_tokens=24,
                               seed=5)):
        *_, remote = rm.stream(PROMPT, s)
        local = nucleus.generate(bf16_nano, PROMPT, s)
        assert after_join(local.text, remote.text) and remote.tokens == 24, (local.text, remote.text)
        *_, again = rm.stream(PROMPT, s)                  # reproducible through the backend
        assert again.text == remote.text


def test_stop_strings_and_stop_mid_stream(engine):
    rm = connect(engine.url)
    base = SamplingSettings(temperature=0, max_new_tokens=40)
    *_, full = rm.stream(PROMPT, base)
    stop = full.text[12:16]
    *_, cut = rm.stream(PROMPT, base.replace(stop=[stop]))
    assert cut.text == full.text[:full.text.index(stop)] and cut.finish_reason == "stop"
    cancel = threading.Event()
    updates = rm.stream(PROMPT, SamplingSettings(max_new_tokens=2000, seed=1), cancel)
    for i, u in enumerate(updates):
        if i == 3:
            cancel.set()
    assert u.done and u.finish_reason == "cancelled" and u.tokens < 2000


def test_settings_an_engine_cannot_honour_are_refused():
    tf = RemoteModel("http://x/v1", "m", "transformers", 512, nucleus.tokenizer.load_tokenizer())
    with pytest.raises(SettingsError, match="logprobs: transformers serve does not return"):
        request_body(tf, "hi", SamplingSettings(), 1, logprobs=3)
    vllm = RemoteModel("http://x/v1", "m", "vllm", 512, None)
    with pytest.raises(SettingsError, match="no_repeat_ngram_size"):
        request_body(vllm, "hi", SamplingSettings(no_repeat_ngram_size=3), 1, 0)
    body = request_body(vllm, "hi", SamplingSettings(top_k=0, min_p=0.1, repetition_penalty=1.4), 1, 2)
    assert body["top_k"] == -1 and body["min_p"] == 0.1 and body["repetition_penalty"] == 1.4 and body["logprobs"] == 2
    cpp = RemoteModel("http://x/v1", "m", "llama.cpp", 512, None)
    body = request_body(cpp, "hi", SamplingSettings(repetition_penalty=1.5, top_k=40), 1, 0)
    # llama.cpp's repeat penalty over the whole context, samplers in transformers' order
    assert body["repeat_penalty"] == 1.5 and body["repeat_last_n"] == 512 and body["top_k"] == 40
    assert body["samplers"] == ["penalties", "temperature", "top_k", "top_p", "min_p"]
    assert body["cache_prompt"] is False          # with the prompt cache, a seed's text depended on the cache
    with pytest.raises(SettingsError, match="random seed"):
        request_body(cpp, "hi", SamplingSettings(), 2**32 - 1, 0)
    other = RemoteModel("http://x/v1", "m", "openai", 512, None)                 # an engine Nucleus does not know
    body = request_body(other, "hi", SamplingSettings(repetition_penalty=1.0, top_p=0.8, stop=("x",)), 1, 0)
    assert not {"top_k", "min_p", "repetition_penalty", "repeat_penalty"} & set(body) and body["top_p"] == 0.8
    for bad in (dict(top_k=5), dict(min_p=0.1), dict(repetition_penalty=1.3)):
        with pytest.raises(SettingsError, match="not one Nucleus knows"):
            request_body(other, "hi", SamplingSettings(**{"repetition_penalty": 1.0, **bad}), 1, 0)


def test_the_space_on_the_engine_and_an_engine_that_dies(engine, bf16_nano):
    with running_app(BUNDLED_MODEL, NUCLEUS_BACKEND=engine.url) as url:
        client = Client(url, verbose=False)
        assert client.predict(api_name="/models") == ["nucleus-nano"]
        out = client.predict(PROMPT, temperature=0, max_new_tokens=16, api_name="/generate")
        local = nucleus.generate(bf16_nano, PROMPT, SamplingSettings(temperature=0, max_new_tokens=16))
        assert after_join(local.text, out["text"])
        with pytest.raises(Exception, match="logprobs: transformers serve does not return"):
            client.predict(PROMPT, logprobs=2, api_name="/generate")
        job = client.submit(PROMPT, max_new_tokens=2000, seed=3, api_name="/generate")
        while not job.outputs():
            time.sleep(0.05)
        engine.kill()                                             # the engine dies mid-request
        with pytest.raises(Exception, match="inference engine"):
            job.result(timeout=120)
        with pytest.raises(Exception, match="inference engine at .* is unreachable"):
            client.predict(PROMPT, max_new_tokens=4, api_name="/generate")
        engine.start()                                            # back: the Space serves again
        again = client.predict(PROMPT, temperature=0, max_new_tokens=16, api_name="/generate")
        assert again["text"] == out["text"]


def test_chat_goes_to_the_engines_chat_endpoint(engine, tmp_path):
    """Messages go to /v1/chat/completions, where the engine applies the model's own template: the
    greedy reply equals the local chat of the same checkpoint; a base model's engine says why not."""
    import shutil

    from train.chat import CHAT_TEMPLATE

    folder = tmp_path / "nano-chat"
    shutil.copytree(BUNDLED_MODEL, folder)
    tok = nucleus.tokenizer.load_tokenizer(folder)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(folder)
    messages = [{"role": "user", "content": "Tell me about bread."}]
    s = SamplingSettings(temperature=0, max_new_tokens=16)
    chat_engine = Engine(folder)
    chat_engine.start()
    try:
        rm = connect(chat_engine.url)
        assert rm.supports.chat
        *_, remote = rm.stream_chat(messages, s)
    finally:
        chat_engine.kill()
    local = list(nucleus.load(folder, device="cpu", dtype="bfloat16").stream_chat(messages, s))[-1]
    assert remote.tokens == 16 and after_join(local.text, remote.text), (local.text, remote.text)
    with pytest.raises(nucleus.remote.RemoteError):     # the engine's own refusal, as a sentence
        list(connect(engine.url).stream_chat(messages, s))
