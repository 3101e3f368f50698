"""``/healthz`` (liveness) and ``/readyz`` (readiness) for ``veil serve --http``.

Why two: an orchestrator restarts a process whose liveness fails and only stops routing to one
whose readiness fails. Liveness is therefore about this process alone (the event loop runs, its
heartbeat is recent), so a database outage never restarts every replica at once; readiness is
about whether a call could be served and audited now (the database answers, the audit writer
runs and its queue moves, the NER worker processes have not all failed to start) and whether
Veil is staying: from the first SIGTERM on it says ``stopping``, so the load balancer stops
routing while calls in flight drain.

Both are unauthenticated (probes carry no credentials) and reveal only what docs/operations.md
lists: status words, check names, error class names, counts, and the configured upstream names
with their last observed state. No database URL, host, user or error message (those can name
hosts and roles), no version, nothing from any call.

Upstream state never makes Veil unready: one upstream down leaves the others working, and every
replica reaches the same upstreams, so taking replicas out of rotation would not help.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import anyio
import sqlalchemy as sa

from veil.ops.metrics import LOOP_LAG
from veil.ops.observe import upstream_states
from veil.ops.writer import writer_stats
from veil.tokenizer import nerpool

if TYPE_CHECKING:
    from veil.proxy.gateway import Gateway

HEARTBEAT_S = 0.5
STALE_S = 10.0  # no heartbeat for this long: the loop is blocked or the heartbeat died
DB_TIMEOUT_S = 2.0  # connect and SELECT 1, each probe
CACHE_S = 1.0  # probes within this interval share one database check
STUCK_S = 10.0  # audit events queued and none committed for this long: the writer is stuck


class Monitor:
    """The probes' state for one gateway: the loop heartbeat, the cached database check and the
    audit writer's progress."""

    def __init__(self, gateway: Gateway, stop: Any = None) -> None:
        self.gw = gateway
        self.stop = stop  # veil.proxy.lifecycle.Stop: once requested, not ready (drain)
        self.started = time.monotonic()
        self.beat = time.monotonic()
        self.lag = 0.0
        self._engine: sa.Engine | None = None
        self._db_lock = anyio.Lock()
        self._db_result: tuple[float, dict[str, Any]] | None = None
        self._events_seen = -1
        self._progress_at = time.monotonic()

    # -- liveness ----------------------------------------------------------------------------

    async def heartbeat(self) -> None:
        """Runs forever in the server's task group: how late does the loop wake us?"""
        while True:
            before = time.monotonic()
            await anyio.sleep(HEARTBEAT_S)
            now = time.monotonic()
            self.lag = max(0.0, now - before - HEARTBEAT_S)
            self.beat = now
            LOOP_LAG.set(self.lag)

    def liveness(self) -> tuple[int, dict[str, Any]]:
        since = time.monotonic() - self.beat
        alive = since < STALE_S
        body = {
            "status": "ok" if alive else "stalled",
            "uptime_s": round(time.monotonic() - self.started, 1),
            "event_loop_lag_ms": round(self.lag * 1000, 1),
            "heartbeat_age_s": round(since, 1),
        }
        return (200 if alive else 503), body

    # -- readiness ---------------------------------------------------------------------------

    async def readiness(self) -> tuple[int, dict[str, Any]]:
        database = await self._database()
        audit = self._audit()
        ner = self._ner()
        upstreams = {name: seen.state for name, seen in upstream_states(self.gw).items()}
        stopping = self.stop is not None and self.stop.draining
        ready = database["ok"] and audit["ok"] and ner["ok"] and not stopping
        body = {
            "status": "stopping" if stopping else "ready" if ready else "not ready",
            "checks": {"database": database, "audit_writer": audit, "ner_workers": ner},
            "upstreams": upstreams,
        }
        return (200 if ready else 503), body

    def _check_db(self) -> None:
        if self._engine is None:
            # A connection per probe (no pool), with its own timeouts: a probe neither waits for
            # the gateway's busy pool nor keeps a connection of its own open between probes.
            self._engine = sa.create_engine(
                self.gw.engine.url,
                poolclass=sa.pool.NullPool,
                connect_args={"connect_timeout": int(DB_TIMEOUT_S), "options": "-c statement_timeout=2000"},
            )
        with self._engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    async def _database(self) -> dict[str, Any]:
        async with self._db_lock:  # a burst of probes makes one check
            if self._db_result is not None and time.monotonic() - self._db_result[0] < CACHE_S:
                return self._db_result[1]
            start = time.perf_counter()
            result: dict[str, Any]
            try:
                with anyio.fail_after(DB_TIMEOUT_S + 1):
                    await anyio.to_thread.run_sync(self._check_db, abandon_on_cancel=True)
            except TimeoutError:
                result = {"ok": False, "error": "timeout"}
            except Exception as exc:  # the message can name hosts and roles: the class only
                result = {"ok": False, "error": type(exc).__name__}
            else:
                result = {"ok": True, "latency_ms": round((time.perf_counter() - start) * 1000, 1)}
            self._db_result = (time.monotonic(), result)
            return result

    def _audit(self) -> dict[str, Any]:
        stats = writer_stats(self.gw.audit)
        now = time.monotonic()
        if stats.events != self._events_seen or stats.queued == 0:
            self._events_seen, self._progress_at = stats.events, now
        stuck = stats.queued > 0 and now - self._progress_at > STUCK_S
        ok = stats.running and not stuck
        out: dict[str, Any] = {"ok": ok, "running": stats.running, "queued": stats.queued}
        if stuck:
            out["error"] = f"no event committed for {now - self._progress_at:.0f}s with events queued"
        return out

    @staticmethod
    def _ner() -> dict[str, Any]:
        """The NER worker pool: still ``starting`` is ready (Veil serves while its workers load
        their models; a call that needs one waits for it), ``failed`` is not (every call that
        needs NER would fail closed)."""
        pool = nerpool.active()
        if pool is None:
            return {"ok": True, "state": "off"}
        state, ready = pool.state()
        return {"ok": state != "failed", "state": state, "ready": ready, "size": pool.size}

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


async def respond(send: Any, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body, sort_keys=True).encode()
    headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
