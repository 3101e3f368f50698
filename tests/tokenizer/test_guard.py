from __future__ import annotations

import pytest

from veil.tokenizer.guard import Guard, name_parts


@pytest.mark.req("tokenize:exact-match-guard")
def test_known_values_found_on_word_boundaries_any_case():
    g = Guard([("Maria Lopez", "[PERSON_1]", "PERSON"), ("Denver", "[LOCATION_1]", "LOCATION")])
    text = "MARIA LOPEZ moved from Denver; Denverite Mariana Lopezz is unrelated."
    hits = [(text[h.start : h.end], h.token) for h in g.find(text)]
    assert ("MARIA LOPEZ", "[PERSON_1]") in hits
    assert ("Denver", "[LOCATION_1]") in hits
    assert not any(t in ("Denverite", "Mariana", "Lopezz") for t, _ in hits)


@pytest.mark.req("tokenize:exact-match-guard")
def test_name_parts_alone_match_with_their_capitalisation_only():
    g = Guard([("Maria Lopez", "[PERSON_1]", "PERSON")])
    text = "Maria called; lopez is lowercase here and Lopez is not."
    hits = [(text[h.start : h.end], h.token) for h in g.find(text)]
    assert ("Maria", None) in hits and ("Lopez", None) in hits
    assert all(t != "lopez" for t, _ in hits)


def test_name_parts_skip_stop_words_and_initials():
    assert name_parts("Will Smith") == ["Smith"]
    assert name_parts("J. Smith") == ["Smith"]
    assert name_parts("Madonna") == []


def test_generic_types_are_not_guarded():
    g = Guard([("Friday", "[DATE_TIME_1]", "DATE_TIME"), ("Al", "[PERSON_9]", "PERSON")])
    assert g.find("See you Friday, Al.") == []


@pytest.mark.req("tokenize:exact-match-guard")
def test_one_word_values_keep_their_capitalisation_and_skip_stop_words():
    g = Guard([("May", "[PERSON_1]", "PERSON"), ("Denver", "[LOCATION_1]", "LOCATION")])
    text = "You may visit denver or Denver; May agreed."
    hits = [(text[h.start : h.end], h.token) for h in g.find(text)]
    assert hits == [("Denver", "[LOCATION_1]")]
