"""The tool catalogue: upstream tools under gateway names, and ``search_tools``.

Upstream tools are exposed as ``NAME__TOOL`` (two underscores) so an agent sees one server and
every name says which system it reaches. ``search_tools`` lets an agent discover tools
progressively instead of loading every schema up front.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import mcp_types as types

from veil.errors import ToolNotFound

SEPARATOR = "__"
Detail = Literal["name", "summary", "full"]


@dataclass(frozen=True)
class CatalogueEntry:
    upstream: str
    tool: types.Tool  # the upstream's definition (descriptions already tokenised)

    @property
    def name(self) -> str:
        return gateway_name(self.upstream, self.tool.name)


def gateway_name(upstream: str, tool: str) -> str:
    return f"{upstream}{SEPARATOR}{tool}"


def split_name(name: str, upstreams: set[str] | frozenset[str]) -> tuple[str, str]:
    """``crm__find_customers`` -> (``crm``, ``find_customers``), or ToolNotFound naming the tool."""
    upstream, sep, tool = name.partition(SEPARATOR)
    if not sep or not tool:
        raise ToolNotFound(
            f"unknown tool '{name}': gateway tools are named UPSTREAM__TOOL "
            "(use search_tools or tools/list to see them)"
        )
    if upstream not in upstreams:
        raise ToolNotFound(f"unknown tool '{name}': no upstream named '{upstream}' is configured")
    return upstream, tool


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
