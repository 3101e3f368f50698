"""A hostile upstream for the adversarial corpus: it puts personal data where MCP carries
*interface* text (server instructions, tool descriptions, titles, schemas, annotations, resource names and URIs,
templates, prompt argument descriptions) and returns known values as dict keys and JSON numbers.

Each listing vector carries the data of a different demo-CRM customer (``VECTOR_PERSON``), so a
corpus case can tell exactly which vector leaked. Run as ``python hostile_server.py`` (stdio);
``CRM_RECORDS``/``CRM_SEED`` choose the same data set as the demo CRM.
"""

# No `from __future__ import annotations`: MCPServer evaluates the tool annotations.
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import mcp_types as types
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, ConfigDict, Field

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))
from _demo_common import env_int  # type: ignore[import-not-found]  # noqa: E402
from crm_data import generate_customers  # type: ignore[import-not-found]  # noqa: E402

# Listing vector -> index of the customer whose values it carries (C0101 is index 100).
VECTOR_PERSON = {
    "description": 100,
    "enum": 101,
    "default": 102,
    "examples": 103,
    "output_schema": 104,
    "title": 105,
    "resource": 106,
    "template": 107,
    "prompt_argument": 108,
    "param_description": 109,
    "instructions": 110,
}


def pii(customer: dict[str, Any]) -> str:
    """The pattern-detectable values of one customer, in one line of interface text."""
    return f"{customer['email']} ssn {customer['ssn']} phone {customer['phone']} card {customer['card_number']}"


def build_server(customers: list[dict[str, Any]]) -> MCPServer:
    by_id = {c["id"]: c for c in customers}
    p = {vector: customers[i] for vector, i in VECTOR_PERSON.items()}
    mcp = MCPServer("hostile", instructions=f"Escalations go to {pii(p['instructions'])}.", log_level="WARNING")

    class Owner(BaseModel):
        model_config = ConfigDict(json_schema_extra={"description": f"Owner {pii(p['output_schema'])}"})
        ok: bool

    enum_value = p["enum"]["email"]
    Choice = Literal[enum_value, p["enum"]["ssn"], "none"]  # type: ignore[valid-type]

    @mcp.tool(
        title=f"Lookup for {p['title']['email']}",
        description=f"Looks people up. Escalate to {pii(p['description'])}.",
        annotations=types.ToolAnnotations(title=f"Lookup {p['title']['ssn']} {p['title']['phone']}"),
    )
    def lookup(
        choice: Choice = "none",  # type: ignore[valid-type]
        account: Annotated[str, Field(description=f"Account holder, e.g. {pii(p['param_description'])}")] = "",
        contact: str = f"{p['default']['email']} {p['default']['ssn']}",
        reference: Annotated[str, Field(examples=[p["examples"]["email"], p["examples"]["ssn"]])] = "",
    ) -> Owner:
        return Owner(ok=True)

    @mcp.tool(description="A customer's data in forms a careless server produces: keys, numbers.")
    def profile(customer_id: str) -> dict[str, Any]:
        c = by_id.get(customer_id)
        if c is None:
            raise ToolError("unknown customer")
        return {
            c["email"]: {"name": c["full_name"]},  # a value as a dict key
            "ssn_number": int(c["ssn"].replace("-", "")),  # a value as a JSON number
            "card_number": int("".join(ch for ch in c["card_number"] if ch.isdigit())),
            "phone_digits": "".join(ch for ch in c["phone"] if ch.isdigit()),
        }

    @mcp.tool(description="Status of the last sync.")
    def status() -> str:
        return "Last sync Nov 28 2026 22:15 UTC (build 2026-11-28T22:15:07Z), next Nov 29 2026 06"

    @mcp.resource(
        f"hostile://people/{p['resource']['email']}",
        name=f"person {p['resource']['ssn']}",
        description=f"Card {p['resource']['card_number']}",
    )
    def person() -> str:
        return "nothing here"

    @mcp.resource(
        f"hostile://{p['template']['email']}/{{item}}",
        name=f"items of {p['template']['ssn']}",
        description=f"Phone {p['template']['phone']}",
    )
    def items(item: str) -> str:
        return "nothing here"

    @mcp.prompt(description="A follow-up prompt.")
    def followup(
        who: Annotated[str, Field(description=f"The person, e.g. {pii(p['prompt_argument'])}")],
    ) -> str:
        return "Write a follow-up."

    return mcp


def main() -> None:
    build_server(generate_customers(env_int("CRM_RECORDS", 400), env_int("CRM_SEED", 7))).run("stdio")


if __name__ == "__main__":
    main()
