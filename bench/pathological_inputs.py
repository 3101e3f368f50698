"""Pathological inputs: worst time per MB and growth exponent of tokenisation.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test \\
        .venv/bin/python bench/pathological_inputs.py [--max-kb 1024] [--cap-s 90]

Each input is one string (the way an echoed argument or a hostile tool result arrives) under a
neutral key, tokenised by ``Tokenizer.tokenize`` with the default settings in a fresh scope,
against a real PostgreSQL vault (a temporary database). Sizes grow 4x from 16 KB up to
``--max-kb``; an input stops growing once one run takes longer than ``--cap-s``.

Reported per input: seconds at each size, seconds per MB at the largest size, and the growth
exponent k of time ~ size^k between the two largest sizes (1 = linear, 2 = quadratic). The
deterministic check (no clock) that this stays linear is tests/tokenizer/test_linear.py.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.tokenize_export import temp_database  # noqa: E402
from veil import db  # noqa: E402
from veil.tokenizer import DetectionSettings, Keyring, Scope, Tokenizer, TokenSettings  # noqa: E402


def nested_json(n: int) -> str:
    """JSON text nested 90 levels deep (the walker refuses more than 200 with a clear error),
    repeated to size; the walker parses JSON found in strings and walks it like the outer value."""
    doc: object = {"note": "x"}
    for _ in range(45):
        doc = {"k": [doc]}
    one = json.dumps(doc)
    return "[" + ",".join([one] * max(1, n // len(one))) + "]"


INPUTS = {
    "'12 ' + 'A-' * n (the reported case)": lambda n: "12 " + "A-" * (n // 2),
    "repeated separators '-/.,;'": lambda n: "-/.,;" * (n // 5),
    "long digit run": lambda n: "7" * n,
    "digits and spaces '1 1 1'": lambda n: "1 " * (n // 2),
    "digit groups '555 12 '": lambda n: "555 12 " * (n // 7),
    "long capitalised run 'Aaaa Bbbb'": lambda n: "Aaaa Bbbb " * (n // 10),
    "upper-case words 'ABCD '": lambda n: "ABCD " * (n // 5),
    "e-mail-like run 'a.b@c'": lambda n: "a.b@c" * (n // 5),
    "dotted host-like run 'a.'": lambda n: "a." * (n // 2),
    "long whitespace": lambda n: " " * n + "Jane",
    "newlines": lambda n: "\n" * n + "Jane",
    "address-like lines": lambda n: "12 Oak Street,\n" * (n // 15),
    "street words without end 'Aa St Aa St'": lambda n: "12 Aa St " * (n // 9),
    "deeply nested JSON text": nested_json,
    "word characters 'aaaa'": lambda n: "a" * n,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-kb", type=int, default=1024)
    parser.add_argument("--cap-s", type=float, default=90.0)
    parser.add_argument("--only", default=None, help="substring of an input's name")
    args = parser.parse_args()

    url, drop = temp_database(os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    rows = []
    try:
        engine = db.create_engine(url)
        tokenizer = Tokenizer(engine, Keyring.from_keys(os.urandom(32)), DetectionSettings(), TokenSettings())
        tokenizer.tokenize({"text": "warm up Jane Doe 415-555-0132"}, Scope("bench:warm"), "bench")
        sizes = []
        kb = 16
        while kb <= args.max_kb:
            sizes.append(kb * 1024)
            kb *= 4
        for name, make in INPUTS.items():
            if args.only and args.only not in name:
                continue
            times: list[tuple[int, float]] = []
            for n in sizes:
                text = make(n)
                t0 = time.perf_counter()
                tokenizer.tokenize({"text": text}, Scope(f"bench:{uuid.uuid4().hex}"), "bench")
                elapsed = time.perf_counter() - t0
                times.append((len(text.encode()), elapsed))
                print(f"  {name}: {len(text) / 1024:.0f} KB in {elapsed:.2f} s", file=sys.stderr, flush=True)
                if elapsed > args.cap_s:
                    break
            (n1, t1), (n2, t2) = times[-2], times[-1]
            exponent = math.log(max(t2, 1e-4) / max(t1, 1e-4)) / math.log(n2 / n1)
            rows.append((name, times, t2 / (n2 / 2**20), exponent))
        engine.dispose()
    finally:
        drop()

    print(f"| input | {' | '.join(f'{s // 1024} KB s' for s in sizes)} | s per MB (largest) | growth exponent |")
    print("|---|" + "---:|" * (len(sizes) + 2))
    for name, times, per_mb, exponent in rows:
        cells = [f"{t:.2f}" for _, t in times] + ["-"] * (len(sizes) - len(times))
        print(f"| {name} | {' | '.join(cells)} | {per_mb:.1f} | {exponent:.2f} |")
    worst = max(rows, key=lambda r: r[2])
    steepest = max(rows, key=lambda r: r[3])
    print()
    print(f"Worst time per MB: {worst[2]:.1f} s ({worst[0]}). Steepest growth: {steepest[3]:.2f} ({steepest[0]}).")


if __name__ == "__main__":
    main()
