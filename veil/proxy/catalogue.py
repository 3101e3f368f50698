"""The tool catalogue: upstream tools under gateway names, and ``search_tools``.

Upstream tools (and prompts) are exposed under their upstream's prefix, by default ``NAME__``
(two underscores), so an agent sees one server and every name says which system it reaches. A
per-upstream ``prefix`` in the config changes that; an empty prefix lets an unmodified client
or test suite that expects an upstream's own names work. Prefixes are distinct (config
validation), but one may start another (``""`` and ``crm__``): a name then may mean more than one
upstream's tool, and is resolved by asking which of those upstreams has it. A name two upstreams
really both have is a collision: refused when the gateway starts (``veil.proxy.survey``), and left out
of listings and refused by name in a session (an upstream may add tools later).

Policies always name tools ``NAME__TOOL``, whatever the prefix: renaming what agents see never
changes what a rule matches.

``search_tools`` lets an agent discover tools progressively instead of loading every schema up
front.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import mcp_types as types
from mcp.shared.exceptions import MCPError

from veil.errors import ToolNotFound, VeilError

SEPARATOR = "__"
Detail = Literal["name", "summary", "full"]
# Veil's own tools: no upstream tool may be listed under these names.
RESERVED = frozenset({"search_tools", "execute_code"})


@dataclass(frozen=True)
class CatalogueEntry:
    upstream: str
    tool: types.Tool  # the upstream's definition (descriptions already tokenised)
    prefix: str | None = None  # what the agent sees before the tool's name; None: ``NAME__``

    @property
    def name(self) -> str:
        return gateway_name(self.upstream, self.tool.name, self.prefix)


def gateway_name(upstream: str, tool: str, prefix: str | None = None) -> str:
    """The name an agent sees: the upstream's prefix (default ``NAME__``) and the tool's own name."""
    return (f"{upstream}{SEPARATOR}" if prefix is None else prefix) + tool


def candidates(name: str, prefixes: Mapping[str, str]) -> list[tuple[str, str]]:
    """Every (upstream, tool) a gateway name could mean, the longest matching prefix first."""
    found = [(up, name[len(p) :]) for up, p in prefixes.items() if name.startswith(p) and len(name) > len(p)]
    found.sort(key=lambda option: -len(prefixes[option[0]]))
    return found


async def resolve(
    name: str, prefixes: Mapping[str, str], has: Callable[[str, str], Awaitable[bool]], *, kind: str = "tool"
) -> tuple[str, str]:
    """The (upstream, name) a gateway name means, or ToolNotFound naming the name and the fix.

    ``has(upstream, name)`` is asked only when prefixes overlap; an upstream that cannot be asked
    does not count. Two upstreams that both have the name: refused, naming both (never guessed).
    """
    options = candidates(name, prefixes)
    if not options:
        shown = ", ".join(repr(p) for p in prefixes.values()) or "none: no upstream is configured"
        raise ToolNotFound(
            f"unknown {kind} '{name}': gateway {kind}s start with an upstream's prefix ({shown}); "
            f"use {'search_tools or tools/list' if kind == 'tool' else 'prompts/list'} to see them"
        )
    if len(options) == 1:
        return options[0]
    found = []
    for upstream, own in options:
        try:
            if await has(upstream, own):
                found.append((upstream, own))
        except (VeilError, MCPError):  # cannot be asked: does not count
            continue
    if len(found) > 1:
        raise ToolNotFound(collision_message(name, found, kind))
    if not found:
        raise ToolNotFound(
            f"unknown {kind} '{name}': none of the upstreams "
            f"{', '.join(repr(up) for up, _ in options)} whose prefix it starts with has it"
        )
    return found[0]


def collision_message(name: str, owners: list[tuple[str, str]], kind: str = "tool") -> str:
    owned = " and ".join(f"upstream '{up}' ({kind} '{own}')" for up, own in owners)
    return (
        f"{kind} name '{name}' is ambiguous: {owned} both appear under it. "
        f"Give one of these upstreams another 'prefix' in the config."
    )


def visible(entries: list[CatalogueEntry]) -> tuple[list[CatalogueEntry], dict[str, str]]:
    """The entries an agent may see, without names that collide (with each other or Veil's own
    tools); each collision is reported under the name, naming both upstreams."""
    by_name: dict[str, list[CatalogueEntry]] = {}
    for entry in entries:
        by_name.setdefault(entry.name, []).append(entry)
    shown: list[CatalogueEntry] = []
    problems: dict[str, str] = {}
    for name, same in by_name.items():
        if name in RESERVED:
            problems[name] = (
                f"upstream '{same[0].upstream}' has a tool '{same[0].tool.name}' listed as '{name}', "
                "which is Veil's own tool; give the upstream a 'prefix' in the config"
            )
        elif len(same) > 1:
            problems[name] = collision_message(name, [(e.upstream, e.tool.name) for e in same])
        else:
            shown.append(same[0])
    return shown, problems


def overlapping(prefixes: Mapping[str, str]) -> set[str]:
    """Upstreams whose names may collide: one's prefix starts another's (or a reserved name)."""
    out: set[str] = set()
    for a, pa in prefixes.items():
        if any(reserved.startswith(pa) for reserved in RESERVED):
            out.add(a)
        for b, pb in prefixes.items():
            if a != b and pb.startswith(pa):
                out.update((a, b))
    return out


def _words(text: str) -> set[str]:
    return {w for w in re.split(r"[^a-z0-9]+", text.lower()) if w}


def _summary(description: str | None) -> str:
    text = (description or "").strip()
    first = re.split(r"(?<=[.!?])\s|\n", text, maxsplit=1)[0]
    return first[:200]


def search(entries: list[CatalogueEntry], query: str, detail: Detail = "summary", limit: int = 20) -> list[dict]:
    """Rank tools by how many query words appear in their name and description.

    Deliberately simple and deterministic: an agent asks again with other words if needed.
    An empty query lists everything.
    """
    wanted = _words(query)
    scored: list[tuple[float, str, CatalogueEntry]] = []
    for entry in entries:
        name_words = _words(entry.name.replace(SEPARATOR, " "))
        text_words = _words(entry.tool.description or "")
        props = _words(" ".join((entry.tool.input_schema or {}).get("properties", {}).keys()))
        if wanted:
            score = 3 * len(wanted & name_words) + len(wanted & text_words) + 0.5 * len(wanted & props)
            score += sum(1 for w in wanted if w in entry.name.lower())  # substrings: "cust" finds customers
            if score == 0:
                continue
        else:
            score = 0
        scored.append((-score, entry.name, entry))
    scored.sort(key=lambda item: (item[0], item[1]))
    return [describe(entry, detail) for _, _, entry in scored[:limit]]


def describe(entry: CatalogueEntry, detail: Detail) -> dict[str, Any]:
    if detail == "name":
        return {"name": entry.name}
    if detail == "summary":
        return {"name": entry.name, "summary": _summary(entry.tool.description)}
    out: dict[str, Any] = {
        "name": entry.name,
        "description": entry.tool.description or "",
        "inputSchema": entry.tool.input_schema,
    }
    if entry.tool.output_schema:
        out["outputSchema"] = entry.tool.output_schema
    return out


SEARCH_TOOLS = types.Tool(
    name="search_tools",
    description=(
        "Find tools of the systems behind this gateway without loading every schema. "
        "query: words to look for in tool names and descriptions (empty: all tools). "
        "detail: 'name' (names only), 'summary' (name and one line), or 'full' (with input schema)."
    ),
    input_schema={
        "type": "object",
        "properties": {
            "query": {"type": "string", "description": "Words to search for."},
            "detail": {"type": "string", "enum": ["name", "summary", "full"], "default": "summary"},
            "limit": {"type": "integer", "minimum": 1, "maximum": 200, "default": 20},
        },
        "required": ["query"],
        "additionalProperties": False,
    },
)
