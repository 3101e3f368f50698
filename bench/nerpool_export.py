"""The 400-record export through Veil's Tokenizer: NER in process vs in the gateway's NER worker
pool (veil/tokenizer/nerpool.py), side by side in one run, runs alternating, medians.

The pool costs a pickle of the NER texts and spans over a pipe per call; this checks that the
speed of bench/tokenize_export.py (which runs NER in process) does not regress badly with it.

    .venv/bin/python bench/nerpool_export.py [--data varied] [--records 400] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.tokenize_export import dataset, temp_database  # noqa: E402
from veil import db  # noqa: E402
from veil.tokenizer import DetectionSettings, Keyring, Scope, Tokenizer, TokenSettings, nerpool  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="varied")
    parser.add_argument("--records", type=int, default=400)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    url, drop = temp_database(os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    engine = db.create_engine(url)
    try:
        settings = DetectionSettings()
        tokenizer = Tokenizer(engine, Keyring.from_keys(os.urandom(32)), settings, TokenSettings())
        pool = nerpool.NerPool(settings.spacy_model, args.workers)
        pool.wait_ready()
        records, _, _ = dataset(args.data, args.records)
        times: dict[str, list[float]] = {"in process": [], "worker pool": []}
        tokenizer.tokenize(records[:3], Scope("bench:warm"), "crm")
        for _ in range(args.runs):
            for mode in times:
                nerpool._ACTIVE = pool if mode == "worker pool" else None
                t0 = time.perf_counter()
                tokenizer.tokenize(records, Scope(f"bench:{uuid.uuid4().hex}"), "crm")
                times[mode].append(time.perf_counter() - t0)
        nerpool._ACTIVE = None
        pool.close()
    finally:
        engine.dispose()
        drop()
    here, there = (statistics.median(t) for t in times.values())
    print(f"data set {args.data}, {args.records} records, {pool.size} NER workers, load {os.getloadavg()[0]:.1f}")
    print("| NER | runs | median s | all runs s |")
    print("|---|---|---|---|")
    for mode, ts in times.items():
        print(f"| {mode} | {len(ts)} | {statistics.median(ts):.2f} | {', '.join(f'{t:.2f}' for t in ts)} |")
    print(f"worker pool / in process: {there / here:.2f}x")


if __name__ == "__main__":
    main()
