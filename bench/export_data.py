"""Varied CRM-like exports for bench/tokenize_export.py, with their ground truth.

The demo CRM's export (``examples.crm_data``) has one shape: the same keys, the same nesting, 20
note templates. A real export from another system measured 11x where that one measured 32x, so
this module builds exports the way different systems write them, from the same fictional values
(names, addresses, 555-01xx phones, Luhn-valid cards; see examples/crm_data.py):

* ``flat``: snake_case keys of a homegrown CRM (``given_name``, ``mobile``, ``postcode``,
  ``cc_number``, ``birthdate``), one long free-text ``comments`` field;
* ``nested``: camelCase JSON of a SaaS API (``name.first``, ``contactInfo.phones[].number``,
  ``mailingAddress.line1``, ``identifiers.taxId`` without dashes, an ``activity`` list of notes
  with authors and timestamps);
* ``pascal``: a Salesforce-style object (``FirstName``, ``MailingStreet``, ``SSN__c``,
  ``Birthdate``, ``Description``) with an e-mail thread quoted in its description;
* ``hubspot``: ``properties`` of lower-case keys (``firstname``, ``zip``, ``date_of_birth``) and
  chat-style engagement transcripts.

Notes differ in style and length: call logs, e-mails with headers and signatures, bullet lists,
chat lines, one-liners, multi-paragraph summaries; they mention other people (colleagues,
relatives, assistants) by full name, first name or title and surname, and carry phones, e-mails,
addresses and dates of birth inline.

Ground truth: every PII string placed anywhere in a record, by kind (nine kinds).
"""

from __future__ import annotations

import random
from datetime import date, timedelta
from typing import Any

from examples.crm_data import CITIES, _card, _email, _person, _phone, _ssn, _street

KINDS = (
    "PERSON",
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "STREET_ADDRESS",
    "LOCATION",
    "ZIP_CODE",
    "US_SSN",
    "CREDIT_CARD",
    "DATE_OF_BIRTH",
)
STYLES = ("flat", "nested", "pascal", "hubspot")
TITLES = ("Mr.", "Ms.", "Mrs.", "Dr.")


class _Truth:
    def __init__(self) -> None:
        self.values: dict[str, set[str]] = {k: set() for k in KINDS}

    def add(self, kind: str, value: str) -> str:
        self.values[kind].add(value)
        return value


def _dob(rng: random.Random) -> date:
    return date(1945, 1, 1) + timedelta(days=rng.randrange(0, 365 * 58))


def _dob_text(rng: random.Random, d: date) -> str:
    return rng.choice([d.strftime("%B %-d, %Y"), d.strftime("%m/%d/%Y"), d.isoformat(), d.strftime("%-d %B %Y")])


class _Person:
    def __init__(self, rng: random.Random, truth: _Truth) -> None:
        self.first, self.last = _person(rng)
        self.full = f"{self.first} {self.last}"
        city, state, prefix, areas = rng.choice(CITIES)
        self.city, self.state = city, state
        self.zip = f"{prefix}{rng.randrange(1, 100):02d}"
        self.street = _street(rng)
        self.email = _email(rng, self.first, self.last)
        self.phone = _phone(rng, rng.choice(areas))
        self.ssn = _ssn(rng)
        self.card = _card(rng)
        self.dob = _dob(rng)
        self.truth = truth

    def mark_all(self) -> None:
        t = self.truth
        for v in (self.first, self.last, self.full):
            t.add("PERSON", v)
        t.add("EMAIL_ADDRESS", self.email)
        t.add("PHONE_NUMBER", self.phone)
        t.add("STREET_ADDRESS", self.street)
        t.add("LOCATION", self.city)
        t.add("ZIP_CODE", self.zip)
        t.add("US_SSN", self.ssn)
        t.add("CREDIT_CARD", self.card)


def _other(rng: random.Random, truth: _Truth) -> _Person:
    p = _Person(rng, truth)
    truth.add("PERSON", p.full)
    return p


def _note(rng: random.Random, me: _Person, owner: str, truth: _Truth) -> str:
    """One free-text note in one of several styles, mentioning other people."""
    other, other2 = _other(rng, truth), _other(rng, truth)
    t = truth
    addr = t.add("STREET_ADDRESS", f"{other.street}, {other.city}, {other.state} {other.zip}")
    phone2 = t.add("PHONE_NUMBER", other.phone)
    email2 = t.add("EMAIL_ADDRESS", other.email)
    dob = t.add("DATE_OF_BIRTH", _dob_text(rng, me.dob))
    title = rng.choice(TITLES)
    t.add("PERSON", other2.last)
    style = rng.randrange(7)
    if style == 0:  # call log
        return (
            f"Call log: spoke with {me.first} for 12 minutes. {me.first} said their spouse {other.full} "
            f"now handles the billing and can be reached at {phone2}. Follow-up owner: {owner}."
        )
    if style == 1:  # e-mail with headers and a signature
        return (
            f"From: {other.full} <{email2}>\nTo: {owner}\nSubject: Re: account for {me.full}\n\n"
            f"Hi,\n\nplease send the paperwork for {me.first} to {addr}. I am their accountant.\n\n"
            f"Best regards,\n{other.first}\n{phone2}"
        )
    if style == 2:  # bullet list
        return (
            f"- verified identity of {me.full} (DOB: {dob})\n- new contact: {title} {other2.last}, "
            f"assistant to {me.first}\n- mail returned from {addr}\n- escalated to {owner}"
        )
    if style == 3:  # chat transcript
        return (
            f"{me.first}: hi, my sister {other.full} will call you about the renewal\n"
            f"Agent: sure, what number should we use?\n{me.first}: {phone2}, or email {email2}"
        )
    if style == 4:  # one-liner
        return f"{title} {other2.last} ({email2}) asked to be copied on all invoices for {me.last}."
    if style == 5:  # multi-paragraph summary
        return (
            f"Quarterly review with {me.full} and {other.full}. Both attended in person at our "
            f"office; {other.first} is the new procurement lead.\n\n"
            f"{me.first} was born on {dob} and asked about the senior discount. The account stays "
            f"with {owner}; {title} {other2.last} from finance will join next time.\n\n"
            f"Action: ship the samples to {addr} before the end of the month."
        )
    return (  # complaint ticket style
        f"Customer {me.full} complained that a package addressed to {addr} was left with a neighbour, "
        f"{other.full}. Refund approved by {owner}; confirmation sent to {email2}."
    )


def _flat(rng: random.Random, i: int, me: _Person, owner: str, truth: _Truth) -> dict[str, Any]:
    dob = truth.add("DATE_OF_BIRTH", me.dob.strftime("%m/%d/%Y"))
    return {
        "contact_id": f"CT-{i:05d}",
        "given_name": me.first,
        "surname": me.last,
        "email_address": me.email,
        "mobile": me.phone,
        "street_address": me.street,
        "city": me.city,
        "state": me.state,
        "postcode": me.zip,
        "ssn": me.ssn,
        "cc_number": me.card,
        "birthdate": dob,
        "owner": owner,
        "status": rng.choice(["active", "lapsed", "prospect"]),
        "comments": " ".join(_note(rng, me, owner, truth) for _ in range(rng.randint(1, 2))),
    }


def _nested(rng: random.Random, i: int, me: _Person, owner: str, truth: _Truth) -> dict[str, Any]:
    tax_id = truth.add("US_SSN", me.ssn.replace("-", ""))
    dob = truth.add("DATE_OF_BIRTH", me.dob.isoformat())
    return {
        "contactId": f"c_{i:05d}",
        "name": {"first": me.first, "last": me.last, "display": me.full},
        "contactInfo": {
            "emails": [me.email],
            "phones": [{"type": rng.choice(["work", "mobile", "home"]), "number": me.phone}],
        },
        "mailingAddress": {"line1": me.street, "city": me.city, "region": me.state, "postalCode": me.zip},
        "identifiers": {"taxId": tax_id},
        "payment": {"cardNumber": me.card, "brand": "visa" if me.card.startswith("4") else "mastercard"},
        "dateOfBirth": dob,
        "owner": {"name": owner, "team": "EMEA"},
        "activity": [
            {
                "type": rng.choice(["note", "call", "email"]),
                "at": f"2026-{rng.randint(1, 11):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:15:00Z",
                "author": owner,
                "body": _note(rng, me, owner, truth),
            }
            for _ in range(rng.randint(1, 3))
        ],
    }


def _pascal(rng: random.Random, i: int, me: _Person, owner: str, truth: _Truth) -> dict[str, Any]:
    dob = truth.add("DATE_OF_BIRTH", me.dob.isoformat())
    return {
        "Id": f"003{i:012d}",
        "FirstName": me.first,
        "LastName": me.last,
        "Email": me.email,
        "Phone": me.phone,
        "MailingStreet": me.street,
        "MailingCity": me.city,
        "MailingState": me.state,
        "MailingPostalCode": me.zip,
        "SSN__c": me.ssn,
        "Card_Number__c": me.card,
        "Birthdate": dob,
        "OwnerName": owner,
        "LeadSource": rng.choice(["Web", "Referral", "Partner"]),
        "Description": _note(rng, me, owner, truth),
    }


def _hubspot(rng: random.Random, i: int, me: _Person, owner: str, truth: _Truth) -> dict[str, Any]:
    dob = truth.add("DATE_OF_BIRTH", me.dob.isoformat())
    return {
        "id": f"hs-{i:06d}",
        "properties": {
            "firstname": me.first,
            "lastname": me.last,
            "email": me.email,
            "phone": me.phone,
            "address": me.street,
            "city": me.city,
            "zip": me.zip,
            "ssn": me.ssn,
            "credit_card": me.card,
            "date_of_birth": dob,
            "hubspot_owner": owner,
            "lifecyclestage": rng.choice(["lead", "customer", "evangelist"]),
        },
        "engagements": [{"type": "NOTE", "body": _note(rng, me, owner, truth)} for _ in range(rng.randint(1, 2))],
    }


_MAKERS = {"flat": _flat, "nested": _nested, "pascal": _pascal, "hubspot": _hubspot}


def generate_export(n: int = 400, seed: int = 23) -> tuple[list[dict[str, Any]], dict[str, set[str]]]:
    """``n`` records, a quarter in each style (interleaved), and the PII strings they hold."""
    rng = random.Random(seed)
    truth = _Truth()
    owners = [f"{f} {la}" for f, la in (_person(rng) for _ in range(6))]
    for o in owners:
        truth.add("PERSON", o)
    records = []
    for i in range(n):
        me = _Person(rng, truth)
        me.mark_all()
        records.append(_MAKERS[STYLES[i % len(STYLES)]](rng, i, me, rng.choice(owners), truth))
    return records, truth.values
