"""Optional OpenTelemetry traces: one span per message through the runner, one child per stage.

Off unless ``observability.tracing: true``; then the ``otel`` extra must be installed
(``pip install 'veil[otel]'``) and the exporter is chosen by the standard variables:
``OTEL_TRACES_EXPORTER`` (``otlp``, the default, ``console`` to stderr, or ``none``) and, for
OTLP over HTTP, ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, which
Veil requires to be set, so tracing never sends anything to an address nobody configured.
``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_BSP_*`` work as usual.

Why a tracer provider of Veil's own, never installed globally: the MCP SDK emits spans through
the global provider, and its client spans carry an upstream's error message as the span status,
which may quote personal data. Veil's provider is private, so only Veil's spans are exported, and
theirs stay no-ops. (For the same reason do not run Veil under ``opentelemetry-instrument``.)

Attributes are codes and configured names only (method, origin, via, outcome, stage, error class,
upstream, catalogued tool; see ``veil.ops.labels``), never arguments, results or messages.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Any

from veil.errors import ConfigError

if TYPE_CHECKING:
    from veil.proxy.flow import Flow

log = logging.getLogger(__name__)

_tracer: Any = None  # an opentelemetry Tracer while tracing is on
_provider: Any = None


def enabled() -> bool:
    return _tracer is not None


def setup(on: bool) -> None:
    """Start (or, with ``on`` false, leave off) tracing for this process; idempotent."""
    global _tracer, _provider
    if not on or _tracer is not None:
        return
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        raise ConfigError(
            "observability.tracing is on but OpenTelemetry is not installed: "
            "pip install 'veil[otel]' (or turn tracing off)"
        ) from None
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "veil")})
    provider = TracerProvider(resource=resource)
    if exporter_name == "otlp":
        if not (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
            raise ConfigError(
                "observability.tracing is on with the OTLP exporter but no endpoint is set: "
                "set OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_TRACES_EXPORTER=console|none)"
            )
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif exporter_name == "console":
        # stderr: over stdio, stdout is the MCP channel.
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    elif exporter_name != "none":
        raise ConfigError(f"OTEL_TRACES_EXPORTER={exporter_name!r} is not supported by Veil: use otlp, console or none")
    _provider = provider
    _tracer = provider.get_tracer("veil")
    log.info("tracing on (exporter %s)", exporter_name)


def shutdown() -> None:
    """Flush and stop the exporter (at the end of ``veil serve``)."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


def flow_span(flow: Flow) -> Any:
    if _tracer is None:
        return None
    return _tracer.start_span("veil.flow", attributes={"veil.origin": flow.origin, "veil.via": flow.via})


def stage_span(parent: Any, name: str) -> Any:
    if parent is None:
        return None
    from opentelemetry import trace

    return _tracer.start_span(f"veil.stage.{name}", context=trace.set_span_in_context(parent))


def end_stage(span: Any, refused: bool, error: str | None) -> None:
    if refused:
        from opentelemetry.trace import StatusCode

        span.set_attribute("veil.refused", True)
        span.set_attribute("veil.error", error or "")
        span.set_status(StatusCode.ERROR)  # no description: an error message may quote data
    span.end()


def end_flow(span: Any, method: str, flow: Flow, upstream: str, tool: str, reason: str | None) -> None:
    span.update_name(f"veil {method}")
    attributes = {"veil.method": method, "veil.outcome": flow.outcome}
    if upstream:
        attributes["veil.upstream"] = upstream
    if tool:
        attributes["veil.tool"] = tool
    if flow.stage:
        attributes["veil.refused_at"] = flow.stage
    if reason:
        attributes["veil.reason"] = reason
    span.set_attributes(attributes)
    if flow.error is not None:
        from opentelemetry.trace import StatusCode

        span.set_status(StatusCode.ERROR)
    span.end()
