"""Token vocabulary: how a token looks, how values are normalised before they get one, and the
small dataclasses the gateway exchanges with the tokenizer.

A token is ``[ENTITY_TYPE_N]``: readable for the model (it knows ``[PERSON_2]`` is a person),
typed (the policy decides flows per entity type), and matched by one regular expression that also
finds it inside longer strings ("Dear [PERSON_2]," or "mailto:[EMAIL_ADDRESS_1]").
"""

from __future__ import annotations

import re
import time
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Literal

#: The one documented token pattern. Group 1 is the entity type, group 2 the number.
TOKEN_RE: re.Pattern[str] = re.compile(r"\[([A-Z][A-Z0-9_]*)_(\d+)\]")

#: How ``Tokenizer.tokenize`` reads a value (docs/tokens.md, "Modes"):
#: ``data``: an upstream's payload: key hints, patterns, NER, the guard, tokens of the scope;
#: ``interface``: listings (tool, resource and prompt metadata, schemas, stub files): patterns for
#: structured identifiers and the guard, no key hints, no NER, no name or place heuristics;
#: ``sandbox_output``: what code in the sandbox printed or returned: detection only, and every value
#: found gets a token of a throwaway per-call scope, never linked to the scope's tokens.
TokenizeMode = Literal["data", "interface", "sandbox_output"]
TOKENIZE_MODES: tuple[str, ...] = ("data", "interface", "sandbox_output")
#: Entity-type prefix of the tokens given to values in sandbox output: ``[CODE_PHONE_NUMBER_1]``.
#: They match ``TOKEN_RE`` but no scope ever issued them, so ``untokenize`` refuses them.
UNLINKED_PREFIX = "CODE_"

#: Entity types whose values are compared by their digits only (formatting varies by source).
DIGIT_TYPES = frozenset({"PHONE_NUMBER", "CREDIT_CARD", "US_SSN", "US_ITIN", "US_BANK_NUMBER", "UK_NHS", "ZIP_CODE"})
#: Entity types compared without case, spaces or punctuation other than their own structure.
ALNUM_TYPES = frozenset({"IBAN_CODE", "US_PASSPORT", "US_DRIVER_LICENSE"})


@dataclass(frozen=True)
class Scope:
    """Where tokens are valid: ``session:<id>``, ``principal:<name>`` or ``tenant:<name>``.

    The same value gets the same token within a scope and unrelated tokens in different scopes, so
    two sessions cannot correlate people by comparing tokens."""

    key: str

    def __post_init__(self) -> None:
        if not self.key or not isinstance(self.key, str):
            raise ValueError("Scope.key must be a non-empty string such as 'session:<id>'")


@dataclass(frozen=True)
class Deadline:
    """The time budget of one ``tokenize`` call. Checked between stages and slots; when it has
    passed, ``check`` raises ``TokenizeBudgetExceeded`` naming ``setting`` (what the operator
    raises), so the call fails closed instead of stalling or returning half-tokenised data."""

    at: float  # time.monotonic() after which the call gives up
    seconds: float  # the budget, for the message
    setting: str  # the configuration field that sets the budget, e.g. "detection.budget_seconds"

    @classmethod
    def after(cls, seconds: float, *, setting: str) -> Deadline:
        return cls(time.monotonic() + seconds, seconds, setting)

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def check(self, stage: str) -> None:
        if time.monotonic() > self.at:
            from veil.errors import TokenizeBudgetExceeded

            raise TokenizeBudgetExceeded(
                f"tokenising this result took longer than its time budget of {self.seconds:g} s (stopped in "
                f"{stage}), so nothing was returned. Ask the operator to raise {self.setting}, or request "
                "less data per call (a filter, a page size, or execute_code to reduce it in the sandbox)."
            )


class WouldBlock(Exception):
    """``tokenize`` or ``untokenize`` was called with ``inline=True`` (on the gateway's event
    loop) and could not finish without blocking it: the value is not small, or finishing needs
    the database (a vault read or write, a cache refresh) or NER. Nothing was changed; call again
    from a worker thread. Internal to the gateway: never reaches a client."""


#: Values with at most this many characters of text (strings, keys, scalars) may be
#: (de)tokenised inline: microseconds of pattern work, less than a hand-off to a worker thread.
INLINE_CHARS = 512


def small(value: Any, limit: int = INLINE_CHARS) -> bool:
    """Does ``value`` (JSON-like) hold at most ``limit`` characters of text? Stops counting as
    soon as it is over, so a large value costs no more than a small one to ask about."""
    todo = [value]
    left = limit
    while todo:
        v = todo.pop()
        if isinstance(v, str):
            left -= len(v)
        elif isinstance(v, dict):
            left -= len(v)  # at least a character per key: checked before the keys are read
            if left < 0:
                return False
            for k in v:
                left -= len(k) if isinstance(k, str) else 8
            todo.extend(v.values())
        elif isinstance(v, list | tuple):
            left -= len(v)
            if left < 0:
                return False
            todo.extend(v)
        else:
            left -= 8  # a number, bool or None: a few characters
        if left < 0:
            return False
    return True


@dataclass(frozen=True)
class TokenRef:
    """What the policy needs to know about a token, without its value."""

    token: str
    entity_type: str
    sources: frozenset[str] = frozenset()


@dataclass
class Tokenized:
    value: Any
    entities: dict[str, int] = field(default_factory=dict)
    tokens: list[str] = field(default_factory=list)


@dataclass
class Untokenized:
    value: Any
    used: list[tuple[TokenRef, str]] = field(default_factory=list)


def format_token(entity_type: str, n: int) -> str:
    return f"[{entity_type}_{n}]"


def _nanp(digits: str) -> str:
    """North American numbers with and without the country code are the same number."""
    return digits[1:] if len(digits) == 11 and digits[0] == "1" else digits


def _collapse(value: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", value).split())


def normalise(value: str, entity_type: str) -> str:
    """The canonical form a value is stored and looked up under, so the same person's e-mail in
    two casings, or a phone number with and without dashes, gets one token."""
    if entity_type in DIGIT_TYPES:
        digits = re.sub(r"\D", "", value)
        if len(digits) >= 4:
            return _nanp(digits) if entity_type == "PHONE_NUMBER" else digits
    if entity_type in ALNUM_TYPES:
        return re.sub(r"[^0-9A-Za-z]", "", value).upper()
    return _collapse(value).casefold()


def normal_forms(value: str) -> list[str]:
    """Every canonical form ``value`` could have been stored under, whatever its entity type: used
    by compliance look-ups that only know the value."""
    forms = [_collapse(value).casefold()]
    digits = re.sub(r"\D", "", value)
    if len(digits) >= 4:
        forms.extend((digits, _nanp(digits)))
    alnum = re.sub(r"[^0-9A-Za-z]", "", value).upper()
    if alnum:
        forms.append(alnum)
    return list(dict.fromkeys(forms))
