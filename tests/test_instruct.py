"""The instruct stage (train/chat.py, train/instruct.py): the chat format, the loss on replies only,
packing without one example seeing another, and a run from a local file in OpenOrca's schema."""
import json
import subprocess
import sys

import pytest
import torch
from gradio_client import Client
from gradio_client.exceptions import AppError

import nucleus
from conftest import ROOT
from nucleus.tokenizer import load_tokenizer
from serve import running_app
from train import chat

NANO = ROOT / "models" / "nucleus-nano"
CHATS = [{"system_prompt": "You are a helpful assistant.", "question": f"What is {i} plus {i}?",
          "response": f"{i} plus {i} is {2 * i}."} for i in range(40)]


@pytest.fixture(scope="module")
def tok():
    t = load_tokenizer(NANO)
    t.chat_template = chat.CHAT_TEMPLATE
    return t


def test_the_template_renders_the_documented_format_and_the_labels_cover_the_reply(tok):
    messages = chat.messages_of(CHATS[3], chat.Fields(), "test")
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == "<s>[INST] You are a helpful assistant.\n\nWhat is 3 plus 3? [/INST] 3 plus 3 is 6.</s>"
    no_system = chat.messages_of({"question": "Hi?", "response": "Hello."}, chat.Fields(), "test")
    assert tok.apply_chat_template(no_system, tokenize=False) == "<s>[INST] Hi? [/INST] Hello.</s>"
    ids, labels = chat.encode(tok, messages)
    # counted by hand from a separate tokenisation: the prompt's ids, then the reply's
    prompt_ids = tok("<s>[INST] You are a helpful assistant.\n\nWhat is 3 plus 3? [/INST]",
                     add_special_tokens=False)["input_ids"]
    assert ids[:len(prompt_ids)] == prompt_ids and ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert labels[:len(prompt_ids)] == [chat.IGNORE] * len(prompt_ids) and labels[len(prompt_ids):] == ids[len(prompt_ids):]
    assert tok.decode(ids[len(prompt_ids):], skip_special_tokens=True).strip() == "3 plus 3 is 6."


def test_a_record_without_a_reply_is_named(tok):
    with pytest.raises(chat.D.DataError, match=r"f\.jsonl: a record has no text in 'response'"):
        chat.messages_of({"question": "Hi?"}, chat.Fields(), "f.jsonl")


@pytest.fixture(scope="module")
def nano():
    return nucleus.load(NANO, device="cpu", dtype=torch.float32, quantize="none").model


def test_loss_is_the_mean_over_reply_tokens_only_and_prompt_labels_change_nothing(tok, nano):
    examples = [chat.encode(tok, chat.messages_of(c, chat.Fields(), "t")) for c in CHATS[:6]]
    blocks = chat.PackedExamples(examples, 128, tok.eos_token_id)
    batch = blocks.batch(range(len(blocks)))
    with torch.no_grad():
        out = nano(**batch, use_cache=False)
        # by hand: each block's logits predict the next token; only positions whose next label is a reply token count
        logp = torch.log_softmax(out.logits[:, :-1].double(), -1)
        target = batch["labels"][:, 1:]
        keep = target != chat.IGNORE
        by_hand = -logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)[keep].mean()
        assert abs(out.loss.item() - by_hand.item()) < 1e-4
        assert keep.sum() == sum(sum(x != chat.IGNORE for x in e[1][1:]) for e in examples)   # every reply token
        # a prompt token's label is ignored, whatever it says
        altered = {**batch, "labels": batch["labels"].clone()}
        first_prompt = (batch["labels"][0] == chat.IGNORE).nonzero()[1].item()
        altered["labels"][0, first_prompt] = 123
        assert nano(**altered, use_cache=False).loss.item() != out.loss.item()              # a label there would count...
        altered["labels"][0, first_prompt] = chat.IGNORE
        assert nano(**altered, use_cache=False).loss.item() == out.loss.item()              # ...an ignored one does not


def test_an_example_does_not_see_its_neighbour_in_the_pack(tok, nano):
    a, b, c = (chat.encode(tok, chat.messages_of(x, chat.Fields(), "t")) for x in CHATS[:3])
    other = chat.encode(tok, chat.messages_of(CHATS[30], chat.Fields(), "t"))
    one = chat.PackedExamples([a, b], 256, tok.eos_token_id).batch([0])
    two = chat.PackedExamples([c, b], 256, tok.eos_token_id).batch([0])     # b's neighbour changed
    three = chat.PackedExamples([other, b], 256, tok.eos_token_id).batch([0])
    assert len(a[0]) != len(other[0]) or a[0] != other[0]
    with torch.no_grad():
        # use_cache=False as in training (train/engine.py): with a cache transformers reads no packing
        logits = [nano(**x, use_cache=False).logits[0] for x in (one, two, three)]
    spans = [(len(a[0]), len(a[0]) + len(b[0])), (len(c[0]), len(c[0]) + len(b[0])),
             (len(other[0]), len(other[0]) + len(b[0]))]
    b_logits = [lg[s:e] for lg, (s, e) in zip(logits, spans)]
    assert torch.allclose(b_logits[0], b_logits[1], atol=1e-4) and torch.allclose(b_logits[0], b_logits[2], atol=1e-4)
    with torch.no_grad():
        alone = nano(input_ids=torch.tensor([b[0]]), use_cache=False).logits[0]
    assert torch.allclose(b_logits[0], alone, atol=1e-4)                  # as if it were alone


def test_instruct_runs_from_a_local_openorca_file_and_exports_the_template(tmp_path):
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in CHATS))
    out = subprocess.run([sys.executable, "train/instruct.py", "--config", "train/configs/nano-instruct.yaml",
                          "--dataset", str(data), "--init", "models/nucleus-nano", "--max-steps", "3",
                          "--output-dir", str(tmp_path / "run"), "--eval-every", "3", "--sample-tokens", "4",
                          "--micro-batch", "2", "--seq-len", "128", "--tokens-per-step", "256"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "of them response tokens that the loss covers" in out.stdout
    final = tmp_path / "run" / "final"
    assert out.stdout.strip().splitlines()[-1].startswith(f"done: the final model is in {final}")
    tok = load_tokenizer(final)
    assert tok.chat_template == chat.CHAT_TEMPLATE
    assert "stage **instruct**" in (final / "README.md").read_text()
    lm = nucleus.load(final, device="cpu")
    text = lm.tokenizer.apply_chat_template([{"role": "user", "content": "Hi?"}], tokenize=False)
    assert text == "<s>[INST] Hi? [/INST]"
    # the Space serving the checkpoint answers /chat; the bundled base model, in the same Space, refuses
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 5 plus 5?"}]
    with running_app(final) as url:
        client = Client(url, verbose=False)
        got = client.predict(messages, temperature=0, max_new_tokens=8, api_name="/chat")
        assert got["prompt"] == "<s>[INST] Be brief.\n\nWhat is 5 plus 5? [/INST]" and got["model"] == "run/final"
        assert got["message"] == {"role": "assistant", "content": got["text"].strip()}
        assert got["finish_reason"] in ("eos", "length") and 0 < got["tokens"] <= 8
        with pytest.raises(AppError, match="nucleus-nano is a base model with no chat template"):
            client.predict(messages, model="nucleus-nano", api_name="/chat")


def test_instruct_without_a_starting_model_or_with_a_plain_text_file_says_so(tmp_path):
    plain = tmp_path / "notes.txt"
    plain.write_text("just text\n")
    for extra, says in ((["--init", "scratch"], "instruct: needs a starting model"),
                        (["--dataset", str(plain)], "no text in 'question'")):
        out = subprocess.run([sys.executable, "-m", "train.instruct", "--config", "train/configs/nano-instruct.yaml",
                              "--output-dir", str(tmp_path / "r"), *extra], cwd=ROOT, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 1 and says in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]


def test_an_interrupted_instruct_run_resumes_on_the_same_curve(tmp_path):
    """Resume works for the instruct stage as for the others: halted after step 2 (a checkpoint), then
    resumed, the losses of steps 3-4 equal those of an uninterrupted run."""
    from train import instruct

    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in CHATS))
    common = ["--config", "train/configs/nano-instruct.yaml", "--dataset", str(data), "--init", str(NANO),
              "--max-steps", "4", "--save-every", "2", "--eval-every", "4", "--sample-tokens", "2",
              "--micro-batch", "2", "--seq-len", "128", "--tokens-per-step", "256", "--log-every", "1"]
    whole = instruct.main(common + ["--output-dir", str(tmp_path / "whole")])
    first = instruct.main(common + ["--output-dir", str(tmp_path / "cut"), "--halt-after", "2"])
    assert first["steps"] == 2
    rest = instruct.main(common + ["--output-dir", str(tmp_path / "cut"), "--resume", "auto"])
    assert rest["steps"] == 4 and rest["losses"] == pytest.approx(whole["losses"][2:], abs=1e-5)
