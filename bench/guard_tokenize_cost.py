"""What the normalised guard, key and number slots cost a whole ``Tokenizer.tokenize`` call: the
400-record exports of ``bench/tokenize_export.py`` (``varied`` and ``demo``) tokenised by this
tree and by a baseline checkout, alternating, each in its own process (two versions of one
package cannot share a process). Both get the same records, made by this tree.

    git worktree add --detach /tmp/veil-baseline f25f3c5   # main just before the guard landed
    .venv/bin/python bench/guard_tokenize_cost.py --baseline /tmp/veil-baseline [--rounds 3 --runs 3]

Reported: median CPU time of the tokenising process per call (the machine is shared; wall time
would measure the neighbours), wall time for reference, and recall per kind (this tree's
``tokenize_export.recall``) for both. PostgreSQL from ``DATABASE_URL`` (a temporary database
per process).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.export_data import generate_export  # noqa: E402
from bench.tokenize_export import recall, temp_database  # noqa: E402
from bench.trees import python_env, run_for_json  # noqa: E402
from examples.crm_data import generate_customers, ground_truth_values  # noqa: E402

CHILD = r"""
import json, os, sys, time, uuid
tree, data_file, runs, url = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
sys.path.insert(0, tree)
from veil import db
from veil.tokenizer import DetectionSettings, Keyring, Scope, Tokenizer, TokenSettings
data = json.load(open(data_file))
engine = db.create_engine(url)
tok = Tokenizer(engine, Keyring.from_keys(os.urandom(32)), DetectionSettings(), TokenSettings())
tok.tokenize(data["demo"][:3], Scope("bench:warm"), "crm")
result = {}
for name, records in data.items():
    cpu, wall = [], []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        out = tok.tokenize(records, Scope(f"bench:{uuid.uuid4().hex}"), "crm").value
        wall.append(time.perf_counter() - t0); cpu.append(time.process_time() - c0)
    result[name] = {"cpu": cpu, "wall": wall, "out": out}
engine.dispose()
print(json.dumps(result))
"""


def run(tree: Path, data_file: str, runs: int) -> dict:
    url, drop = temp_database(os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    try:
        return run_for_json(["-c", CHILD, str(tree), data_file, str(runs), url], python_env(tree))
    finally:
        drop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", type=Path, required=True, help="a checkout of the baseline commit")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3, help="tokenize calls per data set and process")
    args = parser.parse_args()
    varied, varied_truth = generate_export(400)
    demo = generate_customers(400)
    truth = {"varied": varied_truth, "demo": ground_truth_values(demo)}
    trees = {"baseline": args.baseline.resolve(), "this tree": ROOT}
    got = {t: {d: {"cpu": [], "wall": [], "recall": None} for d in truth} for t in trees}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"varied": varied, "demo": demo}, f)
    try:
        for _ in range(args.rounds):
            for name, tree in trees.items():
                for data, r in run(tree, f.name, args.runs).items():
                    got[name][data]["cpu"] += r["cpu"]
                    got[name][data]["wall"] += r["wall"]
                    got[name][data]["recall"] = recall(truth[data], r["out"])
    finally:
        os.unlink(f.name)
    print(f"400-record exports, {args.rounds} rounds x {args.runs} calls per data set and tree, alternating\n")
    print("| data | tree | calls | median CPU s | median wall s | lowest recall of a kind |")
    print("|---|---|---|---|---|---|")
    for data in truth:
        for name in trees:
            g = got[name][data]
            worst = min(g["recall"].values())
            cpu, wall = statistics.median(g["cpu"]), statistics.median(g["wall"])
            print(f"| {data} | {name} | {len(g['cpu'])} | {cpu:.2f} | {wall:.2f} | {worst:.4f} |")
    print()
    for data in truth:
        ratio = statistics.median(got["this tree"][data]["cpu"]) / statistics.median(got["baseline"][data]["cpu"])
        print(f"{data}: this tree / baseline CPU {ratio:.2f}x")
    for data in truth:
        for name in trees:
            rec = got[name][data]["recall"]
            print(f"{data} recall, {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in rec.items()))


if __name__ == "__main__":
    main()
