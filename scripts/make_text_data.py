"""Build edgerank's natural-text calibration/probe sets and the tests' held-out sets.

    python scripts/make_text_data.py DEB_ROOT

DEB_ROOT holds the listed Debian packages unpacked (`apt-get download P && dpkg-deb -x
P_*.deb DEB_ROOT/P`). Every text is real prose written by people; the script only cuts it
into (query, passages) groups. A group's query is a section title or an FAQ question and its
passages are graded by where they come from: the section's own paragraphs, paragraphs of
neighbouring sections of the same chapter, and paragraphs from other chapters. Output is
deterministic (fixed seeds, sorted inputs). Sources and licences: edgerank/quality/data/SOURCES.md.
"""

from __future__ import annotations

import gzip
import json
import random
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PER_GROUP = 8
MAX_WORDS = 110


@dataclass
class Section:
    chapter: str
    title: str
    paragraphs: list[str] = field(default_factory=list)
    #: the heading's number (numbered text only): the same section across translations
    number: str = ""


def _clip(text: str, max_words: int = MAX_WORDS) -> str:
    words = text.split()
    if len(words) <= max_words:
        return " ".join(words)
    cut = " ".join(words[:max_words])
    end = max(cut.rfind(". "), cut.rfind("。"))
    return cut[: end + 1] if end > len(cut) // 2 else cut


def _prose(par: str, min_words: int = 8) -> bool:
    """A paragraph of sentences, not a command listing or a table."""
    words = par.split()
    cjk = sum(1 for ch in par if "\u3000" <= ch <= "\u9fff")
    if cjk > 20:
        return not re.search(r"^\s*[$#]", par, re.M)
    if len(words) < min_words or re.search(r"^\s*[$#] ", par, re.M):
        return False
    if re.match(r"(Table|Figure|Example) \d", par):
        return False
    letters = sum(ch.isalpha() for ch in par)
    return letters / max(1, len(par)) > 0.6 and par.count("|") < 3


# ---------------------------------------------------------------- numbered-heading text


HEADING = re.compile(r"^(\d+(?:\.\d+)+)\.\s+(\S.*)$")


def numbered_text(path: Path, min_words: int = 8) -> list[Section]:
    """debian-reference.*.txt and debian-faq.txt: `N.N.N. Title` headings, 4-space bodies."""
    text = gzip.open(path, "rt", encoding="utf-8").read()
    sections: list[Section] = []
    seen_titles: set[str] = set()
    current: Section | None = None
    for block in re.split(r"\n\s*\n", text):
        lines = block.strip().splitlines()
        m = HEADING.match(lines[0]) if lines else None
        if m and not block.startswith(" "):
            number, title = m.groups()
            title = " ".join([title, *(x.strip() for x in lines[1:] if not x.startswith(" "))])
            current = None
            if (number, title) in seen_titles:  # the table of contents repeats them
                continue
            seen_titles.add((number, title))
            current = Section(number.split(".")[0], title.strip(), number=number)
            sections.append(current)
            continue
        if current is None or not block.startswith("    ") or block.startswith("        "):
            continue
        par = " ".join(line.strip() for line in block.splitlines())
        if _prose(par, min_words):
            current.paragraphs.append(_clip(par))
    return [s for s in sections if s.paragraphs]


# ------------------------------------------------------------------------ rst (Python)


RST_UNDERLINE = re.compile(r"^([=\-~^\"'*+#])\1{3,}\s*$")


def _rst_inline(text: str) -> str:
    text = re.sub(r":[a-z:]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`", r"\1", text)
    text = re.sub(r"`([^`<]*?)\s*<[^>]*>`_+", r"\1", text)
    text = re.sub(r"``([^`]*)``", r"\1", text)
    text = re.sub(r"`([^`]*)`_*", r"\1", text)
    return re.sub(r"\*\*?([^*]+)\*\*?", r"\1", text)


def rst_sections(path: Path) -> list[Section]:
    lines = path.read_text(encoding="utf-8").splitlines()
    sections: list[Section] = []
    current: Section | None = None
    buf: list[str] = []

    def flush() -> None:
        if current is not None and buf:
            par = _rst_inline(" ".join(x.strip() for x in buf))
            if _prose(par) and not par.startswith(".."):
                current.paragraphs.append(_clip(par))
        buf.clear()

    i = 0
    in_code = False
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and RST_UNDERLINE.match(nxt) and len(nxt.strip()) >= len(line.strip()):
            flush()
            current = Section(path.stem.replace(".rst", ""), _rst_inline(line.strip()))
            sections.append(current)
            i += 2
            in_code = False
            continue
        if not line.strip():
            flush()
        elif line.startswith((" ", "\t")) or line.startswith(".."):
            in_code = in_code or line.startswith("..")
            flush()
        else:
            in_code = False
            buf.append(line)
            if line.rstrip().endswith("::"):
                flush()
        i += 1
    flush()
    return [s for s in sections if s.paragraphs and not RST_UNDERLINE.match(s.title)]


# --------------------------------------------------------------------------- WordNet


def wordnet_sections(root: Path, pos: tuple[str, ...] = ("noun", "verb")) -> list[Section]:
    """One section per synset with a gloss of >= 8 words: query = its lemmas, passages =
    the definition and the example sentences; chapter = WordNet's lexicographer file."""
    out = []
    for p in pos:
        for line in (root / f"data.{p}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or "|" not in line:
                continue
            head, gloss = line.split("|", 1)
            parts = head.split()
            lex, n = int(parts[1]), int(parts[3], 16)
            words = [parts[4 + 2 * k].replace("_", " ") for k in range(n)]
            words = [re.sub(r"\(.*\)$", "", w) for w in words]
            bits = [b.strip() for b in gloss.split(";")]
            definition = bits[0]
            examples = [b.strip('" ') for b in bits[1:] if b.startswith('"')]
            if len(definition.split()) < 8:
                continue
            paragraphs = [definition[0].upper() + definition[1:] + "."]
            if examples:
                paragraphs.append(" ".join(e[0].upper() + e[1:] + "." for e in examples))
            title = words[0] if len(words) == 1 else f"{words[0]} ({', '.join(words[1:3])})"
            out.append(Section(f"{p}.{lex}", title, paragraphs))
    return out


# --------------------------------------------------------------------------- fortunes


def fortunes(paths: list[Path], max_words: int = 60) -> list[str]:
    """Quotations and jokes of a fortune(6) database, one string each."""
    out = []
    for path in paths:
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        for item in re.split(r"^%\s*$", text, flags=re.M):
            item = " ".join(item.split())
            if 6 <= len(item.split()) <= max_words and "\ufffd" not in item:
                out.append(item)
    return out


#: quotations, proverbs, recipes and science: the fortune files picked (no jokes or insults)
FORTUNES = {
    "de": ["zitate", "sprichworte", "gedichte", "wusstensie", "mathematiker", "suppe", "kuchen",
           "hauptgericht", "salat"],
    "es": ["ciencia", "filosofia", "sabiduria", "proverbios", "refranes", "arte", "verdad"],
    "it": ["adams", "leggi", "definizioni", "computer"],
}  # fmt: skip


def _pick(d: Path, names: list[str], suffix: str) -> list[Path]:
    return [d / f"{n}{suffix}" for n in names]


def pair_groups(texts: list[str], n: int, rng: random.Random, domain: str, lang: str):
    """Unranked groups of natural text (calibration only needs real activations)."""
    texts = sorted(set(texts))
    rng.shuffle(texts)
    short = [t for t in texts if len(t.split()) <= 14]
    groups = []
    for i in range(n):
        docs = rng.sample(texts, PER_GROUP)
        groups.append({"query": short[i], "documents": docs, "domain": domain, "lang": lang})
    return groups


# ---------------------------------------------------------------------------- groups


def make_groups(
    sections: list[Section], n: int, rng: random.Random, domain: str, lang: str,
    query=lambda s: s.title, queries: list[Section] | None = None,
) -> list[dict]:  # fmt: skip
    """``n`` groups of PER_GROUP passages, graded 2 (own) / 1 (same chapter) / 0 (other);
    the queries from ``queries`` (default: ``sections``), the passages from ``sections``."""
    by_chapter: dict[str, list[Section]] = {}
    for s in sections:
        by_chapter.setdefault(s.chapter, []).append(s)
    asked = sections if queries is None else queries
    candidates = [s for s in asked if len(by_chapter[s.chapter]) >= 3]
    rng.shuffle(candidates)
    groups = []
    for s in candidates[:n]:
        docs = [(p, 2) for p in s.paragraphs[:2]]
        near = [x for x in by_chapter[s.chapter] if x is not s]
        for x in rng.sample(near, min(3, len(near))):
            docs.append((rng.choice(x.paragraphs), 1))
        others = [c for c in by_chapter if c != s.chapter]
        while len(docs) < PER_GROUP:
            x = rng.choice(by_chapter[rng.choice(others)])
            docs.append((rng.choice(x.paragraphs), 0))
        rng.shuffle(docs)
        groups.append({
            "query": query(s), "documents": [d for d, _ in docs],
            "labels": [g for _, g in docs], "domain": domain, "lang": lang,
        })  # fmt: skip
    return groups


def split(sections: list[Section], rng: random.Random, parts: int) -> list[list[Section]]:
    """Disjoint shares of the sections (by section, so no query repeats across sets)."""
    order = list(sections)
    rng.shuffle(order)
    return [order[i::parts] for i in range(parts)]


def more_probe(probe: list[dict], ref: dict[str, list[Section]], en_probe: list[Section]):
    """The second held-out set (convert/backoff.py reads it when a probe figure lies within
    noise of the floor): Debian Reference sections of the probe's half of the English
    sections (none the admin-e2e test reranker trained on) that no probe group asks about,
    in English and six translations (Portuguese is in no other set). Its own seed, drawn
    after every other set, so those stay byte-identical."""
    rng = random.Random(20270101)
    asked = {g["query"] for g in probe}
    used = {s.number for secs in ref.values() for s in secs if s.title in asked}
    fresh = {s.number for s in en_probe} - used
    groups: list[dict] = []
    for lang, n in (("en", 44), ("fr", 16), ("es", 16), ("de", 16), ("pt", 16), ("ja", 16),
                    ("zh-cn", 16)):  # fmt: skip
        queries = [s for s in ref[lang] if s.number in fresh]
        groups += make_groups(ref[lang], n, rng, "debian-reference", lang.split("-")[0],
                              queries=queries)  # fmt: skip
    return groups


def main(deb: Path) -> None:
    rng = random.Random(20261202)
    doc = deb / "python3.11-doc/usr/share/doc/python3.11/html/_sources"
    faq = [s for f in sorted((doc / "faq").glob("*.rst.txt")) for s in rst_sections(f)]
    faq = [s for s in faq if s.title.endswith("?")]
    pydocs = [
        s
        for sub in ("tutorial", "howto")
        for f in sorted((doc / sub).glob("*.rst.txt"))
        for s in rst_sections(f)
    ]
    wn = wordnet_sections(deb / "wordnet-base/usr/share/wordnet")
    ref = {
        lang: numbered_text(
            deb
            / f"debian-reference-{lang}/usr/share/debian-reference"
            / f"debian-reference.{lang}.txt.gz"
        )
        for lang in ("en", "de", "fr", "it", "es", "ja", "zh-cn", "pt")
    }
    dfaq = numbered_text(deb / "debian-faq/usr/share/doc/debian/FAQ/debian-faq.en.txt.gz")
    named = [("python-faq", faq), ("python-docs", pydocs), ("wordnet", wn), ("debian-faq", dfaq)]
    for name, secs in named + [(f"debref-{k}", v) for k, v in ref.items()]:
        pars = sum(len(s.paragraphs) for s in secs)
        print(f"{name}: {len(secs)} sections, {pars} paragraphs", file=sys.stderr)

    wn_train, wn_cal = split(wn, rng, 2)
    ref_en_train, ref_en_probe = split(ref["en"], rng, 2)
    wn_query = lambda s: s.title.split(" (")[0]  # noqa: E731
    fort = lambda lang, suffix: _pick(  # noqa: E731
        deb / f"fortunes-{lang}/usr/share/games/fortunes/{lang}", FORTUNES[lang], suffix
    )
    sets = {
        # shipped: calibration (sensitivity ranking at install) and probe (the floor check)
        "calibration": make_groups(pydocs, 48, rng, "python-docs", "en")
        + make_groups(wn_cal, 40, rng, "wordnet", "en", wn_query)
        + pair_groups(fortunes(fort("de", ".u8")), 16, rng, "fortunes", "de")
        + pair_groups(fortunes(fort("it", ".u8")), 16, rng, "fortunes", "it")
        + pair_groups(fortunes(fort("es", ".fortunes")), 16, rng, "fortunes", "es"),
        "probe": make_groups(ref_en_probe, 72, rng, "debian-reference", "en")
        + make_groups(ref["fr"], 16, rng, "debian-reference", "fr")
        + make_groups(ref["es"], 16, rng, "debian-reference", "es")
        + make_groups(ref["zh-cn"], 12, rng, "debian-reference", "zh")
        + make_groups(ref["ja"], 12, rng, "debian-reference", "ja")
        + make_groups(ref["de"], 12, rng, "debian-reference", "de"),
        # edgerank/testing: the three test rerankers' training text, and held-out sets
        "train-python-faq": make_groups(faq, 400, rng, "python-faq", "en"),
        "train-wordnet": make_groups(wn_train, 400, rng, "wordnet", "en", wn_query),
        "train-debian-reference": make_groups(ref_en_train, 400, rng, "debian-reference", "en")
        + make_groups(ref["it"], 60, rng, "debian-reference", "it"),
        "heldout-debian-faq": make_groups(dfaq, 400, rng, "debian-faq", "en"),
    }
    sets["probe-more"] = more_probe(sets["probe"], ref, ref_en_probe)
    shipped = ROOT / "edgerank" / "quality" / "data"
    tests = ROOT / "edgerank" / "testing" / "data"
    for name, groups in sets.items():
        where = shipped if name in ("calibration", "probe", "probe-more") else tests
        out = where / f"{name}.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", encoding="utf-8") as fh:
            for g in groups:
                fh.write(json.dumps(g, ensure_ascii=False) + "\n")
        print(f"{out.relative_to(ROOT)}: {len(groups)} groups", file=sys.stderr)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
