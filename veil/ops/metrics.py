"""Prometheus metrics: one registry per process, filled by the runner hook (``veil.ops.observe``)
and by a collector that reads gauges from the gateways at scrape time.

Why a registry of Veil's own instead of prometheus-client's global one: what is exported is then
exactly what this module declares (plus the process collector), which the documentation test
(tests/ops/test_docs.py) compares with docs/operations.md, and no library that happens to
register a metric globally can put its labels next to Veil's.

Every label value comes from ``veil.ops.labels``: names from code or configuration, never from a
payload. Gauges that describe state (audit queue, sessions, sandbox pool, upstreams) are read when
scraped, so nothing on the hot path updates them.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from veil.proxy.gateway import Gateway

# No ``*_created`` series: they double the exposition for a start time nobody alerts on.
disable_created_metrics()
REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)

# Stage times are mostly sub-millisecond (access, audit with group commit) up to seconds
# (upstream exchange, NER on a large result, execute_code).
_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

CALLS = Counter(
    "veil_calls",
    "Messages through the runner, by MCP method, outcome (ok, denied, error), upstream and tool.",
    ["method", "outcome", "upstream", "tool"],
    registry=REGISTRY,
)
CALL_SECONDS = Histogram(
    "veil_call_duration_seconds",
    "Time through every runner stage, by MCP method.",
    ["method"],
    buckets=_STAGE_BUCKETS,
    registry=REGISTRY,
)
STAGE_SECONDS = Histogram(
    "veil_stage_duration_seconds",
    "Time in each runner stage (authenticate ... audit_outcome).",
    ["stage"],
    buckets=_STAGE_BUCKETS,
    registry=REGISTRY,
)
ENTITIES = Counter(
    "veil_entities_tokenised",
    "Values replaced by tokens in what upstreams returned, by entity type.",
    ["entity_type"],
    registry=REGISTRY,
)
DENIALS = Counter(
    "veil_denials",
    "Messages refused by policy, identity or token checks, by the stage that refused and the reason.",
    ["stage", "reason"],
    registry=REGISTRY,
)
AUDIT_WRITE_SECONDS = Histogram(
    "veil_audit_write_duration_seconds",
    "Time from handing an audit event to the writer until it is committed (queue wait and commit).",
    buckets=_STAGE_BUCKETS,
    registry=REGISTRY,
)
HTTP_RESPONSES = Counter(
    "veil_http_responses",
    "HTTP responses of the MCP listener, by endpoint (mcp, healthz, readyz, metrics, console, other) and status.",
    ["endpoint", "status"],
    registry=REGISTRY,
)
LOOP_LAG = Gauge(
    "veil_event_loop_lag_seconds",
    "How late the event loop ran the last liveness heartbeat (a blocked loop stalls every agent).",
    registry=REGISTRY,
)

_gateways: weakref.WeakSet[Gateway] = weakref.WeakSet()


def attach(gateway: Gateway) -> None:
    """Export this gateway's state gauges; idempotent, and forgotten when the gateway is."""
    _gateways.add(gateway)


class GatewayCollector(Collector):
    """Reads queue depth, sessions, sandbox pool and upstream state from attached gateways."""

    def collect(self) -> Iterator[Metric]:
        from veil.ops.observe import upstream_states
        from veil.ops.writer import writer_stats

        depth = GaugeMetricFamily("veil_audit_queue_depth", "Audit events waiting for the writer (not yet in a batch).")
        up = GaugeMetricFamily("veil_audit_writer_up", "1 when the audit writer runs (its event loop or thread).")
        written = CounterMetricFamily("veil_audit_events_written", "Audit events committed by the writer.")
        batches = CounterMetricFamily("veil_audit_batches", "Audit transactions committed (group commit).")
        sessions = GaugeMetricFamily("veil_sessions_active", "Open agent sessions.")
        pool = GaugeMetricFamily("veil_sandbox_pool_ready", "Warm sandbox interpreters waiting for code.")
        running = GaugeMetricFamily("veil_sandbox_running", "Sandbox interpreters bound to a session.")
        state = GaugeMetricFamily(
            "veil_upstream_state",
            "1 for each upstream's last observed state (up, down, unknown).",
            labels=["upstream", "state"],
        )
        totals: dict[str, float] = {"depth": 0, "up": 0, "written": 0, "batches": 0, "sessions": 0}
        sandbox = {"pool": 0.0, "running": 0.0}
        for gw in list(_gateways):
            audit = getattr(gw, "audit", None)
            if audit is not None:
                stats = writer_stats(audit)
                totals["depth"] += stats.queued
                totals["up"] += 1 if stats.running else 0
                totals["written"] += stats.events
                totals["batches"] += stats.batches
            totals["sessions"] += len(getattr(gw, "sessions", {}))
            manager = getattr(gw, "sandbox", None)
            if manager is not None:
                sandbox["pool"] += manager.pool_ready
                sandbox["running"] += len(manager.live_sessions())
            for name, seen in upstream_states(gw).items():
                for option in ("up", "down", "unknown"):
                    state.add_metric([name, option], 1.0 if seen.state == option else 0.0)
        depth.add_metric([], totals["depth"])
        up.add_metric([], totals["up"])
        written.add_metric([], totals["written"])
        batches.add_metric([], totals["batches"])
        sessions.add_metric([], totals["sessions"])
        pool.add_metric([], sandbox["pool"])
        running.add_metric([], sandbox["running"])
        yield from (depth, up, written, batches, sessions, pool, running, state)


REGISTRY.register(GatewayCollector())


class Timer:
    """``with Timer(histogram):`` observes the block's wall time (perf_counter)."""

    def __init__(self, histogram: Any) -> None:
        self._histogram = histogram
        self._start = 0.0

    def __enter__(self) -> Timer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self._histogram.observe(time.perf_counter() - self._start)
