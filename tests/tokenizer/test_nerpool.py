"""NER in worker processes (veil/tokenizer/nerpool.py): same entities as in process, a call past
its deadline or on a dead worker fails closed and the worker is replaced, and no worker outlives
its pool or a killed gateway. Real spawned processes with the real spaCy model."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from veil.errors import TokenizeBudgetExceeded
from veil.tokenizer import nerpool
from veil.tokenizer.detector import Detector, TextItem
from veil.tokenizer.nlp import load_ner_pipeline
from veil.tokenizer.settings import DetectionSettings
from veil.tokenizer.tokenizer import Tokenizer
from veil.tokenizer.tokens import Scope

MODEL = DetectionSettings().spacy_model
TEXTS = [
    "Yesterday Maria Gonzalez met Peter Lindqvist in Chicago to talk about the renewal.",
    "No names here at all.",
    "Call Jennifer Okafor on Tuesday; she moved to Denver last spring.",
]


@pytest.fixture(scope="module")
def pool() -> Iterator[nerpool.NerPool]:
    p = nerpool.start(MODEL, 1)
    p.wait_ready()
    yield p
    nerpool.stop()


def _orphan_gone(pid: int) -> bool:
    """Whether a process that is not our child has exited (waits up to a minute)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(pid).wait(timeout=60)
    return not psutil.pid_exists(pid)


@pytest.mark.req("tokenize:isolated-cost")
def test_the_pool_finds_what_the_pipeline_finds_in_process(pool: nerpool.NerPool) -> None:
    nlp, _ = load_ner_pipeline(MODEL)
    here = [[(e.start_char, e.end_char, e.label_) for e in doc.ents] for doc in nlp.pipe(TEXTS)]
    there = pool.run(MODEL, TEXTS, time.monotonic() + 120)
    assert there == here
    assert any(label == "PERSON" for _, _, label in there[0])


@pytest.mark.req("tokenize:isolated-cost")
def test_the_detector_sends_ner_to_the_pool_when_one_runs(pool: nerpool.NerPool, detector: Detector) -> None:
    items = [TextItem(t, ner=True) for t in TEXTS]
    before = pool.calls
    spans = detector.ner(items, time.monotonic() + 120)
    assert pool.calls > before
    assert any(s.entity_type == "PERSON" and TEXTS[0][s.start : s.end] == "Maria Gonzalez" for s in spans[0])


PATTERN_ITEMS = [
    TextItem(
        f"Reach Dana on +1 212-555-01{i % 100:02d} or dana{i}@example.com; she lives at {i} Main Street, "
        "Springfield, IL 62704.",
        "contact notes",
    )
    for i in range(300)
]


@pytest.mark.req("tokenize:isolated-cost")
def test_a_large_pattern_pass_runs_in_the_workers_with_the_same_spans(
    pool: nerpool.NerPool, detector: Detector
) -> None:
    assert sum(len(it.text) for it in PATTERN_ITEMS) >= 20_000  # large enough to be sent
    here = detector.patterns_here(PATTERN_ITEMS)
    assert detector.patterns(PATTERN_ITEMS) == here  # the first one asks the workers to build a detector
    pool.wait_prepared()
    before = pool.pattern_calls
    there = detector.patterns(PATTERN_ITEMS, time.monotonic() + 120)
    assert pool.pattern_calls > before
    assert there == here
    assert {"PHONE_NUMBER", "EMAIL_ADDRESS", "STREET_ADDRESS"} <= {s.entity_type for s in there[0]}


@pytest.mark.req("tokenize:isolated-cost")
def test_a_large_result_is_tokenised_the_same_while_its_patterns_run_in_the_workers(
    pool: nerpool.NerPool, tokenizer: Tokenizer, scope: Scope
) -> None:
    """The hinted fields' vault entries are written, and the guard run, while the workers run
    the patterns: a name known only from its hinted field is still caught in the notes."""
    records = [{"name": "Marisol Quenby", "notes": f"Marisol Quenby asked. {it.text}"} for it in PATTERN_ITEMS]
    tokenizer.detector.patterns(PATTERN_ITEMS)
    pool.wait_prepared()
    before = pool.pattern_calls
    first = tokenizer.tokenize(records, scope, "crm")
    assert pool.pattern_calls > before
    text = str(first.value)
    assert "Marisol" not in text and "Quenby" not in text and "dana7@example.com" not in text
    token = first.value[0]["name"]
    assert first.value[5]["notes"].startswith(f"{token} asked.")
    assert tokenizer.tokenize(records, scope, "crm").value == first.value


@pytest.mark.req("tokenize:budget-fails-closed")
def test_a_pattern_pass_past_its_deadline_fails_closed(pool: nerpool.NerPool, detector: Detector) -> None:
    detector.patterns(PATTERN_ITEMS)
    pool.wait_prepared()
    with pytest.raises(TokenizeBudgetExceeded) as failed:
        detector.patterns(PATTERN_ITEMS * 20, time.monotonic() - 1)
    assert "Dana" not in failed.value.message and "time budget" in failed.value.message
    pool.wait_ready()
    pool.wait_prepared()  # the replacement builds the detector before it takes work
    assert detector.patterns(PATTERN_ITEMS, time.monotonic() + 120)[0]


@pytest.mark.req("tokenize:budget-fails-closed")
def test_a_call_past_its_deadline_fails_closed_and_its_worker_is_replaced(pool: nerpool.NerPool) -> None:
    pool.wait_ready()
    (old,) = pool.pids()
    big = ["Maria Gonzalez met Peter Lindqvist in Chicago. " * 4000] * 4  # seconds of NER
    with pytest.raises(TokenizeBudgetExceeded) as failed:
        pool.run(MODEL, big, time.monotonic() + 0.05)
    assert "Maria" not in failed.value.message and "time budget" in failed.value.message
    assert not psutil.pid_exists(old)  # killed and reaped before the error was raised
    pool.wait_ready()
    assert pool.pids() != [old]
    assert pool.run(MODEL, TEXTS[:1], time.monotonic() + 120)[0]


@pytest.mark.req("tokenize:budget-fails-closed")
def test_a_worker_that_dies_fails_the_call_closed_and_is_replaced(pool: nerpool.NerPool) -> None:
    pool.wait_ready()
    (old,) = pool.pids()
    os.kill(old, signal.SIGKILL)
    with pytest.raises(TokenizeBudgetExceeded, match="died"):
        pool.run(MODEL, TEXTS, time.monotonic() + 120)
    assert not psutil.pid_exists(old)
    pool.wait_ready()
    assert pool.run(MODEL, TEXTS[:1], time.monotonic() + 120)[0]


@pytest.mark.req("tokenize:isolated-cost")
def test_a_large_batch_is_shared_by_idle_workers_and_stopping_stops_every_worker() -> None:
    p = nerpool.NerPool(MODEL, 2)
    p.wait_ready()
    pids = p.pids()
    assert len(pids) == 2
    batch = TEXTS * 40  # ~8,000 characters: split over both workers, in order
    nlp, _ = load_ner_pipeline(MODEL)
    here = [[(e.start_char, e.end_char, e.label_) for e in doc.ents] for doc in nlp.pipe(batch)]
    before = p.calls
    assert p.run(MODEL, batch, time.monotonic() + 120) == here
    assert p.calls == before + 2
    p.close()
    assert not any(psutil.pid_exists(pid) for pid in pids)
    with pytest.raises(TokenizeBudgetExceeded):
        p.run(MODEL, TEXTS, None)


@pytest.mark.req("tokenize:isolated-cost")
def test_no_worker_outlives_a_killed_gateway_process() -> None:
    """The owner is SIGKILLed (no clean-up runs): its workers see their pipe close and exit."""
    script = textwrap.dedent(
        f"""
        import sys
        from veil.tokenizer import nerpool
        if __name__ == "__main__":
            pool = nerpool.start({MODEL!r}, 2)
            pool.wait_ready()
            print(" ".join(map(str, pool.pids())), flush=True)
            sys.stdin.read()
        """
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        pids = [int(p) for p in owner.stdout.readline().split()]
        assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids)
    finally:
        owner.kill()
        owner.wait()
    assert all(_orphan_gone(pid) for pid in pids)


@pytest.mark.req("tokenize:isolated-cost")
def test_a_call_before_the_first_worker_is_ready_waits_for_it_outside_its_budget() -> None:
    """The gateway serves while its workers load: a call that needs NER then waits for the first
    worker, and the wait is not counted against its budget. In a new process (no fork server
    yet, so the first worker comes only after the server has imported spaCy and loaded the
    model), a budget shorter than that start still gets the same spans as in process, and only
    the fork server imported the preload module."""
    script = textwrap.dedent(
        f"""
        import json, sys, time
        from veil.tokenizer import nerpool
        from veil.tokenizer.nlp import load_ner_pipeline
        if __name__ == "__main__":
            budget = 1.5
            began = time.monotonic()
            pool = nerpool.NerPool({MODEL!r}, 1)
            before = pool.state()
            spans = pool.run({MODEL!r}, {TEXTS[:1]!r}, time.monotonic() + budget)
            took = time.monotonic() - began
            nlp, _ = load_ner_pipeline({MODEL!r})
            here = [[[e.start_char, e.end_char, e.label_] for e in doc.ents] for doc in nlp.pipe({TEXTS[:1]!r})]
            print(json.dumps({{
                "before": before, "after": pool.state(), "took": took, "budget": budget,
                "same": [[list(e) for e in t] for t in spans] == here,
                "preload_here": "veil.tokenizer.ner_preload" in sys.modules,
            }}), flush=True)
            pool.close()
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["before"] == ["starting", 0]
    assert found["same"] and found["after"] == ["ready", 1]
    assert found["took"] > found["budget"], "the worker was ready within the budget: nothing was shown"
    assert not found["preload_here"], "only the fork server imports the preload module"


@pytest.mark.req("tokenize:isolated-cost")
def test_a_pool_whose_workers_cannot_start_fails_calls_closed_and_says_so(tmp_path: Path) -> None:
    """Workers that die loading their model (a model directory without a model in it): a call
    that needs NER fails closed, saying why, instead of waiting, and the pool reports ``failed``
    (/readyz)."""
    broken = str(tmp_path)
    p = nerpool.NerPool(broken, 2)
    try:
        with pytest.raises(TokenizeBudgetExceeded, match="did not start"):
            p.run(broken, TEXTS[:1], time.monotonic() + 120)
        assert p.state() == ("failed", 0)
        with pytest.raises(RuntimeError, match="did not start"):
            p.wait_ready(timeout=60)
    finally:
        p.close()
