"""The decoded view the tokenizer analyses (pure logic: decoding and the way back)."""

from __future__ import annotations

import pytest

from veil.tokenizer.escapes import ROUNDS, decoded, fold, unescaped


def pieces(text: str) -> tuple[str, list[str]]:
    """The decoded text and, per decoded character, the original characters it came from."""
    view = unescaped(text)
    assert view is not None, text
    return view.plain, [text[slice(*view.span(i, i + 1))] for i in range(len(view.plain))]


@pytest.mark.req("tokenize:escapes")
@pytest.mark.parametrize(
    ("text", "plain"),
    [
        ("jane.doe%40example.com", "jane.doe@example.com"),  # a link, a query string
        ("123%2D45%2d6789", "123-45-6789"),  # either case of hex digit
        ("Sean O&#39;Brien", "Sean O'Brien"),  # HTML numeric reference
        ("Sean O&#x27;Brien &amp; Co&nbsp;Ltd", "Sean O'Brien & Co Ltd"),  # hex, named; no-break space folded
        ("&#106;&#97;&#110;&#101", "jane"),  # obfuscated for a web page, last ';' left out
        ("Jos\\u00e9 Garc\\u00eda", "José García"),  # JSON quoted inside an error message
        ("Caf%C3%A9 M%C3%BCller", "Café Müller"),  # UTF-8 percent-encoded
        ("\\ud83d\\ude00!", "\U0001f600!"),  # a surrogate pair is one character
        ("%2540", "@"),  # percent-encoded twice
        ("%26%2364%3B", "@"),  # an HTML reference, percent-encoded
    ],
)
def test_escapes_are_decoded(text: str, plain: str) -> None:
    assert decoded(text) == plain


@pytest.mark.req("tokenize:escapes")
@pytest.mark.parametrize(
    "text",
    [
        "plain text",
        "100% sure, 50%off",  # not two hex digits
        "a=1&b=2&copy=3",  # no ';': a query string, not a reference
        "&unknownname;",  # not an HTML5 reference
        "C:\\users\\jane",  # not \\u and four hex digits
        "\\ud83d alone",  # a lone surrogate is not a character
        "%FF%FE",  # bytes that start no UTF-8 character
    ],
)
def test_text_without_a_valid_escape_is_left_alone(text: str) -> None:
    assert unescaped(text) is None
    assert decoded(text) == text


@pytest.mark.req("tokenize:escapes")
def test_every_decoded_character_leads_back_to_its_whole_escape() -> None:
    plain, back = pieces("ssn=123%2D45%2D6789&n=O&#39;Brien")
    assert plain == "ssn=123-45-6789&n=O'Brien"
    assert back[7] == "%2D" and back[10] == "%2D" and back[plain.index("'")] == "&#39;"
    assert "".join(back) == "ssn=123%2D45%2D6789&n=O&#39;Brien"  # nothing lost, nothing twice
    view = unescaped("ssn=123%2D45%2D6789")
    assert view is not None
    assert view.span(4, 15) == (4, 19)  # the value's span covers both escapes whole


@pytest.mark.req("tokenize:escapes")
def test_an_invalid_byte_stays_as_written_beside_decoded_ones() -> None:
    plain, back = pieces("%FF%41x")
    assert plain == "%FFAx"
    assert back == ["%", "F", "F", "%41", "x"]


@pytest.mark.req("tokenize:escapes")
def test_nesting_is_decoded_a_bounded_number_of_rounds() -> None:
    deep = "@"
    for _ in range(ROUNDS + 1):
        deep = "".join(f"%{b:02X}" for b in deep.encode())
    assert decoded(deep) == "%40"  # one round short of the value: bounded work per string
    _, back = pieces(deep)
    assert "".join(back) == deep


@pytest.mark.req("tokenize:escapes")
@pytest.mark.parametrize(
    ("text", "plain"),
    [
        ("123-45-<em>6789</em>", "123-45-6789"),  # a search upstream highlighting what matched
        ("Maria <B>Lopez</B>", "Maria Lopez"),  # inline formatting reads as nothing, any case
        ("<td>ROSE</td><td>DENVER</td>", " ROSE  DENVER "),  # cells stay apart
        ("line one<br/>line two", "line one line two"),
        ("&lt;em&gt;Lopez&lt;/em&gt;", "Lopez"),  # escaped markup, decoded then read
    ],
)
def test_bare_tags_are_read_through(text: str, plain: str) -> None:
    assert decoded(text) == plain


@pytest.mark.req("tokenize:escapes")
def test_a_tag_with_attributes_stays_text_to_analyse() -> None:
    text = "<a href='mailto:jane@example.org'>Jane</a>"
    assert decoded(text) == "<a href='mailto:jane@example.org'>Jane"
    assert unescaped("a < b > c") is None  # not a tag


# -- look-alike characters ------------------------------------------------------------------------

FULL_WIDTH = str.maketrans("0123456789@.", "".join(chr(0xFF10 + d) for d in range(10)) + "\uff20\uff0e")
ARABIC_INDIC = str.maketrans("0123456789", "".join(chr(0x660 + d) for d in range(10)))
DEVANAGARI = str.maketrans("0123456789", "".join(chr(0x966 + d) for d in range(10)))
MATH_BOLD = str.maketrans(
    "0123456789abcdefghijklmnopqrstuvwxyz",
    "".join(chr(0x1D7CE + d) for d in range(10)) + "".join(chr(0x1D41A + i) for i in range(26)),
)
SUPERSCRIPT = str.maketrans("0123456789", "\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079")
CYRILLIC = str.maketrans("aceopxyM", "\u0430\u0441\u0435\u043e\u0440\u0445\u0443\u041c")
CIRCLED = str.maketrans("123456789", "".join(chr(0x2460 + d) for d in range(9)))


@pytest.mark.req("tokenize:look-alikes")
@pytest.mark.parametrize(
    ("text", "plain"),
    [
        ("219\u201109\u20119999", "219-09-9999"),  # non-breaking hyphens (word processors)
        ("4111\u20131111\u20131111\u20131111", "4111-1111-1111-1111"),  # en dashes
        ("ssn 219\u221209\u22129999", "ssn 219-09-9999"),  # minus signs
        ("06\u00a012\u202f34\u200956\u300078", "06 12 34 56 78"),  # no-break, narrow, thin, ideographic
        ("219-09-9999 jane.doe@example.com".translate(FULL_WIDTH), "219-09-9999 jane.doe@example.com"),
        # what SQL's translate() writes when an injected agent asks for it: other scripts' digits,
        # mathematical letters and digits, circled and superscript digits, the small commercial at
        ("219-09-9999".translate(ARABIC_INDIC), "219-09-9999"),
        ("(415) 555-0199".translate(DEVANAGARI), "(415) 555-0199"),
        ("4111 1111 1111 1111".translate(MATH_BOLD), "4111 1111 1111 1111"),
        ("jane.doe@example.com".translate(MATH_BOLD), "jane.doe@example.com"),
        ("219-09-9999".translate(SUPERSCRIPT), "219-09-9999"),
        ("4111 1111".translate(CIRCLED), "4111 1111"),
        ("jane.doe\ufe6bexample.com", "jane.doe@example.com"),
        # Cyrillic letters that look like Latin ones, beside Latin letters (translate(email, 'aceopxy', ...))
        ("jane.doe@example.com".translate(CYRILLIC), "jane.doe@example.com"),
        ("Maria Lopez".translate(CYRILLIC), "Maria Lopez"),
    ],
)
def test_look_alike_characters_fold_one_for_one(text: str, plain: str) -> None:
    assert fold(text) == plain and len(fold(text)) == len(text)
    view = unescaped(text)
    assert view is not None and view.plain == plain
    assert view.span(0, len(plain)) == (0, len(text))  # offsets are the same in both


def test_text_without_look_alikes_is_left_as_it_is() -> None:
    for text in (
        "plain ascii 219-09-9999",
        "José García, Zürich",
        "東京都",
        "Ελληνικά, Ελίνα Παπαδοπούλου",
        "thanks \U0001f600",
        "Привет, как дела?",
        "\u03b1-helix, \u03b2-sheet",  # Greek letters beside a hyphen, not a Latin letter
    ):
        assert fold(text) is text
        assert unescaped(text) is None


def test_folding_follows_decoding() -> None:
    assert decoded("219&#8209;09%E2%80%919999") == "219-09-9999"  # a no-break hyphen, escaped twice
