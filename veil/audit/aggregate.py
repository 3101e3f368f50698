"""Authentication failures, aggregated: one ``auth.failed`` row per source, reason and minute.

Why: a client hammering the HTTP endpoint with bad credentials must not be able to grow an
append-only trail without bound (300 bad requests used to write 300 undeletable rows). The first
failure of a (source, reason) in a minute is written at once, durably, so an alert sees it
immediately; further failures in that minute are only counted, and one more row carrying their
count (``detail.count``, ``detail.repeats: true``) is written when the minute is over (by a timer),
or when the writer closes. So a minute of flood costs at most two rows per source and reason, and
``sum(detail.count)`` over ``auth.failed`` rows is the number of refused requests.

Sources beyond ``max_sources`` in one minute share the source ``"(other)"``, so many addresses
cannot bloat the trail either. Rows carry the client address, the stable reason code and its
message (which never holds the presented credential), never request data.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from veil.audit import events as ev
from veil.errors import AuditUnavailable

if TYPE_CHECKING:
    from veil.audit.writer import AuditWriter

log = logging.getLogger(__name__)

OTHER_SOURCE = "(other)"


@dataclass
class _Bucket:
    minute: int
    source: str
    reason: str
    message: str
    path: str | None
    policy_version: str | None
    repeats: int = 0


class AuthFailures:
    """Counts failures per (source, reason, minute) and writes them through an :class:`AuditWriter`."""

    def __init__(self, writer: AuditWriter, *, max_sources: int = 1000, clock: Callable[[], float] = time.time) -> None:
        self.writer = writer
        self.max_sources = max_sources
        self.clock = clock
        self._buckets: dict[tuple[str, str, int], _Bucket] = {}
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def _event(self, bucket: _Bucket, count: int, *, repeats: bool) -> ev.AuditEvent:
        start = datetime.fromtimestamp(bucket.minute * 60, UTC)
        detail = {
            "reason": bucket.message,
            "code": bucket.reason,
            "path": bucket.path,
            "client": bucket.source,
            "count": count,
            "minute": start.strftime("%Y-%m-%dT%H:%MZ"),
        }
        if repeats:
            detail["repeats"] = True
        return ev.AuditEvent(
            kind=ev.AUTH_FAILED, outcome=ev.DENIED, policy_version=bucket.policy_version, detail=detail
        )

    async def failed(
        self,
        *,
        source: str,
        reason: str,
        message: str,
        path: str | None = None,
        policy_version: str | None = None,
    ) -> None:
        """Record one refused request; returns once it is durable or counted in a pending row."""
        minute = int(self.clock() // 60)
        with self._lock:
            sources = {k[0] for k in self._buckets if k[2] == minute}
            if source not in sources and len(sources) >= self.max_sources:
                source = OTHER_SOURCE
            key = (source, reason, minute)
            bucket = self._buckets.get(key)
            if bucket is not None:
                bucket.repeats += 1
                return
            bucket = _Bucket(minute, source, reason, message, path, policy_version)
            self._buckets[key] = bucket
            self._arm()
        await self.writer.record(self._event(bucket, 1, repeats=False))

    def _arm(self) -> None:
        """One timer for the end of the earliest open minute (called holding the lock)."""
        if self._timer is not None or not self._buckets:
            return
        due = (min(b.minute for b in self._buckets.values()) + 1) * 60 - self.clock() + 0.05
        self._timer = threading.Timer(max(0.0, due), self._tick)
        self._timer.daemon = True
        self._timer.start()

    def _tick(self) -> None:
        with self._lock:
            self._timer = None
        self.flush()
        with self._lock:
            self._arm()

    def flush(self, *, everything: bool = False) -> int:
        """Write the pending counts of minutes that are over (all of them with ``everything``);
        returns the number of rows written."""
        now = int(self.clock() // 60)
        with self._lock:
            done = [k for k in self._buckets if everything or k[2] < now]
            buckets = [self._buckets.pop(k) for k in done]
        written = 0
        for bucket in buckets:
            if not bucket.repeats:
                continue
            try:
                self.writer.record_sync(self._event(bucket, bucket.repeats, repeats=True))
                written += 1
            except AuditUnavailable as exc:
                log.error("could not write %d aggregated auth.failed events: %s", bucket.repeats, exc)
        return written

    def close(self) -> None:
        """Stop the timer and write every pending count (the writer closes right after)."""
        with self._lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self.flush(everything=True)
