"""The exact-match guard: the normalised guard (one fold per string, one Aho-Corasick pass, keys
and numbers scanned) against the guard it replaced (two automata on the raw text, word
boundaries, strings only), side by side in one run.

    .venv/bin/python bench/guard_normalised.py [--records 400] [--runs 9]

The baseline is the previous ``veil/tokenizer/guard.py`` read from git (commit ``BASELINE``), so
both run in this process on the same data. No database and no detection: the guard alone.

Data: a varied CRM export built from ``examples/crm_data.py`` (the same customers in four
shapes: flat records, nested contact blocks with camelCase keys, a list of notes as chat lines,
and rows keyed by e-mail), as the strings, keys and numbers the tokenizer's walker hands the
guard. The vault holds every value of every customer (names, e-mails, phones, SSNs, cards,
streets, cities, ZIP codes, dates of birth), as a busy scope does after an export.

Reported per guard (CPU time of the process, so other load on the machine counts little):
median time to build the automaton, median time to scan the export, and
"caught": of the known values planted in an echo corpus (glued to other characters, without
separators, run together, full-width, with zero-width characters, as numbers and as keys), the
fraction the guard finds. Plus the new guard's worst time per MB over hostile inputs.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from examples.crm_data import generate_customers  # noqa: E402
from veil.tokenizer.guard import Guard  # noqa: E402
from veil.tokenizer.hints import HintTable  # noqa: E402
from veil.tokenizer.walker import walk  # noqa: E402

BASELINE = "09b1efe"  # the last commit with the word-boundary guard


def old_guard_module() -> types.ModuleType:
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{BASELINE}:veil/tokenizer/guard.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    mod = types.ModuleType("old_guard")
    sys.modules["old_guard"] = mod  # dataclasses look their module up
    exec(compile(source, "old_guard.py", "exec"), mod.__dict__)  # our own earlier code, from git
    return mod


def known_values(customers: list[dict]) -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    n: dict[str, int] = {}

    def add(value: str, entity_type: str) -> None:
        n[entity_type] = n.get(entity_type, 0) + 1
        out.append((value, f"[{entity_type}_{n[entity_type]}]", entity_type))

    for c in customers:
        add(c["full_name"], "PERSON")
        add(c["email"], "EMAIL_ADDRESS")
        add(c["phone"], "PHONE_NUMBER")
        add(c["ssn"], "US_SSN")
        add(c["card_number"], "CREDIT_CARD")
        add(c["address"]["street"], "STREET_ADDRESS")
        add(c["address"]["city"], "LOCATION")
        add(c["address"]["zip"], "ZIP_CODE")
        add(c["date_of_birth"], "DATE_OF_BIRTH")
    return out


def varied_export(customers: list[dict], seed: int = 3) -> dict:
    """The same people in the shapes real upstreams use."""
    rng = random.Random(seed)
    flat = [{k: v for k, v in c.items() if k != "address"} | c["address"] for c in customers[::4]]
    nested = [
        {
            "customerId": c["id"],
            "contact": {"displayName": c["full_name"], "emailAddress": c["email"], "mobilePhone": c["phone"]},
            "billing": {"cardNumber": c["card_number"], "postalAddress": ", ".join(c["address"].values())},
            "history": [{"at": f"2026-0{1 + k % 9}-1{k % 9}", "text": note} for k, note in enumerate(c["notes"])],
        }
        for c in customers[1::4]
    ]
    chat = [
        f"[{rng.randint(8, 18):02d}:{rng.randint(0, 59):02d}] agent: {note} Reach them at {c['phone']}."
        for c in customers[2::4]
        for note in c["notes"]
    ]
    by_email = {
        c["email"]: {"name": c["full_name"], "open_tickets": rng.randint(0, 9), "ssn": c["ssn"]}
        for c in customers[3::4]
    }
    return {
        "export": {"flat": flat, "nested": nested},
        "chat": chat,
        "by_email": by_email,
        "text": json.dumps({"rows": flat[:20]}),
    }


def echo_corpus(customers: list[dict], seed: int = 5) -> list[tuple[str, str]]:
    """(text, planted value): known values coming back the ways an echoing upstream returns them."""
    rng = random.Random(seed)
    out: list[tuple[str, str]] = []
    for c in customers[:100]:
        ssn, phone, name, email = c["ssn"], c["phone"], c["full_name"], c["email"]
        ssn_digits = ssn.replace("-", "")
        full_width = "".join(chr(ord(ch) + 0xFEE0) if ch.isdigit() else ch for ch in ssn)
        zw = name[:2] + "\u200b" + name[2:]
        local = email.split("@")[0]
        forms = [
            (f"customer 9{ssn}9 not found", ssn),
            (f"no match for x{name}y", name),
            (f"ssn {ssn_digits} on file", ssn),
            (f"ssn {full_width}", ssn),
            (f"{zw} called", name),
            (f"login: {name.replace(' ', '').lower()}", name),
            (f"https://crm.example/p/{name.replace(' ', '_')}/notes", name),
            (f"call {phone.replace('-', '').replace(' ', '').lstrip('+1')} now", phone),
            (json.dumps({email: {"open": rng.randint(1, 5)}}), email),
            (str(int(ssn_digits)), ssn),
        ]
        if len(local) >= 6 and any(ch in local for ch in "._-"):
            forms.append((f"login by {local} from 10.0.0.9", email))
        out.extend(forms)
    return out


def texts_of(value: object) -> tuple[list[str], list[str]]:
    """(strings only, as the old tokenizer scanned; strings + keys + numbers, as the new one)."""
    slots = walk(value, HintTable({})).slots
    return [s.text for s in slots if s.kind == "value"], [s.text for s in slots]


def timed(fn) -> float:
    """CPU time of this process: the machine is shared, and wall time would measure the neighbours."""
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=400)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()

    customers = generate_customers(args.records)
    known = known_values(customers)
    export = varied_export(customers)
    strings, all_slots = texts_of(export)
    size_kb = len(json.dumps(export, ensure_ascii=False)) / 1024
    old_mod = old_guard_module()
    OldGuard = old_mod.Guard

    build = {"old": [], "new": []}
    scan = {"old": [], "new": [], "new (+keys, numbers)": []}
    old_g, new_g = OldGuard(known), Guard(known)
    for _ in range(args.runs):  # alternate so machine load hits both alike
        build["old"].append(timed(lambda: OldGuard(known)))
        build["new"].append(timed(lambda: Guard(known)))
        scan["old"].append(timed(lambda: [old_g.find(t) for t in strings]))
        scan["new"].append(timed(lambda: [new_g.find(t) for t in strings]))
        scan["new (+keys, numbers)"].append(timed(lambda: [new_g.find(t) for t in all_slots]))

    corpus = echo_corpus(customers)

    def caught(g) -> float:
        hit = 0
        for text, _value in corpus:
            hit += bool(g.find(text))
        return hit / len(corpus)

    hostile = {
        "separators": "-" * 1_000_000,
        "digits": "4" * 1_000_000,
        "spaced letters": "m a r i a " * 100_000,
        "non-ASCII": "Mar\u00eda L\u00f3pez \u200b\uff11\uff12 " * 60_000,
        "glued values": "".join(f"x{v}y" for v, _, _ in known[:2000]) * 10,
    }
    worst = {}
    for name, text in hostile.items():
        t = statistics.median(timed(lambda text=text: new_g.find(text)) for _ in range(3))
        worst[name] = t / (len(text.encode()) / 1e6)

    print(
        f"export: {args.records} customers in four shapes, {size_kb:.0f} KB of JSON, "
        f"{len(strings)} strings, {len(all_slots) - len(strings)} keys and numbers; vault: {len(known)} values"
    )
    print(f"runs: {args.runs}, medians of CPU time, alternating; baseline = guard.py at {BASELINE}\n")
    print("| guard | build ms | scan ms (strings) | scan ms (strings + keys + numbers) | echo corpus caught |")
    print("|---|---|---|---|---|")
    med = {k: statistics.median(v) * 1000 for k, v in {**build, **scan}.items()}
    b_old, b_new = statistics.median(build["old"]) * 1000, statistics.median(build["new"]) * 1000
    s_old, s_new = statistics.median(scan["old"]) * 1000, statistics.median(scan["new"]) * 1000
    s_all = med["new (+keys, numbers)"]
    print(f"| old (word boundaries, raw text) | {b_old:.1f} | {s_old:.1f} | n/a | {caught(old_g):.0%} |")
    print(f"| new (normalised, one pass) | {b_new:.1f} | {s_new:.1f} | {s_all:.1f} | {caught(new_g):.0%} |")
    print(f"\nratio new/old: build {b_new / b_old:.2f}x, scan {s_new / s_old:.2f}x")
    print(f"echo corpus: {len(corpus)} texts with a planted known value\n")
    print("| hostile input (1 MB class) | new guard ms per MB |")
    print("|---|---|")
    for name, per_mb in worst.items():
        print(f"| {name} | {per_mb * 1000:.0f} |")


if __name__ == "__main__":
    main()
