"""Cost of safe substitution: writing values for where their token stands, next to the verbatim
splice it replaced, in one run.

For each argument shape the same values are written (a) verbatim (``splice``, the old behaviour,
the baseline) and (b) through ``plan`` + ``render`` for its context (sql: PostgreSQL's scanner
twice, once to place the tokens and once to check the result's shape; shell; json). Rounds
alternate between the two so machine noise hits both alike; medians per call in microseconds.

    .venv/bin/python bench/substitution.py [--runs 2000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from veil.tokenizer.substitute import Where, plan, splice

VALUES = {
    "[PERSON_1]": "Siobhan O'Connor",
    "[EMAIL_ADDRESS_1]": "x' OR '1'='1",
    "[EMAIL_ADDRESS_2]": "jane.doe@example.com",
}
SMALL_SQL = (
    "SELECT id, full_name, email FROM customers WHERE full_name = '[PERSON_1]' "
    "OR email = '[EMAIL_ADDRESS_1]' ORDER BY id LIMIT 50"
)
LARGE_SQL = " UNION ALL ".join(
    f"SELECT id, full_name, email, created_at FROM customers_{i} WHERE email IN ('[EMAIL_ADDRESS_2]', "
    f"'[EMAIL_ADDRESS_1]') AND full_name <> '[PERSON_1]' AND note NOT LIKE '%escalated%'"
    for i in range(40)
)
CASES: list[tuple[str, str, str]] = [
    ("sql, 130 chars, 2 tokens", "sql", SMALL_SQL),
    (f"sql, {len(LARGE_SQL) // 1000} kB, 120 tokens", "sql", LARGE_SQL),
    ("shell, 1 token", "shell", "grep -i -- [PERSON_1] /var/log/crm/*.log"),
    ("json, 2 tokens", "json", '{"to": "[EMAIL_ADDRESS_2]", "name": "[PERSON_1]", "tags": ["a", "b"]}'),
]


def timed(fn: Callable[[], object], runs: int) -> float:
    start = time.perf_counter()
    for _ in range(runs):
        fn()
    return (time.perf_counter() - start) / runs * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2000, help="calls per round (5 rounds per path)")
    args = ap.parse_args()
    where = Where("db__execute_sql", "$.sql")
    print("| argument | verbatim splice (baseline) us | safe substitution us | ratio |")
    print("|---|---|---|---|")
    for label, context, text in CASES:

        def safe(text: str = text, context: str = context) -> str:
            render = plan(text, context, where)
            assert render is not None
            return render(VALUES)

        def raw(text: str = text) -> str:
            return splice(text, VALUES)

        safe()  # warm up (imports pglast)
        base, new = [], []
        for _ in range(5):
            base.append(timed(raw, args.runs))
            new.append(timed(safe, max(1, args.runs // 10)))
        b, n = statistics.median(base), statistics.median(new)
        print(f"| {label} | {b:.1f} | {n:.1f} | {n / b:.0f}x |")


if __name__ == "__main__":
    main()
