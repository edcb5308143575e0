"""bench/persian_tokens.py on a catalogue written here, counted by hand."""
import struct

from bench import persian_tokens
from conftest import ROOT
from nucleus.tokenizer import load_tokenizer


def write_mo(path, messages: dict) -> None:
    """A GNU gettext .mo file (little-endian, no hash table) holding `messages` and a UTF-8 header."""
    entries = sorted({"": "Content-Type: text/plain; charset=UTF-8\n", **messages}.items())
    ids = [k.encode() for k, _ in entries]
    strs = [v.encode() for _, v in entries]
    n = len(entries)
    start = 7 * 4 + 16 * n
    table_o, table_t, blob, at = [], [], b"", start
    for s in ids + strs:
        (table_o if len(table_o) < n else table_t).append((len(s), at))
        blob += s + b"\0"
        at += len(s) + 1
    header = struct.pack("<7I", 0x950412DE, 0, n, 28, 28 + 8 * n, 0, 0)
    path.write_bytes(header + b"".join(struct.pack("<2I", *e) for e in table_o + table_t) + blob)


def test_counts_both_columns_of_the_same_messages(tmp_path):
    write_mo(tmp_path / "a.mo", {"Open file": "باز کردن پرونده", "%s": "%s", "Quit": "خروج",
                                 "ctx\x04Save": "ذخیره"})
    write_mo(tmp_path / "b.mo", {"Quit": "خروج"})                         # the same message again: counted once
    tok = load_tokenizer(ROOT / "models" / "nucleus-nano")
    result = persian_tokens.study(tmp_path, tok)
    e, p = result["english"], result["persian"]
    assert e["messages"] == p["messages"] == 3                           # "%s" has no letter; the context is dropped
    assert (e["words"], p["words"]) == (2 + 1 + 1, 3 + 1 + 1)
    assert (e["characters"], p["characters"]) == (len("Open file") + 4 + 4, len("باز کردن پرونده") + 4 + 5)
    tokens = sum(len(tok(m, add_special_tokens=False)["input_ids"]) for m in ("باز کردن پرونده", "خروج", "ذخیره"))
    assert p["tokens"] == tokens and abs(p["tokens_per_word"] - tokens / 5) < 1e-9
    assert 0 <= p["byte_fallback_share"] <= 1 and "| tokens per word |" in persian_tokens.table(result)
