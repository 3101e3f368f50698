"""The runner's one operations hook: times each stage of a flow, counts the flow when it ends,
opens trace spans when tracing is on, and notes whether its upstream answered.

Why one hook in the runner rather than counters in each stage: every MCP message takes the
runner's stages (veil/proxy/runner.py), so this sees everything once, in stage order, with the
outcome each stage left on the flow; stages stay free of operations code. It reads the flow only
for codes and names (method, stage, outcome, error class, configured upstream, catalogued tool,
entity types) and passes each through ``veil.ops.labels``: never arguments, results or messages.

Usage in the runner::

    watch = observe(gateway, flow)
    for stage in order:
        with watch.stage(stage.name):
            await step(stage, flow)
    watch.done()
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from veil.audit import events as ev
from veil.errors import UpstreamError
from veil.ops import labels, tracing
from veil.ops.metrics import CALL_SECONDS, CALLS, DENIALS, ENTITIES, STAGE_SECONDS
from veil.proxy.catalogue import candidates

if TYPE_CHECKING:
    from veil.proxy.flow import Flow
    from veil.proxy.gateway import Gateway

_ADMIT = "admit"
_EXCHANGE = "exchange"

# Label children resolved once per label combination (``labels()`` takes a lock and builds a
# tuple on every call); the combinations are bounded by veil.ops.labels, so are these.
_stage_timers: dict[str, Any] = {}
_children: dict[tuple[Any, ...], Any] = {}


def _child(metric: Any, *values: str) -> Any:
    key = (metric, *values)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*values)
    return child


@dataclass
class UpstreamSeen:
    """An upstream's last observed state: ``up`` (it answered), ``down`` (the connection failed)
    or ``unknown`` (no message has gone to it since start). Passive: nothing is sent to learn it."""

    state: str = "unknown"


_upstreams: weakref.WeakKeyDictionary[Any, dict[str, UpstreamSeen]] = weakref.WeakKeyDictionary()


def upstream_states(gateway: Any) -> dict[str, UpstreamSeen]:
    """Every configured upstream's last observed state, in config order."""
    seen = _upstreams.setdefault(gateway, {})
    return {name: seen.setdefault(name, UpstreamSeen()) for name in gateway.config.upstreams}


def _note_upstream(gateway: Any, name: str, state: str) -> None:
    _upstreams.setdefault(gateway, {}).setdefault(name, UpstreamSeen()).state = state


class Watch:
    """One flow's observation: stage timings, then one count when the flow is done."""

    __slots__ = ("_admitted", "_exchanged", "_flow", "_gw", "_name", "_span", "_stage_span", "_start")

    def __init__(self, gateway: Gateway, flow: Flow) -> None:
        self._gw = gateway
        self._flow = flow
        self._admitted = False
        self._exchanged = False
        self._span = tracing.flow_span(flow)
        self._stage_span: Any = None
        self._name = ""
        self._start = 0.0

    def stage(self, name: str) -> Watch:
        """``with watch.stage(name):`` around one stage (stages run one after another, so the
        watch itself is the context manager: no generator per stage on the hot path)."""
        self._name = name
        return self

    def __enter__(self) -> None:
        self._stage_span = tracing.stage_span(self._span, self._name) if self._span is not None else None
        self._start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        elapsed = time.perf_counter() - self._start
        name = self._name
        timer = _stage_timers.get(name)
        if timer is None:
            timer = _stage_timers[name] = STAGE_SECONDS.labels(name)
        timer.observe(elapsed)
        flow = self._flow
        refused_here = flow.error is not None and flow.stage == name
        if name == _ADMIT and not refused_here:
            self._admitted = True
        elif name == _EXCHANGE:
            self._exchanged = True
        if self._stage_span is not None:
            tracing.end_stage(self._stage_span, refused_here, type(flow.error).__name__ if refused_here else None)

    def done(self) -> None:
        """Count the finished flow (called once, after its last stage)."""
        flow = self._flow
        configured = self._gw.config.upstreams
        upstream = labels.upstream(flow.target.upstream, configured)
        tool = ""
        if flow.target.kind in ("tool", "veil") and self._admitted:  # found in the catalogue, or Veil's own
            tool = labels.tool_name(flow.target.name)
        method = labels.method(flow.method)
        _child(CALLS, method, flow.outcome, upstream, tool).inc()
        _child(CALL_SECONDS, method).observe(time.perf_counter() - flow.started)
        for kind, count in flow.entities.items():
            if count > 0:
                _child(ENTITIES, labels.entity_type(kind)).inc(count)
        reason = None
        if flow.error is not None:
            reason = labels.reason(getattr(flow.error, "reason", None) or type(flow.error).__name__)
            if flow.outcome == ev.DENIED:
                DENIALS.labels(flow.stage or "", reason).inc()
        self._upstream_state(upstream)
        if self._span is not None:
            tracing.end_flow(self._span, method, flow, upstream, tool, reason)

    def _upstream_state(self, upstream: str) -> None:
        flow = self._flow
        if isinstance(flow.error, UpstreamError) and "upstream_code" not in flow.detail:
            # No answer (unreachable, died, timed out). Refused while resolving a tool name, the
            # flow names no upstream yet: the one upstream whose prefix the name has is meant.
            if not upstream and flow.method == "tools/call":
                options = candidates(str(getattr(flow.params, "name", "")), self._gw.config.prefixes())
                upstream = options[0][0] if len(options) == 1 else ""
            if upstream:
                _note_upstream(self._gw, upstream, "down")
        elif upstream and self._admitted and self._exchanged and flow.origin == "agent":
            _note_upstream(self._gw, upstream, "up")  # it answered (an error answer counts)


def observe(gateway: Gateway, flow: Flow) -> Watch:
    return Watch(gateway, flow)
