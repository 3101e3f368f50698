"""Key names as evidence: a value under ``email`` is an e-mail address, under ``last_name`` a
person's name, whatever it looks like. Hinted values are tokenised whole, without NER.

Keys are compared in snake case (``firstName`` and ``First-Name`` become ``first_name``).
Policy ``field_hints`` (globs on a key name, or on a dotted path when the glob has a dot) take
precedence over the built-in table below.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from fnmatch import fnmatchcase
from functools import lru_cache

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SEP = re.compile(r"[^a-z0-9]+")


@lru_cache(maxsize=8192)
def snake(key: str) -> str:
    """Cached: the same few keys come back in every record and every result (two regex passes
    each were a tenth of tokenising a small result)."""
    return _SEP.sub("_", _CAMEL.sub("_", key).lower()).strip("_")


# Ordered: the first matching glob wins (``email_address`` before ``*_address``).
BUILTIN_HINTS: list[tuple[str, str]] = [
    *[
        (g, "EMAIL_ADDRESS")
        for g in ("email", "e_mail", "mail", "email_address", "*_email", "*_email_address", "emails")
    ],
    *[(g, "IP_ADDRESS") for g in ("ip", "ip_address", "*_ip", "*_ip_address")],
    *[
        (g, "PHONE_NUMBER")
        for g in (
            "phone",
            "phones",
            "phone_number",
            "*_phone",
            "*_phone_number",
            "mobile",
            "cell",
            "telephone",
            "tel",
            "fax",
        )
    ],
    *[
        (g, "US_SSN")
        for g in ("ssn", "*_ssn", "social_security_number", "social_security", "tax_id", "taxpayer_id", "tin")
    ],
    *[(g, "IBAN_CODE") for g in ("iban", "*_iban")],
    *[
        (g, "CREDIT_CARD")
        for g in ("card_number", "*_card_number", "credit_card", "credit_card_number", "cc_number", "card_no", "pan")
    ],
    *[(g, "US_PASSPORT") for g in ("passport", "passport_number", "passport_no")],
    *[(g, "US_DRIVER_LICENSE") for g in ("driver_license", "drivers_license", "driving_licence", "license_number")],
    *[
        (g, "DATE_OF_BIRTH")
        for g in (
            "dob",
            "date_of_birth",
            "birth_date",
            "birthdate",
            "birthday",
            "born",
            "born_on",
            "birth",
            "d_o_b",
            "*_dob",
            "*_date_of_birth",
            "*_birth_date",
            "*_birthdate",
            "*_birthday",
            "dob_*",
        )
    ],
    *[
        (g, "ZIP_CODE")
        for g in (
            "zip",
            "zipcode",
            "zip_code",
            "zip4",
            "zip_plus4",
            "postal_code",
            "postalcode",
            "postcode",
            "post_code",
            "postal",
            "*_zip",
            "*_zipcode",
            "*_zip_code",
            "*_postal_code",
            "*_postcode",
        )
    ],
    *[(g, "LOCATION") for g in ("city", "town", "*_city")],
    *[
        (g, "STREET_ADDRESS")
        for g in (
            "address",
            "addr",
            "street",
            "street_address",
            "street_name",
            "address_line*",
            "address?",
            "line1",
            "line2",
            "*_address",
            "*_street",
        )
    ],
    *[
        (g, "ORGANIZATION")
        for g in ("company", "company_name", "employer", "organization", "organisation", "org_name", "business_name")
    ],
    *[
        (g, "PERSON")
        for g in (
            "first_name",
            "last_name",
            "full_name",
            "given_name",
            "family_name",
            "middle_name",
            "maiden_name",
            "surname",
            "account_manager",
            "manager",
            "assignee",
            "reporter",
            "requester",
            "author",
            "sales_rep",
            "contact_person",
            "supervisor",
            "approver",
            "reviewer",
            "recipient_name",
            "sender_name",
            "firstname",
            "lastname",
            "fullname",
            "contact_name",
            "customer_name",
            "patient_name",
        )
    ],
]

# Every type a key can imply: these count in their field whatever the policy's ``entities`` list
# says, unless the policy excludes them by name (``detection.exclude``).
HINTABLE_TYPES: frozenset[str] = frozenset({e for _, e in BUILTIN_HINTS} | {"PERSON"})

# ``*_name`` is a person unless its prefix names a thing.
_THING_PREFIXES = frozenset(
    [
        "company",
        "org",
        "organisation",
        "organization",
        "business",
        "product",
        "file",
        "tool",
        "host",
        "server",
        "domain",
        "app",
        "application",
        "service",
        "project",
        "team",
        "event",
        "field",
        "key",
        "plan",
        "segment",
        "category",
        "brand",
        "bank",
        "country",
        "state",
        "region",
        "table",
        "column",
        "schema",
        "db",
        "database",
        "model",
        "package",
        "resource",
        "method",
        "function",
        "class",
        "type",
        "step",
        "task",
        "queue",
        "topic",
        "bucket",
        "branch",
        "repo",
        "stage",
        "tier",
        "job",
        "metric",
        "tag",
        "label",
        "group",
        "role",
        "campaign",
        "channel",
        "template",
        "list",
        "attribute",
        "property",
        "param",
        "parameter",
        "variable",
        "feature",
        "device",
        "machine",
        "cluster",
        "node",
        "zone",
        "venue",
        "store",
        "shop",
        "item",
        "course",
        "school",
        "hotel",
        "airline",
        "vendor",
        "supplier",
        "merchant",
        "account",
        "display_type",
        "street",
        "city",
    ]
)

_PERSON_SIBLINGS = frozenset(
    [
        "email",
        "phone",
        "mobile",
        "first_name",
        "last_name",
        "dob",
        "date_of_birth",
        "birthday",
        "address",
        "ssn",
        "gender",
        "age",
        "salutation",
        "job_title",
        "title",
        "customer_id",
        "contact_id",
        "patient_id",
        "employee_id",
        "user_id",
        "username",
        "phone_number",
        "email_address",
        "street",
        "city",
        "zip",
    ]
)
_PERSON_PARENTS = frozenset(
    [
        "customer",
        "customers",
        "contact",
        "contacts",
        "patient",
        "patients",
        "employee",
        "employees",
        "user",
        "users",
        "person",
        "people",
        "owner",
        "assignee",
        "author",
        "member",
        "members",
        "client",
        "clients",
        "lead",
        "leads",
        "recipient",
        "recipients",
        "sender",
        "requester",
        "reporter",
        "applicant",
        "candidate",
        "guest",
        "student",
        "subscriber",
        "buyer",
        "holder",
        "beneficiary",
        "driver",
        "signer",
        "manager",
        "account_manager",
        "rep",
        "agent",
    ]
)


# Keys of a name's parts, when the parent key is ``name`` or a person's name key.
_NAME_PART_KEYS = frozenset(
    ["first", "last", "given", "family", "middle", "display", "full", "preferred", "nickname", "maiden"]
)


def builtin_hint(key: str) -> str | None:
    k = snake(key)
    for glob, entity in BUILTIN_HINTS:
        if fnmatchcase(k, glob):
            return entity
    if k.endswith("_name") and k[: -len("_name")] not in _THING_PREFIXES:
        return "PERSON"
    return None


def person_context(siblings: Iterable[str], parent_key: str | None) -> bool:
    """Whether a bare ``name`` key sits among person attributes or under a person-like parent."""
    if parent_key is not None and snake(parent_key) in _PERSON_PARENTS:
        return True
    return any(snake(s) in _PERSON_SIBLINGS or builtin_hint(s) in ("EMAIL_ADDRESS", "PHONE_NUMBER") for s in siblings)


class HintTable:
    """Resolves the entity type a key (at a dotted path) implies, or None."""

    def __init__(self, field_hints: dict[str, str]) -> None:
        self._by_key = [
            (snake(g) if "*" not in g and "?" not in g else g.lower(), e)
            for g, e in field_hints.items()
            if "." not in g
        ]
        self._by_path = [(g.lower(), e) for g, e in field_hints.items() if "." in g]
        self._memo: dict[tuple[str, str], str | None] = {}

    def hint(self, key: str, path: str, siblings: Iterable[str], parent_key: str | None) -> str | None:
        memo_key = (key, path)
        try:
            found = self._memo[memo_key]
        except KeyError:
            found = self._memo[memo_key] = self._lookup(key, path)
        if found is None and snake(key) == "name" and person_context(siblings, parent_key):
            return "PERSON"  # depends on the siblings, so decided per object
        if found is None and parent_key is not None and snake(key) in _NAME_PART_KEYS:
            parent = snake(parent_key)
            if parent == "name" or builtin_hint(parent_key) == "PERSON":
                return "PERSON"  # {"name": {"first": ..., "last": ...}}
        return found

    def _lookup(self, key: str, path: str) -> str | None:
        lpath = path.lower()
        for glob, entity in self._by_path:
            if fnmatchcase(lpath, glob):
                return entity
        k = snake(key)
        for glob, entity in self._by_key:
            if fnmatchcase(k, glob) or fnmatchcase(key.lower(), glob):
                return entity
        return builtin_hint(key)
