"""Fixtures for the sandbox tests: the demo CRM's real tool catalogue and a ``call_tool`` that
answers like the gateway does, with tokenised records (PII fields replaced by typed tokens).

The tokenising here is a deterministic stand-in for ``veil.tokenizer`` (owned elsewhere): the
sandbox only ever sees what ``call_tool`` returns, and these tests check exactly that boundary.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from veil.config import SandboxConfig
from veil.errors import ToolNotFound, UpstreamError
from veil.sandbox import SandboxManager, ToolSpec

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))
from crm_data import generate_customers  # noqa: E402
from crm_server import build_server  # noqa: E402

T = TypeVar("T")
TOKENISED_FIELDS = {
    "first_name": "PERSON",
    "last_name": "PERSON",
    "full_name": "PERSON",
    "email": "EMAIL_ADDRESS",
    "phone": "PHONE_NUMBER",
    "ssn": "US_SSN",
    "card_number": "CREDIT_CARD",
    "date_of_birth": "DATE_TIME",
    "account_manager": "PERSON",
}


def _catalogue() -> list[ToolSpec]:
    server = build_server(generate_customers(5, 7))
    tools = asyncio.run(server.list_tools())
    wanted = {"find_customers", "get_customer", "export_customers", "add_note", "ping"}
    return [
        ToolSpec("crm", t.name, t.description or "", t.input_schema, t.output_schema) for t in tools if t.name in wanted
    ] + [
        ToolSpec(
            "mailer",
            "send_email",
            "Send an email.",
            {
                "type": "object",
                "properties": {"to": {"type": "string"}, "subject": {"type": "string"}, "body": {"type": "string"}},
                "required": ["to", "subject", "body"],
            },
        )
    ]


CATALOGUE = _catalogue()


class TokenisedCrm:
    """Answers tool calls like the gateway: records come back tokenised; every call is recorded."""

    def __init__(self, n: int = 400) -> None:
        self.vault: dict[str, str] = {}  # real value -> token
        self.counters: dict[str, int] = {}
        self.real = generate_customers(n, 7)
        self.customers = [self._tokenise(c) for c in self.real]
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def token(self, value: str, kind: str) -> str:
        if value not in self.vault:
            self.counters[kind] = self.counters.get(kind, 0) + 1
            self.vault[value] = f"[{kind}_{self.counters[kind]}]"
        return self.vault[value]

    def _tokenise(self, record: dict[str, Any]) -> dict[str, Any]:
        out = dict(record)
        for key, kind in TOKENISED_FIELDS.items():
            out[key] = self.token(record[key], kind)
        out["address"] = {**record["address"], "street": self.token(record["address"]["street"], "STREET_ADDRESS")}
        out["notes"] = [self.token(n, "NOTE") for n in record["notes"]]
        return out

    async def call_tool(self, upstream: str, tool: str, args: dict[str, Any]) -> Any:
        self.calls.append((upstream, tool, args))
        if upstream == "mailer":
            return f"queued message to {args.get('to')}"
        if tool == "ping":
            return {"ok": True}
        # Like the gateway (veil.proxy.code_mode.result_value): FastMCP's {"result": X} is unwrapped.
        if tool == "export_customers":
            return self.customers
        if tool == "find_customers":
            found = [c for c in self.customers if args.get("segment") in (None, c["segment"])]
            return found[: args.get("limit", 50)]
        if tool in ("get_customer", "add_note"):
            match = [c for c in self.customers if c["id"] == args.get("customer_id")]
            if not match:
                raise UpstreamError(f"Unknown customer id {args.get('customer_id')!r}. Use find_customers.")
            return match[0] if tool == "get_customer" else {"ok": True, "customer_id": match[0]["id"]}
        raise ToolNotFound(f"no tool {tool}")


def run(coro: Awaitable[T], timeout: float = 120.0) -> T:
    """Run one async test body with an overall bound (no test may hang the suite)."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


@pytest.fixture
def crm() -> TokenisedCrm:
    return TokenisedCrm()


def mounts_under(root: Path) -> list[str]:
    """Mount points below ``root`` (workspaces are filesystems of their own)."""
    points = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    return [p for p in points if p.startswith(str(root) + "/")]


@pytest.fixture
def workspace_root() -> Iterator[Path]:
    """A workspace root the sandbox user can traverse (pytest's tmp dirs are 0700)."""
    root = Path(tempfile.mkdtemp(prefix="veil-ws-"))
    root.chmod(0o711)
    yield root
    for point in mounts_under(root):  # a failed test must not leave filesystems behind
        subprocess.run(["umount", "-l", point], check=False)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def shared_skills() -> Iterator[Path]:
    """A shared skills dir outside /tmp and /var/tmp (private in the sandbox), readable by everyone."""
    root = Path(tempfile.mkdtemp(prefix="veil-test-skills-", dir="/var/lib"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def make_manager(workspace_root: Path) -> Callable[..., Any]:
    """``async with make_manager(**overrides) as mgr``: a real manager over real firejail."""
    if os.geteuid() != 0:
        pytest.skip("the sandbox starts jails as the 'veil-sandbox' user, which needs root")

    @asynccontextmanager
    async def make(**overrides: Any) -> AsyncIterator[SandboxManager]:
        settings = {"pool_size": 0, "timeout_s": 10.0, **overrides}
        manager = SandboxManager(SandboxConfig(**settings), workspace_root / "workspaces")
        try:
            yield manager
        finally:
            await manager.aclose()
        assert mounts_under(workspace_root) == [], "every workspace filesystem is unmounted on close"

    return make
