"""Deterministic fake CRM data for the demo upstreams, the tests and the benchmarks.

Why hand-rolled instead of Faker: the data must be byte-identical for a given seed on every
machine and every library version (tests and benchmarks compare against it), it must work
offline, and it must be *hard* for the tokenizer in known ways: diverse, partly non-Anglo names
(so the NER model is really exercised), several phone formats, cards with spaces or dashes, and
free-text notes that mention people, phones, emails and street addresses inline.

Everything here is fiction: phone numbers use the 555-01xx range reserved for fiction, SSNs are
random numbers in the valid-looking range, cards are Luhn-valid random numbers.

Ground truth: ``ground_truth_values(records)`` lists every PII string that appears in the records
(structured fields and inside notes/ticket text, exactly as they appear), keyed by entity type.
It works on records that went through JSON (e.g. returned by the crm server) because notes are
parsed back with the templates that produced them.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections.abc import Iterable, Mapping
from datetime import date, timedelta
from typing import Any

__all__ = [
    "ENTITY_TYPES",
    "NOTE_TEMPLATES",
    "PII_FIELDS",
    "TICKET_TEMPLATES",
    "generate_customers",
    "generate_tickets",
    "ground_truth_values",
    "luhn_valid",
]

# --------------------------------------------------------------------------------------------
# Which fields are PII, and as which entity type. The tokenizer team measures recall against it.
# --------------------------------------------------------------------------------------------

ENTITY_TYPES = (
    "PERSON",
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "STREET_ADDRESS",
    "LOCATION",
    "US_SSN",
    "CREDIT_CARD",
    "DATE_TIME",
)

PII_FIELDS: dict[str, str] = {
    # customer records (JSON path -> entity type)
    "first_name": "PERSON",
    "last_name": "PERSON",
    "full_name": "PERSON",
    "email": "EMAIL_ADDRESS",
    "phone": "PHONE_NUMBER",
    "address.street": "STREET_ADDRESS",
    "address.city": "LOCATION",
    "address.zip": "LOCATION",
    "ssn": "US_SSN",
    "card_number": "CREDIT_CARD",
    "date_of_birth": "DATE_TIME",
    "account_manager": "PERSON",
    # free text: every template placeholder maps to one of the types above (see _PLACEHOLDER_TYPES)
    "notes[]": "PERSON | EMAIL_ADDRESS | PHONE_NUMBER | STREET_ADDRESS (inline)",
    # tickets
    "customer_email": "EMAIL_ADDRESS",
    "body": "PERSON | EMAIL_ADDRESS | PHONE_NUMBER | STREET_ADDRESS (inline)",
}
"""Field -> entity type. Not PII: ``id``, ``segment``, ``lifetime_value``, ``address.state`` (a
two-letter state code alone identifies nobody), ticket ``id``/``status``/``priority``/``title``."""

# --------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    """Whitespace-separated words; '_' stands for a space inside one word ("De_Luca")."""
    return [w.replace("_", " ") for w in text.split()]


FIRST_NAMES = _words(
    """
Maria José Sofia Mateo Valentina Santiago Camila Diego Lucía Alejandro Ximena Carlos Guadalupe Juan
Isabela Andrés Gabriela Rafael Paola Emilio Fernanda Joaquín Daniela Ricardo Mariana Luis Wei Jing
Li Na Hao Mei Jun Xiu Lan Chen Yan Zhen Ming Hui Bo Ling Qiang Xin Tao Yu Minh Linh Thanh Huong Tuan
Phuong Anh Quang Hoa Duc Ngoc Bao Min-jun Ji-woo Seo-yeon Hyun-woo Eun-ji Dong-hyun Soo-ah Jae-won
Haruto Yui Sota Aoi Ren Hina Kenji Sakura Takumi Yuki Daichi Emi Priya Arjun Ananya Rohan Aditi
Vikram Kavya Rahul Sneha Aarav Divya Sanjay Meera Nikhil Lakshmi Rajesh Deepa Harpreet Gurpreet
Amrita Suresh Neha Karthik Pooja Mohammed Fatima Omar Aisha Youssef Layla Khalid Nour Hassan Amira
Tariq Yasmin Karim Leila Samir Rania Bilal Zainab Ibrahim Salma Chidi Ngozi Oluwaseun Adaeze Kwame
Abena Kofi Amara Tendai Nia Jabari Zuri Emeka Folake Sipho Thandiwe Babajide Wanjiru Kamau Ayodele
Olga Dmitri Natasha Ivan Katarzyna Piotr Agnieszka Tomasz Milena Bogdan Irina Sergei Anastasia
Oksana Vladimir Zofia Jakub Ludmila Søren Astrid Björn Ingrid Freya Lars Sigrid Henrik Maja Anders
Liv Erik Saga Siobhan Niamh Ciarán Aoife Declan Saoirse Eoin Róisín Padraig Giulia Marco Francesca
Luca Chiara Matteo Alessandra Giorgio Elena Paolo Dimitris Eleni Nikos Katerina Yannis Despina
Mehmet Elif Emre Zeynep Burak Ayşe Dariush Shirin Farhad Parisa Kian Nasrin Jose Marisol Rodel
Maricel Jericho Ligaya Emma Olivia Liam Noah Ava Sophia James Benjamin Charlotte Amelia Lucas Henry
Harper Evelyn Alexander Michael Emily Elizabeth William Daniel Grace Chloé Zoë Jackson Madison Ethan
Abigail Samuel Hannah Nathan Victoria David Sarah Matthew Rebecca Joshua Rachel Andrew Megan Tyler
Brianna Kevin Lauren Jonathan Katherine Patrick Margaret Thomas Eleanor Christopher Nicole Aaliyah
DeShawn Imani Malik Keisha Tyrone Jasmine Darnell Ebony Terrell Noa Yael Eitan Tamar Avi Shira Ahanu
Kai Leilani Makoa Nalani
"""
)

LAST_NAMES = _words(
    """
Lopez Garcia Rodriguez Martinez Hernandez Gonzalez Perez Sanchez Ramirez Torres Flores Rivera Gomez
Diaz Reyes Morales Ortiz Gutierrez Chavez Ramos Ruiz Alvarez Mendoza Castillo Jiménez Vargas Romero
Herrera Medina Aguilar Núñez Castro Salazar Ibáñez Fuentes Wang Zhang Liu Chen Yang Huang Zhao Wu
Zhou Xu Sun Ma Zhu Hu Guo Lin He Gao Luo Zheng Nguyen Tran Le Pham Hoang Phan Vu Dang Bui Do Ngo
Duong Kim Lee Park Choi Jung Kang Cho Yoon Jang Lim Sato Suzuki Takahashi Tanaka Watanabe Ito
Yamamoto Nakamura Kobayashi Kato Yoshida Yamada Patel Sharma Singh Kumar Gupta Reddy Iyer Nair Rao
Desai Mehta Joshi Chatterjee Banerjee Krishnan Menon Pillai Kapoor Malhotra Bhatt Chaudhary Agarwal
Haddad Khoury Nasser Rahman Hussein Aziz Farah Saleh Mansour Habib Qureshi Siddiqui Abbasi Haddadi
Sadeghi Karimi Tehrani Hosseini Moradi Okafor Adeyemi Okonkwo Mensah Boateng Mwangi Otieno Nwosu
Abubakar Diallo Traoré Ndlovu Dlamini Achebe Oyelaran Asante Kariuki Banda Ivanov Petrov Smirnov
Kowalski Nowak Wiśniewski Wójcik Kovalenko Shevchenko Novak Horvat Popescu Dvořák Kuznetsova Sokolov
Lewandowski Johansson Andersson Nielsen Hansen Larsen Eriksson Lindqvist Berg Haugen Virtanen
Korhonen Murphy O'Brien Kelly Walsh O'Sullivan McCarthy Byrne Gallagher Doyle Quinn Rossi Russo
Ferrari Esposito Bianchi Romano Colombo Ricci Marino Greco Conti Papadopoulos Georgiou Nikolaidis
Konstantinou Y\u0131lmaz Kaya Demir Şahin Çelik Öztürk Santos Reyes-Cruz Bautista Villanueva Mercado
Smith Johnson Williams Brown Jones Miller Davis Wilson Anderson Taylor Thomas Moore Jackson Martin
Thompson White Harris Clark Lewis Robinson Walker Young Allen Wright Scott Green Baker Adams Nelson
Hill Campbell Mitchell Roberts Carter Phillips Evans Turner Parker Collins Edwards Stewart Morris
Murray Sullivan Bennett Brooks Foster Hayes Bryant Washington Jefferson Cohen Levi Friedman Katz
Goldberg Shapiro Mizrahi Kealoha Nakoa Begay Yazzie Tsosie Müller Schmidt Schneider Fischer Weber
Becker Hoffmann Schäfer Koch Richter Bauer Klein Wolf Dubois Moreau Laurent Lefebvre Girard Fontaine
Rousseau Mercier Blanchard De_Luca Dela_Cruz Cruz
"""
)

STREET_NAMES = _words(
    """
Oak Pine Maple Cedar Elm Birch Willow Juniper Magnolia Sycamore Chestnut Spruce Aspen Hawthorn
Mission Market Valencia Guerrero Dolores Castro Fillmore Divisadero Geary Clement Irving Judah
Washington Lincoln Jefferson Madison Franklin Adams Jackson Monroe Hamilton Grant Sunset Highland
Lakeview Riverside Hillcrest Fairview Meadow Park Ridge Summit Harbor Bayview Cherry Orchard Spring
Church Mill Union Center Prospect Forest Lake Garden Vista Canyon Mesa Alameda Camino Real Sierra
Cortez Laurel Poplar Redwood Cypress Beacon Greenwood Linden Cottonwood
"""
)

STREET_SUFFIXES = [
    "Street",
    "St",
    "Avenue",
    "Ave",
    "Road",
    "Rd",
    "Boulevard",
    "Blvd",
    "Lane",
    "Ln",
    "Drive",
    "Dr",
    "Court",
    "Ct",
    "Way",
    "Place",
    "Pl",
]

UNITS = ["Apt {n}{l}", "Apt {n}", "Suite {n}", "Unit {n}", "#{n}", "Apt {n}{l}"]

# (city, state, zip prefix, area codes)
CITIES: list[tuple[str, str, str, tuple[str, ...]]] = [
    ("San Francisco", "CA", "941", ("415", "628")),
    ("Oakland", "CA", "946", ("510",)),
    ("San Jose", "CA", "951", ("408", "669")),
    ("Los Angeles", "CA", "900", ("213", "323", "310")),
    ("San Diego", "CA", "921", ("619", "858")),
    ("Sacramento", "CA", "958", ("916",)),
    ("Seattle", "WA", "981", ("206",)),
    ("Spokane", "WA", "992", ("509",)),
    ("Portland", "OR", "972", ("503", "971")),
    ("Denver", "CO", "802", ("303", "720")),
    ("Boulder", "CO", "803", ("303",)),
    ("Phoenix", "AZ", "850", ("602", "480")),
    ("Tucson", "AZ", "857", ("520",)),
    ("Albuquerque", "NM", "871", ("505",)),
    ("Salt Lake City", "UT", "841", ("801",)),
    ("Las Vegas", "NV", "891", ("702",)),
    ("Austin", "TX", "787", ("512", "737")),
    ("Houston", "TX", "770", ("713", "832")),
    ("Dallas", "TX", "752", ("214", "469")),
    ("San Antonio", "TX", "782", ("210",)),
    ("Chicago", "IL", "606", ("312", "773")),
    ("Minneapolis", "MN", "554", ("612",)),
    ("Milwaukee", "WI", "532", ("414",)),
    ("Detroit", "MI", "482", ("313",)),
    ("Columbus", "OH", "432", ("614",)),
    ("Cleveland", "OH", "441", ("216",)),
    ("Indianapolis", "IN", "462", ("317",)),
    ("St. Louis", "MO", "631", ("314",)),
    ("Kansas City", "MO", "641", ("816",)),
    ("Nashville", "TN", "372", ("615",)),
    ("Atlanta", "GA", "303", ("404", "678")),
    ("Miami", "FL", "331", ("305", "786")),
    ("Orlando", "FL", "328", ("407",)),
    ("Tampa", "FL", "336", ("813",)),
    ("Charlotte", "NC", "282", ("704",)),
    ("Raleigh", "NC", "276", ("919",)),
    ("Richmond", "VA", "232", ("804",)),
    ("Baltimore", "MD", "212", ("410",)),
    ("Philadelphia", "PA", "191", ("215", "267")),
    ("Pittsburgh", "PA", "152", ("412",)),
    ("New York", "NY", "100", ("212", "646", "917")),
    ("Brooklyn", "NY", "112", ("718", "347")),
    ("Buffalo", "NY", "142", ("716",)),
    ("Boston", "MA", "021", ("617", "857")),
    ("Providence", "RI", "029", ("401",)),
    ("Hartford", "CT", "061", ("860",)),
    ("Burlington", "VT", "054", ("802",)),
    ("Honolulu", "HI", "968", ("808",)),
    ("Anchorage", "AK", "995", ("907",)),
    ("New Orleans", "LA", "701", ("504",)),
]

EMAIL_DOMAINS = [
    "gmail.com",
    "outlook.com",
    "yahoo.com",
    "icloud.com",
    "proton.me",
    "fastmail.com",
    "hotmail.com",
    "aol.com",
    "brightlane.com",
    "kestrelworks.net",
    "northwind-traders.com",
    "bluepeak.io",
    "harborfreight-logistics.com",
    "meridianhealth.org",
    "copperleaf.co",
]

SEGMENTS = ("gold", "silver", "bronze")
SEGMENT_WEIGHTS = (2, 3, 5)

# --------------------------------------------------------------------------------------------
# Free-text templates. Placeholders: {first} {full} customer; {other} another person; {manager}
# the account manager; {phone}/{email} the customer's; {phone2}/{email2} someone else's;
# {addr} an inline full address "88 Pine Street, Denver, CO 80202".
# --------------------------------------------------------------------------------------------

NOTE_TEMPLATES: tuple[str, ...] = (
    "Called {full} on {phone} about the invoice; they asked us to mail it to {addr} instead.",
    "{first} prefers email over phone calls, so use {email} for all renewal notices.",
    "Met {full} at the regional summit together with {other}; follow up next quarter about the upgrade.",
    "{first} reported a billing discrepancy on the last statement. {manager} is looking into it.",
    "Shipping address changed to {addr} per {first}'s request.",
    "Left a voicemail for {first} at {phone}. No callback yet.",
    "{full} asked that {other} be added as a secondary contact ({email2}).",
    "Renewal discussed with {first}; wants a discount before signing. Escalated to {manager}.",
    "{first} moved offices; new mailing address is {addr}. Archive the old one.",
    "Customer {full} requested a copy of all stored data under the privacy policy.",
    "Spoke with {other} from {first}'s finance team; invoices should go to {email2} from now on.",
    "{first} mentioned that their assistant {other} can be reached at {phone2}.",
    "Sent the onboarding pack to {email}. {first} confirmed receipt the same day.",
    "Do not call {full} before 10am; best number is {phone}.",
    "{first} complained about a late delivery to {addr}; refund approved by {manager}.",
    "Quarterly review with {full} went well and {first} is considering the gold tier.",
    "{full} disputes a charge and asked us to confirm by email at {email} and by phone at {phone}.",
    "Referred by {other}. {first} is evaluating competitors until the end of the month.",
    "Handover: {manager} takes over the account of {full} while {other} is on leave.",
    "{first} asked for the contract to be couriered to {addr} and signed by {other}.",
)

TICKET_TEMPLATES: tuple[str, ...] = (
    "{full} cannot log in to the portal since the password reset. Reach them at {phone}.",
    "Invoice for {full} was sent to the wrong address; correct address is {addr}.",
    "{first} reports duplicate charges this month. Customer email: {email}.",
    "Please update the phone number of {full} to {phone2} (old number {phone}).",
    "{first} wants to close the account; {manager} should call them back at {phone}.",
    "Package for {full} returned to sender from {addr}; confirm with {email}.",
    "{other} called on behalf of {full} asking about the refund status.",
    "{first} asked to receive statements at {email2} instead of {email}.",
)

TICKET_TITLES = (
    "Login problem",
    "Wrong invoice address",
    "Duplicate charge",
    "Contact details update",
    "Account closure",
    "Returned package",
    "Refund status",
    "Statement delivery",
)

_PLACEHOLDER_TYPES: dict[str, str] = {
    "first": "PERSON",
    "full": "PERSON",
    "other": "PERSON",
    "manager": "PERSON",
    "phone": "PHONE_NUMBER",
    "phone2": "PHONE_NUMBER",
    "email": "EMAIL_ADDRESS",
    "email2": "EMAIL_ADDRESS",
    "addr": "STREET_ADDRESS",
}

# --------------------------------------------------------------------------------------------
# Generators of single values
# --------------------------------------------------------------------------------------------


def _ascii(text: str) -> str:
    """Email-safe transliteration: 'Søren Ibáñez' -> 'soren ibanez'."""
    text = text.replace("ø", "o").replace("Ø", "O").replace("ß", "ss").replace("\u0131", "i").replace("ł", "l")
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).encode("ascii", "ignore").decode().lower()


def _email(rng: random.Random, first: str, last: str) -> str:
    f = re.sub(r"[^a-z]", "", _ascii(first))
    last_part = re.sub(r"[^a-z]", "", _ascii(last))
    style = rng.randrange(6)
    if style == 0:
        local = f"{f}.{last_part}"
    elif style == 1:
        local = f"{f[0]}{last_part}"
    elif style == 2:
        local = f"{f}{last_part}{rng.randrange(1, 99)}"
    elif style == 3:
        local = f"{f}_{last_part}"
    elif style == 4:
        local = f"{last_part}.{f}"
    else:
        local = f"{f}{rng.randrange(1960, 2005)}"
    return f"{local}@{rng.choice(EMAIL_DOMAINS)}"


def _phone(rng: random.Random, area: str) -> str:
    line = f"01{rng.randrange(100):02d}"
    style = rng.randrange(4)
    if style == 0:
        return f"({area}) 555-{line}"
    if style == 1:
        return f"+1 {area}-555-{line}"
    if style == 2:
        return f"{area}.555.{line}"
    return f"{area}-555-{line}"


def _street(rng: random.Random) -> str:
    number = rng.choice([rng.randrange(1, 100), rng.randrange(100, 1000), rng.randrange(1000, 9999)])
    street = f"{number} {rng.choice(STREET_NAMES)} {rng.choice(STREET_SUFFIXES)}"
    if rng.random() < 0.3:
        unit = rng.choice(UNITS).format(n=rng.randrange(1, 40), l=rng.choice("ABCDEF"))
        street = f"{street} {unit}"
    return street


def _address(rng: random.Random) -> tuple[dict[str, str], tuple[str, ...]]:
    city, state, prefix, areas = rng.choice(CITIES)
    zip_code = f"{prefix}{rng.randrange(1, 100):02d}"
    return {"street": _street(rng), "city": city, "state": state, "zip": zip_code}, areas


def _inline_address(rng: random.Random) -> str:
    addr, _ = _address(rng)
    return f"{addr['street']}, {addr['city']}, {addr['state']} {addr['zip']}"


def _ssn(rng: random.Random) -> str:
    while True:
        area = rng.randrange(1, 900)
        if area != 666:
            break
    return f"{area:03d}-{rng.randrange(1, 100):02d}-{rng.randrange(1, 10000):04d}"


def luhn_valid(number: str) -> bool:
    """True when the digits of ``number`` (spaces and dashes ignored) pass the Luhn check."""
    digits = [int(c) for c in number if c.isdigit()]
    if not digits:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _luhn_check_digit(partial: str) -> str:
    for check in "0123456789":
        if luhn_valid(partial + check):
            return check
    raise AssertionError("unreachable: one check digit always satisfies Luhn")


def _card(rng: random.Random) -> str:
    kind = rng.randrange(3)
    if kind == 0:
        prefix = "4"  # Visa
    elif kind == 1:
        prefix = str(rng.randrange(51, 56))  # Mastercard 51-55
    else:
        prefix = str(rng.randrange(2221, 2721))  # Mastercard 2-series
    body = prefix + "".join(str(rng.randrange(10)) for _ in range(15 - len(prefix)))
    digits = body + _luhn_check_digit(body)
    style = rng.randrange(3)
    groups = [digits[i : i + 4] for i in range(0, 16, 4)]
    if style == 0:
        return digits
    if style == 1:
        return " ".join(groups)
    return "-".join(groups)


def _person(rng: random.Random) -> tuple[str, str]:
    return rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)


def _fill(template: str, values: Mapping[str, str]) -> str:
    return template.format(**{k: v for k, v in values.items() if "{" + k + "}" in template})


# --------------------------------------------------------------------------------------------
# Public generators
# --------------------------------------------------------------------------------------------


def generate_customers(n: int = 400, seed: int = 7) -> list[dict[str, Any]]:
    """``n`` customer records, identical for the same ``(n, seed)`` on every machine.

    Records are plain JSON-compatible dicts (see the module docstring and ``PII_FIELDS``).
    Emails and phone numbers are unique across the data set, so a value identifies one person.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    rng = random.Random(seed)
    managers = [f"{f} {last}" for f, last in (_person(rng) for _ in range(8))]
    used_emails: set[str] = set()
    used_phones: set[str] = set()

    def unique(make: Any, used: set[str]) -> str:
        while True:
            value = make()
            digits = re.sub(r"\D", "", value) if used is used_phones else value.lower()
            if digits not in used:
                used.add(digits)
                return value

    customers: list[dict[str, Any]] = []
    for i in range(1, n + 1):
        first, last = _person(rng)
        full = f"{first} {last}"
        address, areas = _address(rng)
        email = unique(lambda f=first, la=last: _email(rng, f, la), used_emails)
        phone = unique(lambda a=areas: _phone(rng, rng.choice(a)), used_phones)
        born = date(1945, 1, 1) + timedelta(days=rng.randrange(0, 365 * 58))
        manager = rng.choice(managers)
        record: dict[str, Any] = {
            "id": f"C{i:04d}",
            "first_name": first,
            "last_name": last,
            "full_name": full,
            "email": email,
            "phone": phone,
            "address": address,
            "ssn": _ssn(rng),
            "card_number": _card(rng),
            "date_of_birth": born.isoformat(),
            "segment": rng.choices(SEGMENTS, SEGMENT_WEIGHTS)[0],
            "account_manager": manager,
            "lifetime_value": round(rng.uniform(120, 250_000) if rng.random() < 0.9 else rng.uniform(0, 120), 2),
            "notes": [],
        }
        for template in rng.sample(NOTE_TEMPLATES, rng.randint(1, 3)):
            record["notes"].append(_fill(template, _note_values(rng, record, areas, used_emails, used_phones)))
        customers.append(record)
    return customers


def _note_values(
    rng: random.Random, record: Mapping[str, Any], areas: tuple[str, ...], emails: set[str], phones: set[str]
) -> dict[str, str]:
    other_first, other_last = _person(rng)
    email2 = _email(rng, other_first, other_last)
    phone2 = _phone(rng, rng.choice(areas))
    emails.add(email2.lower())
    phones.add(re.sub(r"\D", "", phone2))
    return {
        "first": record["first_name"],
        "full": record["full_name"],
        "other": f"{other_first} {other_last}",
        "manager": record["account_manager"],
        "phone": record["phone"],
        "email": record["email"],
        "phone2": phone2,
        "email2": email2,
        "addr": _inline_address(rng),
    }


def generate_tickets(customers: list[dict[str, Any]], n: int = 20, seed: int = 11) -> list[dict[str, Any]]:
    """``n`` support tickets whose text mentions customers of ``customers`` (deterministic)."""
    if not customers and n:
        raise ValueError("generate_tickets needs at least one customer")
    rng = random.Random(seed)
    tickets = []
    for i in range(1, n + 1):
        customer = rng.choice(customers)
        areas = next((c[3] for c in CITIES if c[0] == customer["address"]["city"]), ("415",))
        index = rng.randrange(len(TICKET_TEMPLATES))
        values = _note_values(rng, customer, areas, set(), set())
        tickets.append(
            {
                "id": f"T{i:04d}",
                "customer_id": customer["id"],
                "customer_email": customer["email"],
                "title": TICKET_TITLES[index],
                "body": _fill(TICKET_TEMPLATES[index], values),
                "status": rng.choice(("open", "pending", "closed")),
                "priority": rng.choice(("low", "normal", "high")),
            }
        )
    return tickets


# --------------------------------------------------------------------------------------------
# Ground truth
# --------------------------------------------------------------------------------------------


def _template_regex(template: str) -> re.Pattern[str]:
    """Turn a template into a regex with one named group per placeholder occurrence."""
    parts = re.split(r"\{(\w+)\}", template)
    pattern = ["^"]
    for i, part in enumerate(parts):
        if i % 2 == 0:
            pattern.append(re.escape(part))
        else:
            pattern.append(f"(?P<{part}_{i}>.+?)")
    pattern.append("$")
    return re.compile("".join(pattern))


_NOTE_PATTERNS = [_template_regex(t) for t in NOTE_TEMPLATES]
_TICKET_PATTERNS = [_template_regex(t) for t in TICKET_TEMPLATES]


def parse_text(text: str, patterns: Iterable[re.Pattern[str]] | None = None) -> list[tuple[str, str]]:
    """The (entity type, value) pairs inside a generated note or ticket body, in order.

    Raises ``ValueError`` when the text was not produced by one of the templates.
    """
    for pattern in patterns if patterns is not None else [*_NOTE_PATTERNS, *_TICKET_PATTERNS]:
        match = pattern.match(text)
        if match:
            return [(_PLACEHOLDER_TYPES[name.rsplit("_", 1)[0]], value) for name, value in match.groupdict().items()]
    raise ValueError("text does not match any note or ticket template")


def ground_truth_values(records: Iterable[Mapping[str, Any]]) -> dict[str, set[str]]:
    """Every PII string appearing in customer or ticket records, by entity type, exactly as it appears.

    Structured fields contribute their values (``PII_FIELDS``); notes and ticket bodies contribute
    the values their templates inserted (names, first names alone, phones, emails, inline
    addresses). Every entity type in ``ENTITY_TYPES`` is a key, possibly with an empty set.
    """
    truth: dict[str, set[str]] = {t: set() for t in ENTITY_TYPES}
    for record in records:
        for field, entity in PII_FIELDS.items():
            if field in ("notes[]", "body"):
                continue
            value: Any = record
            for key in field.split("."):
                value = value.get(key) if isinstance(value, Mapping) else None
            if isinstance(value, str) and value:
                truth[entity].add(value)
        texts = list(record.get("notes") or [])
        if isinstance(record.get("body"), str):
            texts.append(record["body"])
        for text in texts:
            for entity, value in parse_text(text):
                truth[entity].add(value)
    return truth
