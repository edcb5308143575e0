"""The offline stand-in corpus for Nucleus-Nano, built from freely licensed Debian packages.

    python train/corpus.py --out data/nano-corpus          # needs apt-get and network access to Debian

Neither TinyStories nor Tiny Textbooks can be downloaded where Nucleus-Nano is trained, so the two
stages get stand-ins of the same kind:

    stage 1 (general and narrative prose): the King James Bible, fortune-cookie prose, the Jargon
            File, and samples of two English dictionaries (GCIDE, WordNet)
    stage 2 (textbook-like explanations): the Python, Perl, PostgreSQL, R and Git manuals, the
            Debian Administrator's Handbook and Reference, the GNU coding standards, FOLDOC

Each package is downloaded with `apt-get download` (never installed), unpacked with `dpkg-deb`,
turned into clean text (no HTML, markup or navigation), its headings rewritten as `### Heading`
lines like Tiny Textbooks' lessons, deduplicated (whole documents, and paragraphs repeated more
than twice such as licence footers), and written as JSON lines, one document per line, with a
manifest of package, version, licence, bytes and documents (manifest.json and MANIFEST.md).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import html.parser
import json
import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm


# ---- text clean-up shared by all extractors --------------------------------------------------------
def tidy(text: str) -> str:
    """Normalise spaces and blank lines; drop lines without a single letter (rules, tables of dashes)."""
    lines = [re.sub(r"[ \t\u00a0]+", " ", ln).rstrip() for ln in text.replace("\r", "").split("\n")]
    lines = [ln for ln in lines if not ln.strip() or re.search(r"[A-Za-z]", ln)]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def lesson(title: str, body: str) -> str:
    """A document in the Tiny Textbooks shape: '### Lesson: title' then the body."""
    return f"### Lesson: {title.strip()}\n{body.strip()}" if title.strip() else body.strip()


class _HTMLText(html.parser.HTMLParser):
    """Visible text of a manual page: headings become '### ' lines; navigation, scripts, tables of
    contents and footers are skipped."""

    SKIP_TAGS = {"script", "style", "nav", "head", "header", "footer", "noscript"}
    SKIP_CLASSES = re.compile(r"nav|toc|footer|header|breadcrumb|sidebar|related|copyright|footnotes")
    BLOCKS = {"p", "div", "br", "li", "pre", "tr", "dt", "dd", "table", "section", "blockquote"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out, self.skip_depth, self.stack, self.title = [], 0, [], ""

    def handle_starttag(self, tag, attrs):
        if tag in {"br", "img", "hr", "meta", "link", "input"}:
            if tag == "br" and not self.skip_depth:
                self.out.append("\n")
            return
        cls = dict(attrs).get("class") or ""
        skipping = tag in self.SKIP_TAGS or bool(self.SKIP_CLASSES.search(cls))
        self.stack.append((tag, skipping))
        if skipping:
            self.skip_depth += 1
        elif re.fullmatch(r"h[1-4]", tag):
            self.out.append("\n\n### ")
        elif tag in self.BLOCKS:
            self.out.append("\n")

    def handle_endtag(self, tag):
        while self.stack:
            open_tag, skipping = self.stack.pop()
            if skipping:
                self.skip_depth -= 1
            if open_tag == tag:
                break
        if re.fullmatch(r"h[1-4]", tag) or tag in self.BLOCKS:
            self.out.append("\n")

    def handle_data(self, data):
        if not self.skip_depth:
            self.out.append(data if "pre" in {t for t, _ in self.stack} else re.sub(r"\s+", " ", data))


def html_to_text(markup: str) -> str:
    parser = _HTMLText()
    parser.feed(markup)
    text = tidy("".join(parser.out))
    text = re.sub(r"^### [\s\d.]*(?=\S)", "### ", text, flags=re.M)       # "### 2.1. Title" -> "### Title"
    text = re.sub(r"^### \s*$\n?", "", text, flags=re.M)
    text = re.sub(r"^ (?=\S)", "", text, flags=re.M)                    # the space left by a line break
    first = text.find("### ")
    if 0 < first < 400:                                                  # page-title residue before the heading
        text = text[first:]
    m = re.match(r"### (.+)\n", text)
    return lesson(m[1], text[m.end():]) if m else text


def rst_to_text(source: str) -> str:
    """Sphinx sources (Python docs) and AsciiDoc (Git docs): markup out, headings as '### '."""
    lines, out = source.split("\n"), []
    for i, line in enumerate(lines):
        if re.fullmatch(r"([=\-~^*#\"+`'])\1{2,}", line.strip()):
            continue                                                     # heading underline/overline
        nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if line.strip() and re.fullmatch(r"([=\-~^*#\"+`'])\1{2,}", nxt) and len(nxt) >= len(line.strip()) - 2:
            out.append("### " + line.strip())
            continue
        if re.match(r"\s*\.\.(\s|$)", line) or re.match(r"\s*:[\w-]+:(\s|$)", line):
            continue                                                     # directives, comments, targets, options
        out.append(line)
    text = "\n".join(out)
    text = re.sub(r":(pep|rfc):`(\d+)`", lambda m: f"{m[1].upper()} {m[2]}", text)
    text = re.sub(r":[\w:+-]+:`!?~?([^`<]*?)(?:\s*<[^>]*>)?`", r"\1", text)  # :func:`name` -> name
    text = re.sub(r"\*\*([^*\n]+)\*\*", r"\1", text)
    text = re.sub(r"``([^`]+)``", r"\1", text)
    text = re.sub(r"`([^`<]+?)(?:\s*<[^>]+>)?`_{0,2}", r"\1", text)
    text = text.replace("::\n", ":\n")
    text = tidy(text)
    m = re.match(r"### (.+)\n", text)
    return lesson(m[1], text[m.end():]) if m else text


def pod_to_text(path: Path) -> str:
    raw = subprocess.run(["pod2text", "-l", str(path)], capture_output=True, text=True, errors="replace").stdout
    text = re.sub(r"^(?=[A-Z][A-Za-z0-9 ,'()/-]+$)", "### ", raw, flags=re.M)  # unindented lines are headings
    name = re.search(r"### NAME\n\s+(\S+) - (.+)", text)
    text = re.sub(r"### NAME\n.*?\n\n", "", tidy(text), count=1, flags=re.S)
    return lesson(f"{name[2]} ({name[1]})" if name else path.stem, text)


def dict_entries(dz: Path, every: int = 1) -> list[str]:
    """Entries of a dictd database (.dict.dz is gzip; the .index gives base64 offset/length)."""
    b64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}

    def num(s):
        n = 0
        for c in s:
            n = n * 64 + b64[c]
        return n

    data = gzip.decompress(dz.read_bytes())
    entries, seen = [], set()
    index = dz.with_name(dz.name.replace(".dict.dz", ".index")).read_text(errors="replace").splitlines()
    for k, line in enumerate(index):
        parts = line.split("\t")
        if len(parts) < 3 or parts[0].startswith("00-database") or k % every:
            continue
        span = (num(parts[1]), num(parts[2]))
        if span in seen:
            continue
        seen.add(span)
        text = data[span[0]:span[0] + span[1]].decode("utf-8", errors="replace")
        text = re.sub(r"[{}]", "", text)                                   # {cross references}
        text = re.sub(r"\\[^\\\n]*\\", "", text)                          # GCIDE \pro*nun"ci*a*tion\
        text = re.sub(r"\((?=[^)]*[\[*^])[^)]*\)", "", text)                # ([i^]n*s[=e]d) phonetics
        text = re.sub(r"^\s*\[[^\]\n]{1,20}\]\s*$", "", text, flags=re.M)    # [1913 Webster] source tags
        entries.append(tidy(text))
    return entries


def grouped(items: list[str], size: int, sep: str = "\n\n") -> list[str]:
    return [sep.join(items[i:i + size]) for i in range(0, len(items), size)]


# ---- the sources -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    name: str
    packages: tuple[str, ...]      # the first one's version and licence are recorded
    stage: int
    description: str
    licence: str = ""              # read from the package's copyright file where it states one plainly


SOURCES = [
    Source("kjv-bible", ("bible-kjv-text", "bible-kjv"), 1, "King James Bible, one chapter per document",
           "text public domain (Crown patent in the UK); packaging GPL-2+"),
    Source("fortunes", ("fortunes",), 1, "fortune-mod's English epigrams and anecdotes, 25 per document",
           "BSD-3-Clause"),
    Source("jargon", ("dict-jargon",), 1, "The Jargon File's entries, 20 per document"),
    Source("gcide", ("dict-gcide",), 1, "GNU Collaborative International Dictionary of English, every 8th entry",
           "GPL-3+"),
    Source("wordnet", ("dict-wn",), 1, "WordNet 3.0 glosses and examples, every 6th entry"),
    Source("python-docs", ("python3.11-doc",), 2, "Python 3.11 tutorial, HOWTOs, FAQ, library and language reference",
           "PSF License"),
    Source("perl-docs", ("perl-doc",), 2, "Perl 5.36 manual pages (perlintro, perlfaq, ...)"),
    Source("postgresql-docs", ("postgresql-doc-15",), 2, "PostgreSQL 15 manual"),
    Source("r-manuals", ("r-doc-html",), 2, "R manuals (An Introduction to R, R FAQ, ...)"),
    Source("git-docs", ("git-doc",), 2, "Git manual pages and guides"),
    Source("debian-handbook", ("debian-handbook",), 2, "The Debian Administrator's Handbook (English)"),
    Source("debian-reference", ("debian-reference-en",), 2, "Debian Reference (English)"),
    Source("gnu-standards", ("gnu-standards",), 2, "GNU Coding Standards and Maintainers' information",
           "GFDL-1.3+"),
    Source("foldoc", ("dict-foldoc",), 2, "Free On-line Dictionary of Computing, 15 entries per document",
           "GFDL-1.1+"),
]


def extract(src: Source, root: Path) -> list[str]:
    """Documents of one source from its unpacked package tree `root`."""
    docs = root / "usr/share/doc"
    if src.name == "kjv-bible":
        out = subprocess.run([str(root / "usr/bin/bible"), "-p", str(root / "usr/lib"), "-l4000",
                              "Gen1:1-Rev22:21"], capture_output=True, text=True, check=True).stdout
        chapters = re.split(r"\n(?=\S[^\n]* \d+\n)", out.strip())
        return [lesson(ch.split("\n", 1)[0], re.sub(r"^\s+\d+ ", "", ch.split("\n", 1)[1], flags=re.M))
                for ch in chapters if "\n" in ch]
    if src.name == "fortunes":
        found = []
        for f in sorted((root / "usr/share/games/fortunes").iterdir()):
            if not f.suffix and f.is_file():
                found += [tidy(x) for x in f.read_text(errors="replace").split("\n%\n") if len(x.strip()) > 40]
        return grouped(found, 25)
    if src.name in {"jargon", "gcide", "wordnet", "foldoc"}:
        db = {"jargon": "jargon", "gcide": "gcide", "wordnet": "wn", "foldoc": "foldoc"}[src.name]
        every = {"gcide": 8, "wordnet": 6}.get(src.name, 1)
        size = {"jargon": 20, "foldoc": 15}.get(src.name, 40)
        return grouped(dict_entries(root / f"usr/share/dictd/{db}.dict.dz", every), size)
    if src.name == "python-docs":
        files = sorted((docs / "python3.11/html/_sources").rglob("*.txt"))
        return [rst_to_text(f.read_text(errors="replace")) for f in files
                if "changelog" not in f.name and "c-api" not in f.parts]
    if src.name == "git-docs":
        return [rst_to_text(f.read_text(errors="replace")) for f in sorted((docs / "git-doc").glob("*.txt"))]
    if src.name == "perl-docs":
        pods = sorted(p for p in root.rglob("*.pod") if "perldelta" not in p.name and not p.name.startswith("perl5"))
        return [pod_to_text(p) for p in pods]
    html_dirs = {"postgresql-docs": docs / "postgresql-doc-15/html", "r-manuals": docs / "r-doc-html/manual",
                 "debian-handbook": docs / "debian-handbook/html/en-US", "debian-reference": root / "usr/share/debian-reference",
                 "gnu-standards": docs / "gnu-standards"}
    files = sorted(p for p in html_dirs[src.name].rglob("*.html") if ".en." in p.name or src.name != "debian-reference")
    return [html_to_text(f.read_text(errors="replace")) for f in files]


# ---- fetching, dedup, manifest ---------------------------------------------------------------------
def fetch(package: str, debs: Path) -> tuple[Path, str]:
    debs.mkdir(parents=True, exist_ok=True)
    if not list(debs.glob(f"{package}_*.deb")):
        subprocess.run(["apt-get", "download", package], cwd=debs, check=True, capture_output=True)
    deb = sorted(debs.glob(f"{package}_*.deb"))[-1]
    version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True).stdout.strip()
    return deb, version


def licence(root: Path, package: str) -> str:
    copyright_file = root / "usr/share/doc" / package / "copyright"
    text = copyright_file.read_text(errors="replace") if copyright_file.is_file() else ""
    found = re.findall(r"^License: *(.+)$", text, flags=re.M)
    return found[0].strip() if found else "see the package's copyright file"


def deduplicate(docs_by_source: dict[str, list[str]]) -> dict[str, list[str]]:
    """Drop documents seen before, and paragraphs that occur more than twice in the whole corpus."""
    para_count = Counter(p.strip() for docs in docs_by_source.values() for d in docs for p in d.split("\n\n"))
    seen, out = set(), {}
    for name, docs in docs_by_source.items():
        kept = []
        for d in docs:
            paras = [p for p in d.split("\n\n") if para_count[p.strip()] <= 2 or p.startswith("### Lesson:")]
            text = "\n\n".join(paras).strip()
            key = hashlib.sha1(re.sub(r"\s+", " ", text).encode()).digest()
            if len(text) >= 200 and key not in seen:
                seen.add(key)
                kept.append(text)
        out[name] = kept
    return out


def build(out: Path, work: Path) -> list[dict]:
    raw, meta = {}, {}
    for src in tqdm(SOURCES, desc="extracting", unit=" source"):
        root = work / "tree" / src.name
        root.mkdir(parents=True, exist_ok=True)
        versions = []
        for pkg in src.packages:
            deb, version = fetch(pkg, work / "debs")
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
            versions.append(version)
        raw[src.name] = extract(src, root)
        meta[src.name] = {"source": src.name, "stage": src.stage, "package": src.packages[0],
                          "version": versions[0], "licence": src.licence or licence(root, src.packages[0]),
                          "description": src.description}
    clean = deduplicate(raw)
    manifest = []
    for src in SOURCES:
        folder = out / f"stage{src.stage}"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"{src.name}.jsonl", "w", encoding="utf-8") as fh:
            for d in clean[src.name]:
                fh.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
        manifest.append({**meta[src.name], "documents": len(clean[src.name]),
                         "bytes": sum(len(d.encode()) for d in clean[src.name]),
                         "documents_before_dedup": len(raw[src.name])})
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    (out / "MANIFEST.md").write_text(manifest_markdown(manifest))
    return manifest


def manifest_markdown(manifest: list[dict]) -> str:
    rows = ["| stage | source | Debian package | version | licence | documents | MB |", "|---|---|---|---|---|---|---|"]
    for m in manifest:
        rows.append(f"| {m['stage']} | {m['description']} | {m['package']} | {m['version']} | {m['licence']} | "
                    f"{m['documents']:,} | {m['bytes'] / 1e6:.1f} |")
    total = sum(m["bytes"] for m in manifest)
    by_stage = {s: sum(m["bytes"] for m in manifest if m["stage"] == s) / 1e6 for s in (1, 2)}
    return ("# Nucleus-Nano corpus\n\nBuilt by `python train/corpus.py` from Debian bookworm packages.\n\n"
            + "\n".join(rows) + f"\n\nTotal {total / 1e6:.1f} MB: stage 1 {by_stage[1]:.1f} MB, "
            f"stage 2 {by_stage[2]:.1f} MB.\n")


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data/nano-corpus", help="output folder (stage1/, stage2/, manifest)")
    p.add_argument("--work", default=None, help="where packages are downloaded and unpacked (default: a temp dir)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = build(Path(args.out), Path(args.work or tmp))
    print(manifest_markdown(manifest))
    return manifest


if __name__ == "__main__":
    main()
