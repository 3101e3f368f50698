"""The fake CRM data: deterministic, realistic, and with a ground truth that really covers it."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from examples import crm_data
from examples.crm_data import (
    ENTITY_TYPES,
    NOTE_TEMPLATES,
    generate_customers,
    generate_tickets,
    ground_truth_values,
    luhn_valid,
    parse_text,
)


@pytest.fixture(scope="module")
def customers() -> list[dict]:
    return generate_customers()


@pytest.fixture(scope="module")
def truth(customers: list[dict]) -> dict[str, set[str]]:
    return ground_truth_values(customers)


def test_same_seed_same_data_and_different_seed_different_data(customers: list[dict]) -> None:
    assert json.dumps(generate_customers(), sort_keys=True) == json.dumps(customers, sort_keys=True)
    assert generate_customers(n=10) == customers[:10]
    other = generate_customers(seed=8)
    assert [c["full_name"] for c in other] != [c["full_name"] for c in customers]


def test_record_shape(customers: list[dict]) -> None:
    assert len(customers) == 400
    assert [c["id"] for c in customers[:3]] == ["C0001", "C0002", "C0003"]
    for c in customers:
        assert c["full_name"] == f"{c['first_name']} {c['last_name']}"
        assert set(c["address"]) == {"street", "city", "state", "zip"}
        assert re.fullmatch(r"[A-Z]{2}", c["address"]["state"])
        assert re.fullmatch(r"\d{5}", c["address"]["zip"])
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", c["date_of_birth"])
        assert c["segment"] in {"gold", "silver", "bronze"}
        assert isinstance(c["lifetime_value"], float)
        assert 1 <= len(c["notes"]) <= 3
    assert len({c["email"] for c in customers}) == 400, "emails must identify one customer"


def test_export_is_a_few_hundred_kilobytes(customers: list[dict]) -> None:
    assert 150_000 < len(json.dumps(customers)) < 1_000_000


def test_cards_are_luhn_valid_visa_or_mastercard_in_mixed_formats(customers: list[dict]) -> None:
    styles = Counter()
    for c in customers:
        card = c["card_number"]
        digits = re.sub(r"[ -]", "", card)
        assert len(digits) == 16 and digits.isdigit()
        assert luhn_valid(card)
        assert digits[0] == "4" or 51 <= int(digits[:2]) <= 55 or 2221 <= int(digits[:4]) <= 2720
        styles["space" if " " in card else "dash" if "-" in card else "plain"] += 1
    assert set(styles) == {"space", "dash", "plain"}
    assert not luhn_valid("4111 1111 1111 1112")  # the check itself can fail


def test_ssns_avoid_invalid_areas(customers: list[dict]) -> None:
    for c in customers:
        area, group, serial = c["ssn"].split("-")
        assert len(area) == 3 and len(group) == 2 and len(serial) == 4
        assert area not in {"000", "666"} and not area.startswith("9")
        assert group != "00" and serial != "0000"


def test_phone_formats_are_mixed(customers: list[dict]) -> None:
    patterns = {
        "paren": r"\(\d{3}\) 555-01\d{2}",
        "plus1": r"\+1 \d{3}-555-01\d{2}",
        "dots": r"\d{3}\.555\.01\d{2}",
        "dashes": r"\d{3}-555-01\d{2}",
    }
    seen = Counter()
    for c in customers:
        kinds = [k for k, p in patterns.items() if re.fullmatch(p, c["phone"])]
        assert len(kinds) == 1, c["id"]
        seen[kinds[0]] += 1
    assert set(seen) == set(patterns)


def test_streets_vary_in_suffix_and_units(customers: list[dict]) -> None:
    streets = [c["address"]["street"] for c in customers]
    suffixes = {s for s in crm_data.STREET_SUFFIXES if any(f" {s}" in street for street in streets)}
    assert len(suffixes) >= 12
    assert any(re.search(r" (Apt|Suite|Unit|#)", s) for s in streets)


def test_names_are_diverse_and_include_non_ascii(customers: list[dict]) -> None:
    assert len(crm_data.FIRST_NAMES) >= 250 and len(crm_data.LAST_NAMES) >= 250
    assert len({c["first_name"] for c in customers}) >= 150
    assert len({c["last_name"] for c in customers}) >= 150
    assert any(not c["full_name"].isascii() for c in customers)


def test_notes_mention_the_customer_and_use_many_templates(customers: list[dict]) -> None:
    used = Counter()
    for c in customers:
        for note in c["notes"]:
            assert c["first_name"] in note
            matches = [i for i, t in enumerate(NOTE_TEMPLATES) if crm_data._template_regex(t).match(note)]
            assert len(matches) == 1, f"note of {c['id']} must match exactly one template"
            used[matches[0]] += 1
    assert len(NOTE_TEMPLATES) >= 15
    assert len(used) >= 15
    all_notes = " ".join(n for c in customers for n in c["notes"])
    assert re.search(r"\d+ \w+ \w+.*, [A-Z]{2} \d{5}", all_notes), "inline street addresses"
    assert re.search(r"[\w.+-]+@[\w-]+\.\w+", all_notes), "inline emails"


def test_ground_truth_has_every_structured_value(customers: list[dict], truth: dict[str, set[str]]) -> None:
    assert set(truth) == set(ENTITY_TYPES)
    for c in customers:
        assert {c["first_name"], c["last_name"], c["full_name"], c["account_manager"]} <= truth["PERSON"]
        assert c["email"] in truth["EMAIL_ADDRESS"]
        assert c["phone"] in truth["PHONE_NUMBER"]
        assert c["address"]["street"] in truth["STREET_ADDRESS"]
        assert {c["address"]["city"], c["address"]["zip"]} <= truth["LOCATION"]
        assert c["ssn"] in truth["US_SSN"]
        assert c["card_number"] in truth["CREDIT_CARD"]
        assert c["date_of_birth"] in truth["DATE_TIME"]


def test_ground_truth_values_appear_verbatim(customers: list[dict], truth: dict[str, set[str]]) -> None:
    text = json.dumps(customers, ensure_ascii=False)
    for entity, values in truth.items():
        for value in values:
            assert json.dumps(value, ensure_ascii=False)[1:-1] in text, f"{entity} value not in the data"


def test_ground_truth_covers_every_pii_looking_string(customers: list[dict], truth: dict[str, set[str]]) -> None:
    """An independent scan: whatever looks like PII in the JSON must be listed by the ground truth."""
    text = json.dumps(customers, ensure_ascii=False)
    scans = {
        "EMAIL_ADDRESS": r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+",
        "US_SSN": r"\b\d{3}-\d{2}-\d{4}\b",
        "PHONE_NUMBER": r"(?:\+1 |\()?\b\d{3}\)?[ .-]555[.-]01\d{2}\b",
    }
    for entity, pattern in scans.items():
        found = set(re.findall(pattern, text))
        assert found, entity
        covered = {f for f in found if any(f in value or value in f for value in truth[entity])}
        assert found == covered, f"{entity}: {len(found - covered)} strings not in the ground truth"
    # Strip every value the ground truth lists from a note: no known name may remain, except words
    # of the template's own text (e.g. "Do not call", which is also a Vietnamese surname).
    names = set(crm_data.FIRST_NAMES) | set(crm_data.LAST_NAMES)
    literal_words = set(re.findall(r"\w+", " ".join(re.sub(r"\{\w+\}", " ", t) for t in NOTE_TEMPLATES)))
    for c in customers:
        for note in c["notes"]:
            rest = note
            for _, value in sorted(parse_text(note), key=lambda ev: -len(ev[1])):
                rest = rest.replace(value, " ")
            leftover = {w for w in re.findall(r"[^\W\d_][\w'-]*", rest) if w in names} - literal_words
            assert not leftover, f"a name in a note of {c['id']} is not in the ground truth"


def test_tickets_mention_customers_and_have_ground_truth(customers: list[dict]) -> None:
    tickets = generate_tickets(customers, 20)
    assert tickets == generate_tickets(customers, 20)
    assert len(tickets) == 20 and tickets[0]["id"] == "T0001"
    by_id = {c["id"]: c for c in customers}
    truth = ground_truth_values(tickets)
    for t in tickets:
        c = by_id[t["customer_id"]]
        assert c["first_name"] in t["body"]
        assert t["customer_email"] in truth["EMAIL_ADDRESS"]
        assert all(value in t["body"] for _, value in parse_text(t["body"]))


def test_parse_text_rejects_foreign_text() -> None:
    with pytest.raises(ValueError, match="does not match"):
        parse_text("An unrelated sentence.")


def test_negative_count_is_refused() -> None:
    with pytest.raises(ValueError, match="n must be"):
        generate_customers(-1)
