"""What the normalised guard, key and number slots cost a whole ``Tokenizer.tokenize`` call: the
400-record CRM export tokenised by this tree and by a baseline checkout, alternating, each in
its own process (two versions of one package cannot share a process).

    git worktree add /tmp/veil-baseline 6fa0ffe     # the commit before the guard work landed
    .venv/bin/python bench/guard_tokenize_cost.py --baseline /tmp/veil-baseline [--rounds 3 --runs 3]

Reported: median CPU time of the tokenising process per call (the machine is shared; wall time
would measure the neighbours), wall time for reference, and the recall of the export's ground
truth for both. PostgreSQL from ``DATABASE_URL`` (a temporary database per process).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, os, sys, time, uuid
tree = sys.argv[1]
sys.path.insert(0, tree); sys.path.insert(0, tree + "/bench")
from tokenize_export import temp_database, recall
from examples.crm_data import generate_customers, ground_truth_values
from veil import db
from veil.tokenizer import DetectionSettings, Keyring, Scope, Tokenizer, TokenSettings
records = generate_customers(400)
url, drop = temp_database(os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"))
try:
    engine = db.create_engine(url)
    tok = Tokenizer(engine, Keyring.from_keys(os.urandom(32)), DetectionSettings(), TokenSettings())
    tok.tokenize(records[:3], Scope("bench:warm"), "crm")
    cpu, wall = [], []
    for _ in range(int(sys.argv[2])):
        t0, c0 = time.perf_counter(), time.process_time()
        out = tok.tokenize(records, Scope(f"bench:{uuid.uuid4().hex}"), "crm").value
        wall.append(time.perf_counter() - t0); cpu.append(time.process_time() - c0)
    print(json.dumps({"cpu": cpu, "wall": wall, "recall": recall(ground_truth_values(records), out)}))
    engine.dispose()
finally:
    drop()
"""


def run(tree: Path, runs: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(tree), str(runs)], env=env, capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", type=Path, required=True, help="a checkout of the baseline commit")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3, help="tokenize calls per process")
    args = parser.parse_args()
    trees = {"baseline": args.baseline.resolve(), "this tree": ROOT}
    got: dict[str, dict[str, list]] = {k: {"cpu": [], "wall": [], "recall": []} for k in trees}
    for _ in range(args.rounds):
        for name, tree in trees.items():
            r = run(tree, args.runs)
            got[name]["cpu"] += r["cpu"]
            got[name]["wall"] += r["wall"]
            got[name]["recall"].append(r["recall"])
    print(f"400-record export, {args.rounds} rounds x {args.runs} calls per tree, alternating\n")
    print("| tree | calls | median CPU s | median wall s | recall (min per kind) |")
    print("|---|---|---|---|---|")
    med = {}
    for name, g in got.items():
        med[name] = statistics.median(g["cpu"])
        worst = min(min(r.values()) for r in g["recall"])
        print(f"| {name} | {len(g['cpu'])} | {med[name]:.2f} | {statistics.median(g['wall']):.2f} | {worst:.4f} |")
    print(f"\nthis tree / baseline, CPU: {med['this tree'] / med['baseline']:.2f}x")
    for name, g in got.items():
        print(f"{name} recall: " + ", ".join(f"{k} {v:.4f}" for k, v in g["recall"][-1].items()))


if __name__ == "__main__":
    main()
