"""The sandbox against a real upstream: ``examples/crm_server.py`` as a stdio MCP subprocess.

The code filters the 400-customer export inside the sandbox and writes a note that quotes a token
in an f-string; ``call_tool`` untokenises arguments and tokenises results the way the gateway does,
and the CRM's call log proves the upstream received the real value while the sandbox never saw it.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import CATALOGUE, ROOT, TokenisedCrm, run
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters

from veil.proxy.code_mode import result_value


@pytest.mark.req("sandbox:data-path")
def test_export_filter_and_write_back_through_a_real_crm(make_manager, tmp_path: Path):
    call_log = tmp_path / "crm-calls.jsonl"
    tokens = TokenisedCrm(n=400)  # same seed as the server's data: the same records, tokenised
    real_by_token = {token: real for real, token in tokens.vault.items()}
    code = """
from servers import crm
customers = crm.export_customers()
gold = [c for c in customers if c["segment"] == "gold" and c["lifetime_value"] > 100000]
top = max(gold, key=lambda c: c["lifetime_value"])
crm.add_note(customer_id=top["id"], note=f"VIP: call {top['full_name']} back")
(len(customers), len(gold), top["id"], top["full_name"])
"""

    async def body() -> Any:
        params = StdioServerParameters(
            command=sys.executable,
            args=[str(ROOT / "examples" / "crm_server.py")],
            env={"CRM_CALL_LOG": str(call_log), "CRM_RECORDS": "400", "CRM_SEED": "7"},
        )
        async with Client(params) as client:

            async def call_tool(upstream: str, tool: str, args: dict[str, Any]) -> Any:
                real_args = json.loads(_untokenise(json.dumps(args), real_by_token))
                result = await client.call_tool(tool, real_args)
                return _tokenise(result_value(result), tokens.vault)

            async with make_manager() as manager:
                return await manager.execute("real", code, catalogue=CATALOGUE, call_tool=call_tool)

    result = run(body())
    assert result.outcome == "ok", result.stderr
    n, n_gold, top_id, top_name = ast.literal_eval(result.result)
    real_top = next(c for c in tokens.real if c["id"] == top_id)
    assert n == 400 and n_gold > 0
    assert top_name == tokens.vault[real_top["full_name"]]  # the sandbox saw only the token
    logged = [json.loads(line) for line in call_log.read_text().splitlines()]
    assert logged[-1]["tool"] == "add_note"
    assert logged[-1]["arguments"] == {"customer_id": top_id, "note": f"VIP: call {real_top['full_name']} back"}
    assert real_top["full_name"] not in (result.stdout + result.stderr + (result.result or ""))


def _untokenise(text: str, real_by_token: dict[str, str]) -> str:
    """Tokens are distinctive (``[PERSON_3]``), so they are swapped wherever they appear."""
    for token, real in real_by_token.items():
        text = text.replace(token, json.dumps(real)[1:-1])
    return text


def _tokenise(value: Any, vault: dict[str, str]) -> Any:
    """Whole string values that are PII become their tokens (the fixture's vault)."""
    if isinstance(value, str):
        return vault.get(value, value)
    if isinstance(value, list):
        return [_tokenise(v, vault) for v in value]
    if isinstance(value, dict):
        return {k: _tokenise(v, vault) for k, v in value.items()}
    return value
