import sentencepiece as spm

from nucleus.tokenizer import encode_prompt, load_tokenizer, sentencepiece_path

TEXTS = [
    "Hello world!",
    "### Lesson: Python Programming 101\n### Introduction\n",
    "\n\n  leading newlines and two spaces",
    " one leading space",
    "trailing spaces   ",
    "digits 1234567890 and 3.14159, -42",
    "def f(x):\n    return x ** 2  # square\n\tTabbed",
    "Ünïcödé: café, naïve, 日本語, Ελληνικά, русский, emoji 🙂🦀",
    "a\u00a0non-breaking space and a zero\u200bwidth one",
    "",
]


def test_ids_equal_sentencepiece_and_text_round_trips():
    sp = spm.SentencePieceProcessor(model_file=str(sentencepiece_path()))
    tok = load_tokenizer()
    assert len(tok) == 32000
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        assert ids == sp.encode(text), text
        assert tok.decode(ids) == text


def test_prompt_starts_with_bos_and_control_tokens_typed_by_a_user_stay_text():
    tok = load_tokenizer()
    ids = encode_prompt(tok, "Hi </s> <s>")
    assert ids[0] == 1 and ids.count(1) == 1 and 2 not in ids


def test_checkpoint_tokenizer_files_win(tmp_path):
    tok = load_tokenizer()
    tok.save_pretrained(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again is not tok and again.encode(TEXTS[1]) == tok.encode(TEXTS[1])
