"""The literal entity list used by lint stays in step with the installed Presidio."""

from __future__ import annotations

from veil.policies.entities import KNOWN_ENTITIES


def test_every_presidio_english_type_is_known():
    from presidio_analyzer import RecognizerRegistry

    registry = RecognizerRegistry()
    registry.load_predefined_recognizers(languages=["en"])
    installed = {e for r in registry.recognizers for e in r.supported_entities}
    assert installed
    assert installed <= KNOWN_ENTITIES, sorted(installed - KNOWN_ENTITIES)


def test_veil_tokenizer_types_are_known():
    from veil.tokenizer import recognizers

    assert {recognizers.StreetAddressRecognizer().supported_entities[0], "ZIP_CODE"} <= KNOWN_ENTITIES
