"""The exact-match guard on its own (pure logic: no database, no detection)."""

from __future__ import annotations

import pytest

from veil.tokenizer.guard import Folded, Guard, name_parts, spelling

KNOWN = [
    ("123-45-6789", "[US_SSN_1]", "US_SSN"),
    ("056-17-0234", "[US_SSN_2]", "US_SSN"),
    ("Maria Lopez", "[PERSON_1]", "PERSON"),
    ("Tammy Alexander", "[PERSON_2]", "PERSON"),
    ("tammy.alexander57@x.com", "[EMAIL_ADDRESS_1]", "EMAIL_ADDRESS"),
    ("+1 415-555-0132", "[PHONE_NUMBER_1]", "PHONE_NUMBER"),
    ("4111 1111 1111 1111", "[CREDIT_CARD_1]", "CREDIT_CARD"),
    ("DE89 3704 0044 0532 0130 00", "[IBAN_CODE_1]", "IBAN_CODE"),
    ("80202", "[ZIP_CODE_1]", "ZIP_CODE"),
    ("Denver", "[LOCATION_1]", "LOCATION"),
    ("Ann Lee", "[PERSON_3]", "PERSON"),
]
GUARD = Guard(KNOWN)


def found(text: str, guard: Guard = GUARD) -> list[tuple[str, str | None]]:
    """What the tokenizer would replace: overlaps resolved longest first, as ``_merge`` does."""
    out: list[tuple[int, int, str | None]] = []
    for h in sorted(guard.find(text), key=lambda h: -(h.end - h.start)):
        if not any(h.start < e and s < h.end for s, e, _ in out):
            out.append((h.start, h.end, h.token))
    return [(text[s:e], t) for s, e, t in sorted(out)]


@pytest.mark.req("tokenize:exact-match-guard")
def test_known_values_found_in_any_case():
    text = "MARIA LOPEZ moved from Denver; Denverite Mariana Lopezz is unrelated."
    hits = found(text)
    assert ("MARIA LOPEZ", "[PERSON_1]") in hits and ("Denver", "[LOCATION_1]") in hits
    assert not any(t in ("Denverite", "Mariana", "Lopezz") for t, _ in hits)


@pytest.mark.req("tokenize:guard-normalised")
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("9123-45-67899", "123-45-6789"),  # the agent sent 9[US_SSN_1]9, the upstream echoed it
        ("id:123-45-6789x", "123-45-6789"),
        ("xMaria Lopezy", "Maria Lopez"),
        ("Maria Lopez's file", "Maria Lopez"),
        ("tammy.alexander57@x.comX", "tammy.alexander57@x.com"),
        ("9+1 415-555-01329", "1 415-555-0132"),
        ("x4111 1111 1111 11119", "4111 1111 1111 1111"),
        ("xAnn Leey", "Ann Lee"),
    ],
)
def test_full_values_need_no_word_boundary(text, expected):
    hits = found(text)
    assert [h for h, _ in hits] == [expected], hits
    assert hits[0][1] is not None


@pytest.mark.req("tokenize:guard-normalised")
@pytest.mark.parametrize(
    ("text", "expected", "token"),
    [
        ("ssn 123456789.", "123456789", "[US_SSN_1]"),  # dbhub: replace(ssn, '-', '')
        ("SSN: 123 45 6789", "123 45 6789", "[US_SSN_1]"),
        ("call 4155550132 now", "4155550132", "[PHONE_NUMBER_1]"),
        ("call (415) 555.0132", "415) 555.0132", "[PHONE_NUMBER_1]"),
        ("card 4111-1111-1111-1111", "4111-1111-1111-1111", "[CREDIT_CARD_1]"),
        ("iban de89370400440532013000 ok", "de89370400440532013000", "[IBAN_CODE_1]"),
        ("zip 80202-1234", "80202", "[ZIP_CODE_1]"),
        ("56170234", "56170234", "[US_SSN_2]"),  # 056-17-0234 as an integer: leading zero lost
    ],
)
def test_identifiers_are_found_by_their_digits_whatever_the_separators(text, expected, token):
    assert found(text) == [(expected, token)]


@pytest.mark.req("tokenize:guard-normalised")
def test_digits_only_matching_needs_the_whole_identifier_bounded_by_non_digits():
    assert found("order 1802021 and 802020") == []  # a ZIP inside longer numbers
    assert found("ref 41555501320") == []  # reformatted phone run into more digits
    # reformatted AND glued into more digits: not the identifier (only the stored spelling is
    # found glued, as in test_full_values_need_no_word_boundary)
    assert found("x91234567899") == []
    assert found("12345678") == []  # SSN digits 1234-5678 are not 123-45-6789
    assert found("version 4111") == []


@pytest.mark.req("tokenize:guard-normalised")
@pytest.mark.parametrize(
    "text",
    [
        "\uff11\uff12\uff13-\uff14\uff15-\uff16\uff17\uff18\uff19",  # full-width digits
        "123\u200b-45-67\u200d89",  # zero-width space and joiner inside
        "1\u00ad23-45-6789",  # soft hyphen
        "\u2067123-45-6789\u2069",  # bidi isolates around it
    ],
)
def test_full_width_and_format_characters_do_not_hide_a_value(text):
    hits = found(text)
    assert [t for _, t in hits] == ["[US_SSN_1]"]
    # the replacement covers exactly the original characters of the value
    covered = hits[0][0]
    assert "1" in covered or "\uff11" in covered


@pytest.mark.req("tokenize:guard-normalised")
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("user MariaLopez logged in", "MariaLopez"),
        ("login maria_lopez", "maria_lopez"),
        ("mail maria.lopez at home", "maria.lopez"),
        ("https://crm.example/people/maria-lopez/edit", "maria-lopez"),
        ("https://t.example/u/userMariaLopez", "MariaLopez"),
        ("M\u200daria Lo\u200bpez", "M\u200daria Lo\u200bpez"),
        ("Mar\u00eda L\u00f3pez", "Mar\u00eda L\u00f3pez"),  # accents dropped by the fold
        ("Maria\n  Lopez", "Maria\n  Lopez"),
    ],
)
def test_names_run_together_reformatted_or_inside_urls(text, expected):
    assert found(text) == [(expected, "[PERSON_1]")]


@pytest.mark.req("tokenize:guard-normalised")
def test_names_run_together_inside_longer_words_are_left_alone():
    assert found("mariolopezz and annamarialopezy") == []


@pytest.mark.req("tokenize:guard-normalised")
def test_email_local_part_and_a_local_part_that_spells_a_known_name():
    # the local part of a known e-mail found alone gets a token of its own (token None here)
    assert found("user tammy.alexander57 logged in") == [("tammy.alexander57", None)]
    assert found("https://x.example/~tammy_alexander57/") == [("tammy_alexander57", None)]
    # another address whose local part spells a known person: the name part is caught
    assert found("wrote from tammy.alexander99@other.org") == [("tammy.alexander", "[PERSON_2]")]


@pytest.mark.req("tokenize:guard-normalised")
def test_a_plain_local_part_is_guarded_where_it_spells_a_known_name():
    g = Guard(
        [("Ana Nakamura", "[PERSON_1]", "PERSON"), ("anakamura@corp.example", "[EMAIL_ADDRESS_1]", "EMAIL_ADDRESS")]
    )
    assert found("handle: anakamura", g) == [("anakamura", None)]
    assert found("handle: anakamuras", g) == []


@pytest.mark.req("tokenize:guard-normalised")
def test_short_local_parts_and_plain_words_are_not_guarded():
    g = Guard(
        [
            ("support@acme.com", "[EMAIL_ADDRESS_1]", "EMAIL_ADDRESS"),
            ("jw@corp.io", "[EMAIL_ADDRESS_2]", "EMAIL_ADDRESS"),
        ]
    )
    assert found("call support, jw will answer", g) == []


@pytest.mark.req("tokenize:exact-match-guard")
def test_name_parts_alone_match_with_their_capitalisation_only():
    text = "Maria called; lopez is lowercase here and Lopez is not. LOPEZ shouts."
    hits = found(text)
    assert ("Maria", None) in hits and ("Lopez", None) in hits and ("LOPEZ", None) in hits
    assert all(t != "lopez" for t, _ in hits)


@pytest.mark.req("tokenize:exact-match-guard")
def test_name_parts_are_never_glued_into_longer_words():
    assert found("Marianne and Lopezes, Mariachi") == []


def test_name_parts_skip_stop_words_and_initials():
    assert name_parts("Will Smith") == ["Smith"]
    assert name_parts("J. Smith") == ["Smith"]
    assert name_parts("Madonna") == []


def test_generic_types_are_not_guarded():
    g = Guard([("Friday", "[DATE_TIME_1]", "DATE_TIME"), ("Al", "[PERSON_9]", "PERSON")])
    assert g.find("See you Friday, Al.") == []


@pytest.mark.req("tokenize:exact-match-guard")
def test_one_word_values_keep_their_capitalisation_and_skip_stop_words():
    g = Guard(
        [("May", "[PERSON_1]", "PERSON"), ("Denver", "[LOCATION_1]", "LOCATION"), ("Will", "[PERSON_2]", "PERSON")]
    )
    assert found("You may visit denver or Denver; May agreed, will you?", g) == [("Denver", "[LOCATION_1]")]
    assert found("DenverX and 9Denver but not Denverite", g) == [("Denver", "[LOCATION_1]"), ("Denver", "[LOCATION_1]")]


def test_fold_keeps_a_map_to_the_original_characters():
    text = "A\u200bb\uff23-\u00df!"
    f = Folded(text)
    assert f.compact == "abcss"
    assert [f.original(i) for i in range(len(f.compact))] == [0, 2, 3, 5, 5]
    ascii_text = "  Ab-c d  "
    g = Folded(ascii_text)
    assert g.compact == "abcd" and [g.original(i) for i in range(4)] == [2, 3, 5, 7]
    assert spelling("  Maria\u200b   L\u00f3pez, ") == "maria lopez"


@pytest.mark.req("tokenize:guard-normalised")
def test_the_guard_is_linear_on_hostile_input():
    """No timing here (bench/guard_normalised.py measures): the automaton's work is bounded by
    the compact text, so a long run of separators or digits yields no explosion of candidates."""
    assert found("-" * 100_000 + "123-45-6789") == [("123-45-6789", "[US_SSN_1]")]
    assert found("4" * 50_000) == []
    # spelled out with a separator between letters is still the name; letters spread over long
    # stretches of punctuation are not a spelling of it
    assert found("M a r i a  L o p e z") == [("M a r i a  L o p e z", "[PERSON_1]")]
    assert found("m----a----r----i----a----l----o----p----e----z") == []


@pytest.mark.req("tokenize:guard-normalised")
@pytest.mark.parametrize(
    "text", ["born 03/14/1981.", "dob: 14.03.1981", "3/14/1981", "March 14, 1981", "14 Mar 1981", "19810314"]
)
def test_a_known_date_of_birth_in_another_date_format(text):
    g = Guard([("1981-03-14", "[DATE_OF_BIRTH_1]", "DATE_OF_BIRTH")])
    assert [t for _, t in found(text, g)] == ["[DATE_OF_BIRTH_1]"], found(text, g)
    assert found("order 0314198155 of 2026-03-14", g) == []  # other digits, another date


@pytest.mark.req("tokenize:exact-match-guard")
def test_only_the_scopes_own_tokens_shelter_what_they_hold():
    # a real token's number is not a value: "[ZIP_CODE_80202]" if the scope had that many ZIP codes
    real = Guard([*KNOWN, ("10001", "[ZIP_CODE_80202]", "ZIP_CODE")])
    assert found("see [ZIP_CODE_80202]", real) == []
    # an upstream asked for '[US_SSN_' || ssn || ']' returns a token-shaped string around the value
    assert found("[US_SSN_123456789]") == [("123456789", "[US_SSN_1]")]
    assert found("[PHONE_NUMBER_14155550132] [ZIP_CODE_80202]") == [
        ("14155550132", "[PHONE_NUMBER_1]"),
        ("80202", "[ZIP_CODE_1]"),
    ]
