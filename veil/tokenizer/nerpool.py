"""spaCy NER in worker processes, so one session's heavy result never stalls another's calls.

spaCy's Cython loops hold the GIL for long stretches: NER over a large free-text result run in a
gateway thread stalls the event loop and every other session's detection with it, and a thread
cannot be stopped when the call's time budget runs out. So the gateway owns a pool of worker
processes (``NerPool``), each with the spaCy pipeline loaded once; ``Detector`` sends it batches
of texts and gets entity spans back as ``(start, end, label)`` — nothing else crosses the pipe,
and a worker never logs a text.

A call that passes its deadline, or whose worker dies, kills that worker, starts a replacement
and raises ``TokenizeBudgetExceeded``: detection fails closed, never returns partial spans.

Workers are forked by multiprocessing's fork server (the gateway has threads, so forking the
gateway itself is unsafe; the server is a separate, single-threaded process), which loads spaCy,
Presidio and the model once before it forks any (``veil.tokenizer.ner_preload``): a worker, a
replacement included, starts at once with the model loaded, sharing its pages with its siblings.
Workers are stopped with the gateway. The gateway does not wait for them to load their models: it loads
its own detector meanwhile and serves as soon as that is ready (small payloads never need a
worker); a call that needs NER before the first worker is ready waits for it, and that wait is
not counted against its time budget. If no worker can be started at all, such calls fail closed
and /readyz reports the pool as failed. A worker also exits when its pipe to the gateway closes, so a
killed gateway leaves no worker behind once the worker's current batch is done.

The workers run a large call's pattern passes too (``patterns``): a ``Detector`` for the same
settings is built in each worker in the background (``prepare``) when the gateway's detector is
created, and once a worker has it, a large batch of strings is split over the idle workers that
have it, so pattern detection uses every core as NER does. Until then, or when no such worker is
idle, the caller runs the patterns itself; small payloads never leave the gateway's process.

One pool is active per process (``start`` / ``active`` / ``stop``): the gateway starts it, and
``Detector`` uses it when there is one; unit tests and the CLI's policy tooling, which run one
detection at a time, keep the in-process path.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.forkserver
import os
import pickle
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from veil.errors import TokenizeBudgetExceeded

log = logging.getLogger(__name__)

Ents = list[tuple[int, int, str]]  # per text: (start_char, end_char, spaCy label)
PatternSpans = list[tuple[int, int, str, float]]  # per item: (start, end, entity type, score)

_CONTEXT = multiprocessing.get_context("forkserver")
_PRELOAD = "veil.tokenizer.ner_preload"  # imported by the fork server only, never here
MODEL_ENV = "VEIL_NER_PRELOAD_MODEL"  # the model it preloads
_BATCH = 64
_SPLIT_CHARS = 4000  # a batch is shared among idle workers when it has this many characters per worker
_LOAD_TIMEOUT = 300.0  # loading a model on a busy host
_KEEP_SETTINGS = 2  # detection settings a worker keeps a pattern detector for (a hot reload adds one)


def _serve(conn: Connection, model: str) -> None:
    """A worker's loop: load the pipeline, then answer ``("ner", model, texts)`` with entity
    spans, ``("prepare", key, settings)`` by building a pattern detector for those settings, and
    ``("patterns", key, items, deadline)`` with raw pattern spans per item and the work counted."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the gateway's terminal: the gateway stops us
    os.dup2(2, 1)  # stdout may be the gateway's stdio MCP channel: nothing of ours may land there
    from veil.tokenizer.nlp import load_ner_pipeline

    load_ner_pipeline(model)
    detectors: dict[str, Any] = {}  # settings key -> Detector, the newest _KEEP_SETTINGS
    conn.send(("ready", None))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the gateway is gone
            return
        if msg is None:
            return
        try:
            conn.send(("ok", _answer(msg, detectors)))
        except Exception as exc:  # the class only: an exception message may quote the text
            conn.send(("error", type(exc).__name__))


def _answer(msg: tuple, detectors: dict[str, Any]) -> Any:
    from veil.tokenizer.detector import Detector, TextItem
    from veil.tokenizer.nlp import load_ner_pipeline

    kind = msg[0]
    if kind == "ner":
        nlp, _ = load_ner_pipeline(msg[1])
        return [[(e.start_char, e.end_char, e.label_) for e in doc.ents] for doc in nlp.pipe(msg[2], batch_size=_BATCH)]
    if kind == "prepare":
        _, key, blob = msg
        if key not in detectors:
            detectors[key] = Detector(pickle.loads(blob))
            while len(detectors) > _KEEP_SETTINGS:
                del detectors[next(iter(detectors))]
        return None
    if kind == "patterns":
        _, key, items, deadline = msg
        detector = detectors[key]
        before = Counter(detector.work)
        found = detector.patterns_here([TextItem(text, context) for text, context in items], deadline)
        spans = [[(sp.start, sp.end, sp.entity_type, sp.score) for sp in item] for item in found]
        return spans, dict(detector.work - before)
    raise ValueError("unknown request")


@dataclass(eq=False)
class _Worker:
    process: Any
    conn: Connection
    started: float = field(default_factory=time.monotonic)
    # settings keys it holds a pattern detector for, oldest first: the worker's own cache, mirrored
    prepared: dict[str, None] = field(default_factory=dict)
    ready: bool = False  # its pipeline is loaded (it has been idle once)
    killed: bool = False


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
        self.pattern_calls = 0  # pattern batches sent to workers
        self._settings: dict[str, bytes] = {}  # key -> pickled DetectionSettings, newest last
        # Set once the first worker is ready, or once every worker of the first start failed.
        self._started = threading.Event()
        self._ever_ready = False
        self._spawning = True
        # Starting the fork server waits for its preload (seconds): in the background, so the
        # gateway loads its own detector meanwhile.
        threading.Thread(target=self._spawn_all, name="veil-ner-spawn", daemon=True).start()

    def _spawn_all(self) -> None:
        try:
            _start_fork_server(self.model)
            for _ in range(self.size):
                if self._closed:
                    break
                self._spawn()
        except Exception as exc:
            log.error("could not start the NER worker processes (%s)", type(exc).__name__)
        finally:
            with self._lock:
                self._spawning = False
                none_left = not self._all
            if none_left:  # every worker failed already, or none could be started
                self._started.set()

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
        if self._closed:  # closed while this one started
            self._kill(w)
            return
        threading.Thread(target=self._when_ready, args=(w,), name="veil-ner-start", daemon=True).start()

    def _when_ready(self, w: _Worker) -> None:
        try:
            ok = w.conn.poll(_LOAD_TIMEOUT) and w.conn.recv()[0] == "ready"
            with self._lock:
                wanted = list(self._settings.items())
            for key, blob in wanted:  # a replacement worker gets the pattern detectors the others have
                ok = ok and self._prepare(w, key, blob)
        except (EOFError, OSError):
            ok = False
        if ok and not self._closed:
            w.ready = True
            self._idle.put(w)
            self._ever_ready = True
            self._started.set()
        else:
            if not self._closed:
                log.error("NER worker %s did not start (exit code %s)", w.process.pid, w.process.exitcode)
            self._kill(w)
            with self._lock:
                none_left = not self._all and not self._spawning
            if none_left:  # nobody left to wait for: callers fail closed instead of waiting
                self._started.set()

    def state(self) -> tuple[str, int]:
        """(``starting`` | ``ready`` | ``failed``, workers ready now), for /readyz and /metrics.
        ``failed``: none of the first workers could start, so every call that needs NER fails
        closed."""
        with self._lock:
            ready = sum(1 for w in self._all if w.ready)
            alive = len(self._all)
        if not alive and not self._ever_ready and (self._started.is_set() or self._closed):
            return "failed", 0
        return ("ready" if self._ever_ready else "starting"), ready

    def _wait_started(self) -> float:
        """Wait until a worker has ever been ready (the gateway serves while its workers load
        their models); returns the seconds waited, which the caller's budget does not count.
        Fails closed when no worker could be started."""
        if self._ever_ready:
            return 0.0
        began = time.monotonic()
        self._started.wait(_LOAD_TIMEOUT)
        if not self._ever_ready:
            raise TokenizeBudgetExceeded(
                "NER is unavailable: its worker processes did not start (see Veil's log); the result was withheld"
            )
        return time.monotonic() - began

    def wait_ready(self, timeout: float = _LOAD_TIMEOUT) -> None:
        """Block until every worker has loaded its pipeline (gateway start-up), or raise."""
        end = time.monotonic() + timeout
        while self._idle.qsize() < self.size:
            if time.monotonic() > end or (self._started.is_set() and not self.pids()):
                raise RuntimeError(f"the NER worker processes did not start within {timeout:g} s")
            time.sleep(0.05)

    # -- pattern passes ---------------------------------------------------------------------
    def prepare(self, key: str, blob: bytes) -> None:
        """Have every worker build a pattern detector for the pickled settings ``blob`` (named
        ``key``), in a background thread: no call waits for it, and none uses a worker for
        patterns before it is built. Idempotent."""
        with self._lock:
            if key in self._settings or self._closed:
                return
            self._settings[key] = blob
            while len(self._settings) > _KEEP_SETTINGS:
                del self._settings[next(iter(self._settings))]
        threading.Thread(target=self._prepare_all, args=(key, blob), name="veil-ner-prepare", daemon=True).start()

    def wait_prepared(self, timeout: float = _LOAD_TIMEOUT) -> None:
        """Block until every worker holds a pattern detector for every settings version asked
        for (benchmarks and tests; calls never wait for it), or raise."""
        end = time.monotonic() + timeout
        while True:
            with self._lock:
                done = len(self._all) == self.size and all(set(self._settings) <= w.prepared.keys() for w in self._all)
            if done:
                return
            if time.monotonic() > end:
                raise RuntimeError(f"the NER workers did not build their pattern detectors within {timeout:g} s")
            time.sleep(0.05)

    def prepared(self, key: str) -> bool:
        with self._lock:
            return key in self._settings

    def _prepare_all(self, key: str, blob: bytes) -> None:
        end = time.monotonic() + _LOAD_TIMEOUT
        while not self._closed and time.monotonic() < end:
            with self._lock:
                if not any(key not in w.prepared for w in self._all):
                    return
            try:
                w = self._idle.get(timeout=0.5)
            except queue.Empty:
                continue
            if key in w.prepared:  # wait for the others to come back idle
                self._idle.put(w)
                time.sleep(0.05)
                continue
            try:
                ok = self._prepare(w, key, blob)
            except (EOFError, OSError):
                ok = False
            if ok and not self._closed:
                self._idle.put(w)
            else:
                self._replace(w)

    def _prepare(self, w: _Worker, key: str, blob: bytes) -> bool:
        w.conn.send(("prepare", key, blob))
        if not w.conn.poll(_LOAD_TIMEOUT):
            return False
        kind, _ = w.conn.recv()
        if kind != "ok":
            log.error("NER worker %s could not build the pattern detector", w.process.pid)
            return False
        if key not in w.prepared:  # the worker evicts the same way (``_answer``)
            w.prepared[key] = None
            while len(w.prepared) > _KEEP_SETTINGS:
                del w.prepared[next(iter(w.prepared))]
        return True

    def patterns(
        self, key: str, items: list[tuple[str, str]], deadline: float | None
    ) -> tuple[list[PatternSpans], Counter[str]] | None:
        """Raw pattern spans per ``(text, context)`` item, from the idle workers that hold the
        detector for ``key`` (the batch split by characters among them), with the work they
        counted; None when no such worker is idle (the caller runs the patterns itself). Fails
        closed like ``run``."""
        if self._closed:
            return None
        total = sum(len(t) for t, _ in items)
        want = max(1, min(len(items), total // _SPLIT_CHARS + 1))
        workers: list[_Worker] = []
        others: list[_Worker] = []
        while len(workers) < want:
            try:
                w = self._idle.get_nowait()
            except queue.Empty:
                break
            (workers if key in w.prepared else others).append(w)
        for w in others:
            self._idle.put(w)
        if not workers:
            return None
        bounds = _split_at([len(t) for t, _ in items], len(workers))
        self.pattern_calls += len(workers)
        replies = self._exchange(
            workers, [("patterns", key, items[a:b], deadline) for a, b in bounds], deadline, "pattern detection"
        )
        spans: list[PatternSpans] = []
        work: Counter[str] = Counter()
        for share_spans, share_work in replies:
            spans.extend(share_spans)
            work.update(share_work)
        return spans, work

    def _exchange(self, workers: list[_Worker], messages: list[tuple], deadline: float | None, what: str) -> list[Any]:
        """Send one message to each worker, collect every reply; on a timeout, a dead worker or
        an error every worker of the call is replaced and nothing is returned (fail closed)."""
        replies: list[tuple[str, Any]] = []
        try:
            for w, msg in zip(workers, messages, strict=True):
                try:
                    w.conn.send(msg)
                except OSError:
                    raise _died(w) from None
            for w in workers:
                replies.append(self._receive(w, deadline, what))
        except BaseException:
            for w in workers:
                self._replace(w)
            raise
        for w in workers:
            self._idle.put(w)
        out = []
        for kind, payload in replies:
            if kind != "ok":
                log.error("%s failed in a worker process (%s); the call fails closed", what, payload)
                if payload == "TokenizeBudgetExceeded":
                    raise TokenizeBudgetExceeded(_message(what))
                raise TokenizeBudgetExceeded(f"{what} failed in its worker process; the result was withheld")
            out.append(payload)
        return out

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
        waited = self._wait_started()
        if deadline is not None:
            deadline += waited
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
        out: list[Ents] = []
        for payload in self._exchange(workers, [("ner", model, share) for share in shares], deadline, "NER"):
            out.extend(payload)
        return out

    def _receive(self, w: _Worker, deadline: float | None, what: str) -> tuple[str, Any]:
        try:
            if not w.conn.poll(_remaining(deadline)):
                raise TokenizeBudgetExceeded(_message(what))
            return w.conn.recv()
        except (EOFError, OSError):
            raise _died(w) from None

    def _replace(self, w: _Worker) -> None:
        """Kill a worker that timed out or died and start another in its place."""
        self._kill(w)
        if not self._closed:
            self._spawn()

    def _kill(self, w: _Worker) -> None:
        """Once per worker: ``close`` and a thread still preparing a replacement may both get
        here, and closing its pipe twice would close a descriptor number that may be reused."""
        with self._lock:
            if w.killed:
                return
            w.killed = True
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


def _start_fork_server(model: str) -> None:
    """Launch this process's fork server, if it is not running, preloading ``model``
    (``ner_preload``; the name goes in its environment, set only while it is launched). Only the
    first pool of a process launches it: a later pool with another model gets workers that load
    theirs themselves."""
    with _SERVER_LOCK:
        _CONTEXT.set_forkserver_preload([_PRELOAD])
        before = os.environ.get(MODEL_ENV)
        os.environ[MODEL_ENV] = model
        try:
            multiprocessing.forkserver.ensure_running()
        finally:
            if before is None:
                os.environ.pop(MODEL_ENV, None)
            else:
                os.environ[MODEL_ENV] = before


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


def _split_at(sizes: list[int], n: int) -> list[tuple[int, int]]:
    """(start, end) index bounds of ``n`` consecutive shares of about equal total size (none
    empty, ``n`` at most ``len(sizes)``)."""
    total = sum(sizes)
    bounds: list[tuple[int, int]] = []
    a = done = 0
    for i, size in enumerate(sizes):
        left = len(sizes) - i
        if i > a and len(bounds) < n - 1 and (done >= total * (len(bounds) + 1) / n or left <= n - 1 - len(bounds)):
            bounds.append((a, i))
            a = i
        done += size
    bounds.append((a, len(sizes)))
    return bounds


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


_MESSAGE = (
    "NER did not finish within the call's time budget; its worker was stopped and the result withheld "
    "(ask for less data, e.g. a narrower query or a smaller page)"
)


def _message(what: str) -> str:
    return _MESSAGE.replace("NER", what, 1)


_ACTIVE: NerPool | None = None
_USERS = 0
_START_LOCK = threading.Lock()
_SERVER_LOCK = threading.Lock()


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
