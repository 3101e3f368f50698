"""spaCy NER in worker processes, so one session's heavy result never stalls another's calls.

spaCy's Cython loops hold the GIL for long stretches: NER over a large free-text result run in a
gateway thread stalls the event loop and every other session's detection with it, and a thread
cannot be stopped when the call's time budget runs out. So the gateway owns a pool of worker
processes (``NerPool``), each with the spaCy pipeline loaded once; ``Detector`` sends it batches
of texts and gets entity spans back as ``(start, end, label)`` — nothing else crosses the pipe,
and a worker never logs a text.

A call that passes its deadline, or whose worker dies, kills that worker, starts a replacement
and raises ``TokenizeBudgetExceeded``: detection fails closed, never returns partial spans.

Workers are started with the ``spawn`` context (the gateway has threads, so ``fork`` is unsafe)
and stopped with the gateway. A worker also exits when its pipe to the gateway closes, so a
killed gateway leaves no worker behind once the worker's current batch is done.

One pool is active per process (``start`` / ``active`` / ``stop``): the gateway starts it, and
``Detector._ner`` uses it when there is one; unit tests and the CLI's policy tooling, which run
one detection at a time, keep the in-process path.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from veil.errors import TokenizeBudgetExceeded

log = logging.getLogger(__name__)

Ents = list[tuple[int, int, str]]  # per text: (start_char, end_char, spaCy label)

_CONTEXT = multiprocessing.get_context("spawn")
_BATCH = 64
_SPLIT_CHARS = 4000  # a batch is shared among idle workers when it has this many characters per worker
_LOAD_TIMEOUT = 300.0  # loading a model on a busy host


def _serve(conn: Connection, model: str) -> None:
    """A worker's loop: load the pipeline, then answer ``(model, texts)`` with entity spans."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the gateway's terminal: the gateway stops us
    os.dup2(2, 1)  # stdout may be the gateway's stdio MCP channel: nothing of ours may land there
    from veil.tokenizer.nlp import load_ner_pipeline

    load_ner_pipeline(model)
    conn.send(("ready", None))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the gateway is gone
            return
        if msg is None:
            return
        name, texts = msg
        try:
            nlp, _ = load_ner_pipeline(name)
            out = [
                [(e.start_char, e.end_char, e.label_) for e in doc.ents] for doc in nlp.pipe(texts, batch_size=_BATCH)
            ]
            conn.send(("ok", out))
        except Exception as exc:  # the class only: an exception message may quote the text
            conn.send(("error", type(exc).__name__))


@dataclass(eq=False)
class _Worker:
    process: Any
    conn: Connection
    started: float = field(default_factory=time.monotonic)


class NerPool:
    """``size`` worker processes running spaCy NER for ``model`` (other models load on demand)."""

    def __init__(self, model: str, size: int | None = None) -> None:
        self.model = model
        self.size = max(1, size if size else (os.cpu_count() or 1))
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._all: set[_Worker] = set()
        self._lock = threading.Lock()
        self._closed = False
        self.calls = 0  # batches sent to workers (tests check the gateway's detection used the pool)
        for _ in range(self.size):
            self._spawn()

    def _spawn(self) -> None:
        """Start a worker; it joins the idle queue once its pipeline is loaded (in a thread, so
        calls never wait for a model load or count it against their budget)."""
        parent, child = _CONTEXT.Pipe()
        proc = _CONTEXT.Process(target=_serve, args=(child, self.model), name="veil-ner", daemon=True)
        proc.start()
        child.close()
        w = _Worker(proc, parent)
        with self._lock:
            self._all.add(w)
        threading.Thread(target=self._when_ready, args=(w,), name="veil-ner-start", daemon=True).start()

    def _when_ready(self, w: _Worker) -> None:
        try:
            ok = w.conn.poll(_LOAD_TIMEOUT) and w.conn.recv()[0] == "ready"
        except (EOFError, OSError):
            ok = False
        if ok and not self._closed:
            self._idle.put(w)
        else:
            if not self._closed:
                log.error("NER worker %s did not start (exit code %s)", w.process.pid, w.process.exitcode)
            self._kill(w)

    def wait_ready(self, timeout: float = _LOAD_TIMEOUT) -> None:
        """Block until every worker has loaded its pipeline (gateway start-up), or raise."""
        end = time.monotonic() + timeout
        while self._idle.qsize() < self.size:
            if time.monotonic() > end or not self.pids():
                raise RuntimeError(f"the NER worker processes did not start within {timeout:g} s")
            time.sleep(0.05)

    def pids(self) -> list[int]:
        with self._lock:
            return [w.process.pid for w in self._all]

    def run(self, model: str, texts: list[str], deadline: float | None) -> list[Ents]:
        """Entity spans per text; ``deadline`` is a ``time.monotonic()`` value or None (no limit).

        A large batch is split, in order and by characters, over the workers idle at that moment
        (one worker is always waited for; others are only taken if free), so one call's NER uses
        every core the pool has. If any share times out or its worker dies, every worker of the
        call is replaced and nothing is returned (fail closed)."""
        if not texts:
            return []
        if self._closed:
            raise TokenizeBudgetExceeded("NER is unavailable: the gateway is stopping")
        try:
            workers = [self._idle.get(timeout=_remaining(deadline))]
        except queue.Empty:
            raise TokenizeBudgetExceeded(_MESSAGE) from None
        total = sum(map(len, texts))
        while len(workers) < min(len(texts), total // _SPLIT_CHARS + 1):
            try:
                workers.append(self._idle.get_nowait())
            except queue.Empty:
                break
        shares = _split(texts, len(workers))
        self.calls += len(workers)
        replies: list[tuple[str, Any]] = []
        try:
            for w, share in zip(workers, shares, strict=True):
                try:
                    w.conn.send((model, share))
                except OSError:
                    raise _died(w) from None
            for w in workers:
                replies.append(self._receive(w, deadline))
        except BaseException:
            for w in workers:
                self._replace(w)
            raise
        for w in workers:
            self._idle.put(w)
        out: list[Ents] = []
        for kind, payload in replies:
            if kind != "ok":
                log.error("NER worker failed (%s); the call fails closed", payload)
                raise TokenizeBudgetExceeded("NER failed in its worker process; the result was withheld")
            out.extend(payload)
        return out

    def _receive(self, w: _Worker, deadline: float | None) -> tuple[str, Any]:
        try:
            if not w.conn.poll(_remaining(deadline)):
                raise TokenizeBudgetExceeded(_MESSAGE)
            return w.conn.recv()
        except (EOFError, OSError):
            raise _died(w) from None

    def _replace(self, w: _Worker) -> None:
        """Kill a worker that timed out or died and start another in its place."""
        self._kill(w)
        if not self._closed:
            self._spawn()

    def _kill(self, w: _Worker) -> None:
        with self._lock:
            self._all.discard(w)
        if w.process.is_alive():
            w.process.kill()
        w.process.join(5)
        w.conn.close()

    def close(self) -> None:
        """Stop every worker (idle ones are asked to exit; busy or stuck ones are killed)."""
        self._closed = True
        with self._lock:
            workers = list(self._all)
        for w in workers:
            with contextlib.suppress(OSError):
                w.conn.send(None)
        for w in workers:
            w.process.join(2)
            self._kill(w)


def _died(w: _Worker) -> TokenizeBudgetExceeded:
    w.process.join(1)
    log.error("NER worker %s died (exit code %s); replaced", w.process.pid, w.process.exitcode)
    return TokenizeBudgetExceeded("NER's worker process died; the result was withheld")


def _split(texts: list[str], n: int) -> list[list[str]]:
    """``texts`` in ``n`` consecutive shares of about equal characters (none empty)."""
    if n <= 1:
        return [texts]
    total = sum(map(len, texts))
    shares: list[list[str]] = [[]]
    done = 0
    for i, t in enumerate(texts):
        left = len(texts) - i  # keep at least one text for every share still to start
        if shares[-1] and len(shares) < n and (done >= total * len(shares) / n or left <= n - len(shares)):
            shares.append([])
        shares[-1].append(t)
        done += len(t)
    return shares


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


_MESSAGE = (
    "NER did not finish within the call's time budget; its worker was stopped and the result withheld "
    "(ask for less data, e.g. a narrower query or a smaller page)"
)

_ACTIVE: NerPool | None = None
_USERS = 0
_START_LOCK = threading.Lock()


def start(model: str, size: int | None = None) -> NerPool:
    """This process's pool, started by the first gateway (a test process may run two gateways at
    once: they share it); every ``start`` is matched by one ``stop``."""
    global _ACTIVE, _USERS
    with _START_LOCK:
        if _ACTIVE is None:
            _ACTIVE = NerPool(model, size)
        _USERS += 1
        return _ACTIVE


def active() -> NerPool | None:
    return _ACTIVE


def stop() -> None:
    """Release one ``start``; the last one stops the workers."""
    global _ACTIVE, _USERS
    with _START_LOCK:
        _USERS = max(0, _USERS - 1)
        if _USERS or _ACTIVE is None:
            return
        pool, _ACTIVE = _ACTIVE, None
    pool.close()
