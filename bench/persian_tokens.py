"""How Mistral's 32k tokenizer (Nucleus's) spends tokens on Persian against English, on the same messages.

    python -m bench.persian_tokens                                  # /usr/share/locale/fa/LC_MESSAGES/*.mo
    python -m bench.persian_tokens --mo-dir DIR --tokenizer models/nucleus-nano --json out.json
    python -m bench.persian_tokens --extend 4000      # also: the tokenizer extended on half, measured on the rest

Real text that no one here wrote, in both languages at once: the gettext catalogues (.mo) that
Debian packages ship hold each English message (msgid) beside its Persian translation (msgstr),
so the two columns say the same things. For each language it counts messages, words (split on
white space), characters (Unicode code points, spaces included), tokens (no <s>), tokens per word
and per character, and the share of byte-fallback tokens (<0x..> pieces: characters the
vocabulary has no piece for, spelt byte by byte in UTF-8). Plural forms and messages that are
only placeholders or punctuation are left out; a message is counted once even when several
catalogues hold it. docs/training.md ("Persian") has the table.
"""
from __future__ import annotations

import argparse
import gettext
import json
import re
import subprocess
from pathlib import Path

BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")
LETTER = re.compile(r"[^\W\d_]")
PLACEHOLDER = re.compile(r"%(\d+\$)?[-+ #0']*\d*(\.\d+)?(l|ll|h|z)?[a-zA-Z]|\{[^}]*\}")   # %s, %1$d, %.2f, {name}


def pairs_of(mo: Path) -> list[tuple[str, str]]:
    """(English, Persian) messages of one catalogue: singular messages with a translation, both
    holding a letter (not only a placeholder such as "%s" or punctuation)."""
    with open(mo, "rb") as fh:
        catalog = gettext.GNUTranslations(fh)._catalog
    out = []
    for key, value in catalog.items():
        if not isinstance(key, str) or not key or not value:      # plural forms are (msgid, n) keys
            continue
        english = key.split("\x04")[-1]                            # msgctxt \x04 msgid
        if LETTER.search(PLACEHOLDER.sub("", english)) and LETTER.search(PLACEHOLDER.sub("", value)):
            out.append((english, value))
    return out


def count(texts: list[str], tokenizer) -> dict:
    """Words, characters, tokens and byte-fallback tokens of `texts`, with the ratios."""
    words = sum(len(t.split()) for t in texts)
    chars = sum(len(t) for t in texts)
    pieces = [p for t in texts for p in tokenizer.convert_ids_to_tokens(tokenizer(t, add_special_tokens=False)["input_ids"])]
    tokens, fallback = len(pieces), sum(bool(BYTE_PIECE.match(p)) for p in pieces)
    return {"messages": len(texts), "words": words, "characters": chars, "tokens": tokens,
            "byte_fallback_tokens": fallback, "tokens_per_word": tokens / max(words, 1),
            "tokens_per_character": tokens / max(chars, 1), "byte_fallback_share": fallback / max(tokens, 1)}


def package_of(path: Path) -> str:
    """The Debian package that ships `path` (dpkg -S), or "?" elsewhere."""
    try:
        out = subprocess.run(["dpkg", "-S", str(path)], capture_output=True, text=True, timeout=30)
        return out.stdout.split(":", 1)[0] if out.returncode == 0 else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def study(mo_dir: Path, tokenizer) -> dict:
    files = sorted(mo_dir.glob("*.mo"))
    if not files:
        raise SystemExit(f"error: no .mo catalogues in {mo_dir}")
    seen, english, persian, sources = set(), [], [], []
    for mo in files:
        found = [p for p in pairs_of(mo) if p not in seen]
        seen.update(found)
        english += [e for e, _ in found]
        persian += [f for _, f in found]
        sources.append({"file": mo.name, "package": package_of(mo), "messages": len(found)})
    return {"english": count(english, tokenizer), "persian": count(persian, tokenizer), "sources": sources,
            "texts": (english, persian)}


def extension(result: dict, english: list[str], persian: list[str], tokenizer, pieces: int) -> dict:
    """train/extend_tokenizer.py's tokenizer trained on every other Persian message, counted on the
    others (held out) against the base; and whether any English message is split differently."""
    from train.extend_tokenizer import extended_tokenizer

    train, held = persian[::2], persian[1::2]
    extended, added, _ = extended_tokenizer(tokenizer, train, pieces)
    changed = sum(tokenizer(e)["input_ids"] != extended(e)["input_ids"] for e in english)
    return {"pieces_trained": pieces, "pieces_added": len(added), "trained_on": len(train),
            "held_out_base": count(held, tokenizer), "held_out_extended": count(held, extended),
            "english_messages_split_differently": changed, "round_trip_failures":
                sum(extended.decode(extended(t, add_special_tokens=False)["input_ids"]) != t for t in held)}


def table(result: dict) -> str:
    e, p = result["english"], result["persian"]
    rows = [("messages", "messages", "{:,}"), ("words", "words", "{:,}"), ("characters", "characters", "{:,}"),
            ("tokens", "tokens", "{:,}"), ("tokens per word", "tokens_per_word", "{:.2f}"),
            ("tokens per character", "tokens_per_character", "{:.3f}"),
            ("byte-fallback share of tokens", "byte_fallback_share", "{:.1%}")]
    lines = ["| | English (msgid) | Persian (msgstr) | Persian / English |", "| --- | --- | --- | --- |"]
    for label, key, fmt in rows:
        ratio = f"{p[key] / e[key]:.2f}x" if e[key] else "-"
        lines.append(f"| {label} | {fmt.format(e[key])} | {fmt.format(p[key])} | {ratio} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mo-dir", type=Path, default=Path("/usr/share/locale/fa/LC_MESSAGES"))
    ap.add_argument("--tokenizer", default="models/nucleus-nano", help="a folder with the tokenizer (Mistral's 32k)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--extend", type=int, default=0, metavar="PIECES",
                    help="also extend the tokenizer with a PIECES-piece Persian model trained on half the messages")
    args = ap.parse_args(argv)
    from nucleus.loading import bundled_path
    from nucleus.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(bundled_path(args.tokenizer) or args.tokenizer)
    result = study(args.mo_dir, tokenizer)
    print(table(result))
    print("\nsources: " + ", ".join(f"{s['file']} ({s['package']}, {s['messages']})" for s in result["sources"]))
    english, persian = result.pop("texts")
    if args.extend:
        ext = result["extension"] = extension(result, english, persian, tokenizer, args.extend)
        b, x = ext["held_out_base"], ext["held_out_extended"]
        print(f"\nextended with {ext['pieces_added']:,} Persian pieces (trained on {ext['trained_on']:,} messages); on "
              f"the other {b['messages']:,}: tokens per character {b['tokens_per_character']:.3f} -> "
              f"{x['tokens_per_character']:.3f}, per word {b['tokens_per_word']:.2f} -> {x['tokens_per_word']:.2f}, "
              f"byte fallback {b['byte_fallback_share']:.1%} -> {x['byte_fallback_share']:.1%}; English messages split "
              f"differently: {ext['english_messages_split_differently']}; round-trip failures: "
              f"{ext['round_trip_failures']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
