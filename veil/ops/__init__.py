"""Operations: health probes, Prometheus metrics, log format and optional traces.

Why a package apart from the proxy: none of it decides anything about a call. It watches the
runner through one hook (``observe``), reads the audit writer and the gateway's state when asked,
and adds routes in front of the MCP app. Everything it exports is written to carry no payload:
label and attribute values come from ``veil.ops.labels`` (docs/operations.md says what each
endpoint reveals; tests/ops greps all of it for seeded values).

Modules: ``health`` (/healthz, /readyz), ``metrics`` (the registry), ``observe`` (the runner
hook), ``labels`` (bounded, payload-free label values), ``http`` (routes and the metrics
listener), ``logs`` (text or JSON), ``tracing`` (OpenTelemetry, optional), ``writer`` (what is
read from the audit writer).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from veil.ops import logs, tracing

if TYPE_CHECKING:
    from veil.config import VeilConfig
    from veil.ops.health import Monitor
    from veil.proxy.gateway import Gateway

__all__ = ["configure", "running"]


def configure(config: VeilConfig) -> None:
    """Process-wide settings from the config file, before the gateway starts: the log format, and
    tracing (a missing OpenTelemetry install is reported now, naming the extra)."""
    logs.apply_config(config.observability.log_format)
    tracing.setup(config.observability.tracing)


@asynccontextmanager
async def running(gateway: Gateway, monitor: Monitor | None = None) -> AsyncIterator[Monitor]:
    """Everything operations needs while a gateway serves: its gauges exported, audit writes
    timed, the probes' monitor (``monitor``, or a new one), and the metrics listener when one is
    configured."""
    from veil.ops import metrics
    from veil.ops.health import Monitor
    from veil.ops.http import metrics_listener
    from veil.ops.writer import time_records

    configure(gateway.config)
    metrics.attach(gateway)
    time_records(gateway.audit)
    monitor = monitor or Monitor(gateway)
    try:
        with metrics_listener(gateway.config.observability.metrics):
            yield monitor
    finally:
        monitor.close()
