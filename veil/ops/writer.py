"""What operations read from the audit writer (veil/audit/writer.py), in one place.

Why a module of its own: the writer belongs to the audit package and is tuned for throughput;
/readyz and /metrics read it only through ``AuditWriter.health()`` and its public counters, and
time ``record`` from outside, so the writer carries no knowledge of Prometheus.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

from veil.ops.metrics import AUDIT_WRITE_SECONDS


@dataclass(frozen=True)
class WriterStats:
    queued: int  # events waiting for the writer (not yet in a batch)
    running: bool  # the writer's loop (or thread) runs and the writer is not closed
    events: int  # events committed since start
    batches: int  # transactions committed since start


def writer_stats(writer: Any) -> WriterStats:
    queued, running = writer.health()
    return WriterStats(queued, running, int(writer.events), int(writer.batches))


def time_records(writer: Any) -> None:
    """Observe how long every ``record`` waits for its commit (``veil_audit_write_duration_seconds``).

    The wait is what a call pays for durable audit: queue time plus the group commit. Wrapping the
    instance's bound method (once) measures every caller (runner stages, session open and close)
    without a hook inside the writer."""
    if getattr(writer, "_veil_ops_timed", False):
        return
    record = writer.record

    @functools.wraps(record)
    async def timed(event: Any) -> None:
        start = time.perf_counter()
        try:
            await record(event)
        finally:
            AUDIT_WRITE_SECONDS.observe(time.perf_counter() - start)

    writer.record = timed
    writer._veil_ops_timed = True
