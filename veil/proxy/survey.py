"""What Veil learns from its upstreams once, at start: their tool names (when prefixes overlap, to
refuse a name two upstreams would share) and their ``instructions``, which Veil relays to agents.

Why at start: an agent's ``initialize`` is answered before any of its upstream connections opens,
and the instructions are part of that answer; a name collision is a configuration mistake best
reported before anyone connects. Each upstream is asked once, all in parallel, over a connection
of its own that is closed at once. An upstream that cannot be reached now is skipped with a
warning (its instructions are missing until Veil restarts; sessions still refuse colliding names).

Instructions come from an upstream, so they are tokenised like anything else it sends, in a scope
of their own (``gateway:instructions``: their tokens resolve nowhere else), and each is set under
a heading naming the upstream and its tool prefix, after Veil's own text.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import mcp_types as types

from veil.errors import ConfigError
from veil.proxy.catalogue import CatalogueEntry, overlapping, visible
from veil.tokenizer import Scope

if TYPE_CHECKING:
    from veil.proxy.gateway import Gateway

log = logging.getLogger(__name__)

INSTRUCTIONS_SCOPE = Scope("gateway:instructions")
SURVEY_TIMEOUT_S = 15.0  # per upstream, at most; a slow upstream only loses its instructions
OWN = (
    "Veil gateway: the tools of the systems behind it carry each system's prefix (see each system "
    "below; by default UPSTREAM__TOOL). Personal data is replaced by tokens such as [EMAIL_ADDRESS_1]; "
    "use them as values and Veil substitutes the real value where policy allows. Use search_tools to "
    "find tools and execute_code to process large data next to it."
)


@dataclass
class _Answer:
    instructions: str | None = None
    tools: list[types.Tool] = field(default_factory=list)


class _Mute:
    """The relay of a start-up connection: no agent is there to receive anything."""

    async def on_log(self, upstream: str, params: Any) -> None:
        return None

    async def on_notification(self, upstream: str, notification: Any) -> None:
        return None

    async def on_sampling(self, upstream: str, params: Any) -> types.ErrorData:
        return types.ErrorData(code=types.METHOD_NOT_FOUND, message="veil is starting; no agent is connected")

    async def on_elicitation(self, upstream: str, params: Any) -> types.ErrorData:
        return types.ErrorData(code=types.METHOD_NOT_FOUND, message="veil is starting; no agent is connected")


async def _ask(gateway: Gateway, upstream: str, names: bool, answers: dict[str, _Answer]) -> None:
    from veil.proxy.upstreams import UpstreamConnection

    cfg = gateway.config
    timeout_s = min(cfg.limits.upstream_timeout_s, SURVEY_TIMEOUT_S)
    conn = UpstreamConnection(
        upstream,
        cfg.upstreams[upstream],
        _Mute(),
        gateway.task_group,
        log_dir=cfg.data_dir / "logs",
        timeout_s=timeout_s,
        http=gateway.upstream_http,
    )
    try:
        client = await conn.client()
        answer = _Answer(instructions=client.instructions)
        if names:
            answer.tools = (await conn.request("tools/list", lambda c: c.list_tools())).tools
        answers[upstream] = answer
    except Exception as exc:  # unreachable now: skipped, and said so
        log.warning("upstream '%s' was not reachable at start (%s)", upstream, type(exc).__name__)
    finally:
        with anyio.CancelScope(shield=True):
            await conn.aclose(wait=True)  # its process is gone before Veil serves anyone


async def survey(gateway: Gateway) -> str:
    """Ask every upstream once; refuse colliding names (ConfigError naming both upstreams and the
    tool); return the instructions agents get: Veil's own, then each upstream's, tokenised."""
    cfg = gateway.config
    prefixes = cfg.prefixes()
    overlap = overlapping(prefixes)
    answers: dict[str, _Answer] = {}
    async with anyio.create_task_group() as tg:
        for upstream in cfg.upstreams:
            tg.start_soon(_ask, gateway, upstream, upstream in overlap, answers)
    entries = [
        CatalogueEntry(upstream, tool, prefixes[upstream])
        for upstream, answer in answers.items()
        for tool in answer.tools
    ]
    _, problems = visible(entries)
    if problems:
        raise ConfigError("; ".join(problems[name] for name in sorted(problems)))
    parts = [OWN]
    for upstream in cfg.upstreams:  # config order, so the text is stable
        text = answers[upstream].instructions if upstream in answers else None
        if not text or not text.strip():
            continue
        tokenised = await gateway.in_thread(gateway.tokenizer.tokenize, text.strip(), INSTRUCTIONS_SCOPE, upstream)
        shown = prefixes[upstream] or "no prefix: its own names"
        parts.append(f"## {upstream} (tools and prompts: {shown})\n{tokenised.value}")
    return "\n\n".join(parts)
