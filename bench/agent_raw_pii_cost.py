"""What counting the agent's raw PII adds to the untokenise stage, per outbound call.

The stage untokenises the agent's arguments (``Tokenizer.untokenize``, vault reads); since issue 8
it first detects raw values in them (``tokenize(..., mode="sandbox_output")``: patterns, key hints
and NER, no vault). Side by side in one process, alternating: the stage's tokenizer work without
the count (baseline) and with it, on typical arguments. Median CPU time per call (the machine is
shared; wall time would measure the neighbours).

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test .venv/bin/python bench/agent_raw_pii_cost.py
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.tokenize_export import temp_database  # noqa: E402
from examples.crm_data import generate_customers  # noqa: E402
from veil import db  # noqa: E402
from veil.tokenizer import DetectionSettings, Keyring, Scope, Tokenizer, TokenSettings  # noqa: E402


def main(rounds: int = 200) -> None:
    url, drop = temp_database(os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    engine = db.create_engine(url)
    try:
        tok = Tokenizer(engine, Keyring.from_keys(os.urandom(32)), DetectionSettings(), TokenSettings())
        scope = Scope("bench:agent")
        record = tok.tokenize(generate_customers(1)[0], scope, "crm").value  # tokens the agent holds
        note = " ".join(
            f"Called {record['full_name']} about order {i}; they will mail {record['email']} by Friday."
            for i in range(20)
        )
        cases = {
            "id only": {"customer_id": "C0001"},
            "tokens (send_email)": {
                "to": record["email"],
                "subject": "Order",
                "body": f"Dear {record['full_name']}, it shipped.",
            },
            "a guessed phone": {"customer_id": "(212) 555-0147"},
            f"free-text note ({len(note)} chars, tokens)": {"customer_id": "C0001", "note": note},
        }
        allow = lambda ref, path: None  # noqa: E731
        print(f"{rounds} calls per case and variant, alternating; median CPU per call\n")
        print("| arguments | baseline: untokenize (ms) | with the raw-PII count (ms) | added (ms) |")
        print("|---|---|---|---|")
        for name, args in cases.items():
            base, count = [], []
            tok.tokenize(args, scope, "agent", mode="sandbox_output")  # warm
            for _ in range(rounds):
                c0 = time.process_time()
                tok.untokenize(args, scope, allow)
                base.append(time.process_time() - c0)
                c0 = time.process_time()
                tok.tokenize(args, scope, "agent", mode="sandbox_output")
                tok.untokenize(args, scope, allow)
                count.append(time.process_time() - c0)
            b, c = statistics.median(base) * 1000, statistics.median(count) * 1000
            print(f"| {name} | {b:.2f} | {c:.2f} | {c - b:.2f} |")
    finally:
        engine.dispose()
        drop()


if __name__ == "__main__":
    main()
