"""Text seen through the escapes an ordinary upstream applies by itself, and the way back.

Why: detection and the guard read letters and digits, and a standard escape adds letters and
digits of its own to a value. ``jane.doe%40example.com`` (a link or query string),
``O&#39;Brien`` or ``&#106;&#97;&#110;&#101;`` (an HTML ticket body, an e-mail obfuscated for a
web page), ``123%2D45%2D6789`` and ``Jos\\u00e9`` (a JSON document quoted inside an error
message) hide the value from both, so it reached the agent raw. These are not encodings an
upstream chooses (base64, a hash: the residual risk in docs/threat-model.md); they are how text
travels in URLs, HTML and JSON, so an upstream that never meant to hide anything produces them.

The tokenizer analyses the decoded text (``Unescaped.plain``) and maps each span it finds back
onto the original (``Unescaped.span``): a replacement covers every escape of the value whole,
and the rest of the text keeps the upstream's own encoding.

Decoded: runs of ``%XX`` as UTF-8 (a byte that does not start a valid character is left as
written); HTML numeric references (``&#64;``, ``&#x40;``, the ``;`` optional) and the HTML5 named
references that end in ``;`` (``&amp;``, ``&nbsp;``, ``&apos;``); ``\\uXXXX`` (surrogate pairs
joined, a lone surrogate left as written). An escape inside an escape (``%26%2364%3B``) is decoded
too, up to ``ROUNDS`` times.

Markup, too: an HTML tag without attributes inside a value splits it the same way (a search
upstream highlighting what matched: ``123-45-<em>6789</em>``, ``Maria <b>Lopez</b>``). Such a tag
is read as nothing when it is inline formatting (``INLINE_TAGS``) and as a space otherwise
(``<td>``, ``<br>``, ``<p>``: cells and lines stay apart). A tag with attributes is left as
written: its attributes (``href="mailto:..."``) are text that must be analysed like the rest.

Look-alike characters last (``fold``): no-break and other Unicode spaces, Unicode hyphens and
dashes, the minus sign, the digits of every script and the compatibility forms of ASCII
(full-width, mathematical, circled, superscript) are read as their ASCII counterparts, one
character for one, so that a value written with them matches the patterns that want ``-``,
`` `` and ``0-9``.
"""

from __future__ import annotations

import bisect
import functools
import html
import re
import unicodedata

ROUNDS = 3  # escapes decoded inside escapes, at most this deep

# One character class first, so the scan skips text without %, & or \ in C (an alternation of
# three groups first was 20x slower on a megabyte of query strings, none of them decodable).
_ESCAPE = re.compile(
    r"[%&\\<](?:"
    r"(?<=%)[0-9A-Fa-f]{2}(?:%[0-9A-Fa-f]{2})*"
    r"|(?<=&)(?:#(?:[0-9]{1,7}|[xX][0-9A-Fa-f]{1,6});?|[A-Za-z][A-Za-z0-9]{1,31};)"
    r"|(?<=\\)u[0-9A-Fa-f]{4}(?:\\u[0-9A-Fa-f]{4})*"
    r"|(?<=<)/?[A-Za-z][A-Za-z0-9]{0,15}[ \t]{0,8}/?>"
    r")"
)
#: Tags read as nothing: formatting inside a run of text. Any other bare tag reads as a space.
INLINE_TAGS = frozenset(
    {"a", "abbr", "b", "bdi", "bdo", "cite", "code", "data", "dfn", "em", "font", "i", "kbd", "mark", "q", "s"}
    | {"samp", "small", "span", "strong", "sub", "sup", "time", "tt", "u", "var"}
)

# (characters, start, end, decoded): what a stretch of the text stands for; ``decoded`` False
# for text kept as written, which maps back character by character.
_Piece = tuple[str, int, int, bool]


class _Round:
    """One round of decoding: from each decoded character to the span of the text it came from."""

    __slots__ = ("_at", "_pieces")

    def __init__(self, pieces: list[tuple[int, int, int, bool]]) -> None:
        self._pieces = pieces  # (first decoded index, start, end, decoded), in order
        self._at = [p[0] for p in pieces]

    def start(self, i: int) -> int:
        at, start, _, whole = self._pieces[bisect.bisect_right(self._at, i) - 1]
        return start if whole else start + i - at

    def end(self, i: int) -> int:
        at, start, end, whole = self._pieces[bisect.bisect_right(self._at, i) - 1]
        return end if whole else start + i - at + 1


class Unescaped:
    """``plain``: the text with its escapes decoded; ``span`` leads back to the original."""

    __slots__ = ("_rounds", "plain")

    def __init__(self, plain: str, rounds: list[_Round]) -> None:
        self.plain = plain
        self._rounds = rounds  # the first round's map last applied

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The original span that ``plain[start:end]`` was decoded from (``end > start``)."""
        for r in reversed(self._rounds):
            start, end = r.start(start), r.end(end - 1)
        return start, end


def unescaped(text: str) -> Unescaped | None:
    """``text`` with its escapes decoded and its look-alike characters folded (``fold``), or
    None when it holds neither (the common case, found by four substring tests and
    ``isascii`` in C)."""
    plain, rounds = text, []
    if "%" in text or "&" in text or "\\u" in text or "<" in text:
        for _ in range(ROUNDS):
            step = _decode_once(plain)
            if step is None:
                break
            plain, r = step
            rounds.append(r)
    folded = fold(plain)
    if folded is plain and not rounds:
        return None
    return Unescaped(folded, rounds)  # one character for one: the fold keeps every offset


@functools.cache
def _fold_table() -> dict[int, str]:
    """Built on first use (~80 ms, planes 0 and 1: every character these rules map is there)."""
    table: dict[int, str] = {}
    for cp in range(0x80, 0x20000):
        if 0xD800 <= cp < 0xE000:
            continue
        ch = chr(cp)
        digit = unicodedata.decimal(ch, None)
        if digit is not None:  # a decimal digit of any script: Arabic-Indic, Devanagari, math bold
            table[cp] = str(digit)
            continue
        compat = unicodedata.normalize("NFKC", ch)
        if len(compat) == 1 and "!" <= compat <= "~":  # full-width, math, circled, super/subscript
            table[cp] = compat
        elif compat.isspace() or unicodedata.category(ch) == "Zs":
            table[cp] = " "
        elif unicodedata.category(ch) == "Pd":
            table[cp] = "-"
    table[0x2212] = "-"  # the minus sign
    return table


@functools.cache
def _foldable_bmp() -> re.Pattern[str]:
    """The foldable characters of the Basic Multilingual Plane, as ranges: ``re`` checks such a
    class with a bitmap, a few ms per MB. Characters beyond it are few in text, and a class of
    them is checked range by range (~70 ms per MB), so they are looked for with one range."""
    ranges: list[list[int]] = []
    for cp in sorted(cp for cp in _fold_table() if cp < 0x10000):
        if ranges and cp == ranges[-1][1] + 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    return re.compile("[" + "".join(f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges) + "]")


_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


# Characters that stand for an ASCII one, as word processors, PDFs and East Asian input write
# them, or as an upstream (told to by a prompt-injected agent: SQL's translate()) can write any
# value: no-break and other Unicode spaces, Unicode hyphens and dashes (the non-breaking hyphen),
# the minus sign, the decimal digits of every script (Arabic-Indic U+0660-U+0669, Devanagari,
# mathematical bold U+1D7CE-U+1D7D7), and every character whose compatibility form is one
# printable ASCII character (full-width, mathematical letters, circled, super- and subscript
# digits, the small commercial at). Each folds to one character, so offsets stay.


# Cyrillic and Greek letters that look like Latin ones (a subset of Unicode's confusables.txt,
# one letter for one), read as Latin only right beside Latin letters: such a word is a disguise
# (an e-mail address with Cyrillic U+0430 and U+0441 for its a and c, what ``translate(email,
# 'ac', ...)`` writes when an injected agent asks), while Russian or Greek words are left as
# they are.
_CONFUSABLE = str.maketrans(
    "аеорсухѕіјԁԛԝһӏАВЕКМНОРСТХУЅІЈԚԜοαρνιΑΒΕΖΗΙΚΜΝΟΡΤΥΧ",
    "aeopcyxsijdqwhlABEKMHOPCTXYSIJQWoapviABEZHIKMNOPTYX",
)
_LOOK_ALIKE = "[" + "".join(chr(cp) for cp in _CONFUSABLE) + "]"
# A run of them right after or right before a Latin letter (every run of a disguised address is:
# ``j?ne``, ``ex?mple``); possessive and anchored at the run's start, so the scan stays linear.
_BESIDE_LATIN = re.compile(rf"(?<=[A-Za-z]){_LOOK_ALIKE}++|(?<!{_LOOK_ALIKE}){_LOOK_ALIKE}++(?=[A-Za-z])")


def _unconfused(text: str) -> str:
    return _BESIDE_LATIN.sub(lambda m: m.group().translate(_CONFUSABLE), text)


def fold(text: str) -> str:
    """``text`` with look-alike characters as ASCII (``text`` itself when it has none): a value
    written with them (``219\u201109\u20119999``, ``06\u00a012\u00a034\u00a056\u00a078``,
    full-width, Arabic-Indic or mathematical digits) matched none of the patterns, so a value
    never seen before reached the agent raw."""
    if text.isascii():
        return text
    if _foldable_bmp().search(text) is None:  # in C: accented names and other scripts pay one scan
        folded = text
        if _ASTRAL.search(text) is not None:
            folded = text.translate(_fold_table())  # emoji, say: mathematical letters fold, they do not
    else:
        folded = text.translate(_fold_table())
    folded = _unconfused(folded)
    return text if folded == text else folded


def decoded(text: str) -> str:
    """``text`` with its escapes decoded and look-alikes folded (``text`` itself when it holds
    neither)."""
    view = unescaped(text)
    return text if view is None else view.plain


def _decode_once(text: str) -> tuple[str, _Round] | None:
    """One round: the decoded text and its map back to ``text``; None when nothing decodes."""
    out: list[str] = []
    pieces: list[tuple[int, int, int, bool]] = []
    pos = size = 0
    changed = False
    for m in _ESCAPE.finditer(text):
        found = _pieces(m)
        if found is None:
            continue
        if m.start() > pos:
            found.insert(0, (text[pos : m.start()], pos, m.start(), False))
        for chars, start, end, whole in found:
            if chars:  # an inline tag reads as nothing: its neighbours' pieces lead back around it
                out.append(chars)
                pieces.append((size, start, end, whole))
                size += len(chars)
        pos = m.end()
        changed = True
    if not changed:
        return None
    if pos < len(text):
        out.append(text[pos:])
        pieces.append((size, pos, len(text), False))
    return "".join(out), _Round(pieces)


def _pieces(m: re.Match[str]) -> list[_Piece] | None:
    """What one escape (or run of escapes) stands for; None when none of it decodes."""
    lead = m.group()[0]
    if lead == "%":
        return _percent(m.group(), m.start()) or None
    if lead == "\\":
        return _js(m.group(), m.start()) or None
    if lead == "<":
        name = m.group().strip("</> \t").lower()
        return [("" if name in INLINE_TAGS else " ", m.start(), m.end(), True)]
    chars = _reference(m.group())
    return None if chars == m.group() else [(chars, m.start(), m.end(), True)]


@functools.lru_cache(maxsize=4096)
def _reference(ref: str) -> str:
    """An HTML character reference decoded (a page repeats a few of them many times)."""
    return html.unescape(ref)


def _utf8_length(lead: int) -> int:
    if lead < 0x80:
        return 1
    if 0xC2 <= lead < 0xE0:
        return 2
    if 0xE0 <= lead < 0xF0:
        return 3
    if 0xF0 <= lead < 0xF5:
        return 4
    return 0  # a continuation byte or an invalid lead


def _percent(run: str, at: int) -> list[_Piece]:
    data = bytes.fromhex(run.replace("%", ""))
    out: list[_Piece] = []
    i = 0
    while i < len(data):
        size = _utf8_length(data[i])
        try:
            ch = data[i : i + size].decode("utf-8") if size and i + size <= len(data) else ""
        except UnicodeDecodeError:
            ch = ""
        if ch:
            out.append((ch, at + 3 * i, at + 3 * (i + size), True))
            i += size
        else:  # kept as written
            out.append((run[3 * i : 3 * i + 3], at + 3 * i, at + 3 * i + 3, False))
            i += 1
    return out if any(p[3] for p in out) else []


def _js(run: str, at: int) -> list[_Piece]:
    units = [int(run[i + 2 : i + 6], 16) for i in range(0, len(run), 6)]
    out: list[_Piece] = []
    i = 0
    while i < len(units):
        u, start = units[i], at + 6 * i
        if 0xD800 <= u < 0xDC00 and i + 1 < len(units) and 0xDC00 <= units[i + 1] < 0xE000:
            out.append((chr(0x10000 + ((u - 0xD800) << 10) + (units[i + 1] - 0xDC00)), start, start + 12, True))
            i += 2
            continue
        if 0xD800 <= u < 0xE000:  # a lone surrogate is not a character: kept as written
            out.append((run[6 * i : 6 * i + 6], start, start + 6, False))
        else:
            out.append((chr(u), start, start + 6, True))
        i += 1
    return out if any(p[3] for p in out) else []
