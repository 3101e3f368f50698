"""Data-subject requests in the browser: find a person by value, see every access, erase.

The value travels only in a POST body, is hashed by the vault (keyed HMAC, nothing decrypted) and
is never stored, logged, put in a URL or written back into a page: the results show tokens,
scopes and audit events. Erasing is two steps: the officer asks to erase what a search found
(the console keeps the search's *tokens* under a random handle for ``PENDING_S``), then confirms
by typing the value again; the erasure runs only when that value still finds exactly those
entries. ``subject.find`` and ``subject.erase`` events are written by ``veil.compliance.subjects``,
as for ``veil subject``.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
from starlette.responses import Response
from starlette.routing import Route

from veil.compliance.subjects import erase_subject, find_subject

PENDING_S = 10 * 60
MAX_VALUE = 1000


@dataclass
class Pending:
    officer: str
    pairs: frozenset[tuple[str, str]]  # (scope, token) of the live entries a search found
    created: float


_pending: dict[str, Pending] = {}


def _value(form: Any) -> str:
    value = str(form.get("value", "")).strip()
    if not value:
        raise ValueError("type the value to search for (an e-mail address, phone number, name, ...)")
    if len(value) > MAX_VALUE:
        raise ValueError(f"a value is at most {MAX_VALUE} characters")
    return value


def _vault(c: Any) -> Any:
    if c.services.vault is None:
        from veil.console.web import Refused

        raise Refused(503, c.services.vault_problem or "the vault is not available to this console")
    return c.services.vault


def _take(handle: str, officer: str) -> Pending:
    from veil.console.web import Refused

    now = time.monotonic()
    for key in [k for k, p in _pending.items() if now - p.created > PENDING_S]:
        del _pending[key]
    pending = _pending.get(handle)
    if pending is None or pending.officer != officer:
        raise Refused(409, "this erasure request has expired: search for the person again")
    return pending


async def form(c: Any, ctx: Any) -> Response:
    return c.render(ctx, "subjects.html", nav="subjects", findings=None, vault_problem=c.services.vault_problem)


async def find(c: Any, ctx: Any) -> Response:
    value = _value(ctx.form)
    vault = _vault(c)
    officer = ctx.principal.name
    findings = await anyio.to_thread.run_sync(lambda: find_subject(c.services.engine, vault, value, officer=officer))
    live = frozenset((e.scope, e.token) for e in findings.entries if e.erased_at is None)
    handle = ""
    if live:
        handle = secrets.token_urlsafe(16)
        _pending[handle] = Pending(officer, live, time.monotonic())
    ctx.detail = {"action": "find", "entries": len(findings.entries), "recorded_as_seq": findings.event_seq}
    return c.render(
        ctx, "subjects.html", nav="subjects", findings=findings, handle=handle, live=len(live), vault_problem=""
    )


async def confirm(c: Any, ctx: Any) -> Response:
    pending = _take(str(ctx.form.get("handle", "")), ctx.principal.name)
    ctx.detail = {"action": "erase.confirm", "entries": len(pending.pairs)}
    return c.render(
        ctx,
        "subject_erase.html",
        nav="subjects",
        pairs=sorted(pending.pairs),
        handle=ctx.form.get("handle"),
        message="",
    )


async def erase(c: Any, ctx: Any) -> Response:
    handle = str(ctx.form.get("handle", ""))
    pending = _take(handle, ctx.principal.name)
    vault = _vault(c)
    value = _value(ctx.form)

    def again(message: str) -> Response:
        ctx.detail = {"action": "erase", "refused": "confirmation"}
        return c.render(
            ctx, "subject_erase.html", 400, nav="subjects", pairs=sorted(pending.pairs), handle=handle, message=message
        )

    if ctx.form.get("confirm") != "yes":
        return again("tick the box to confirm that the erasure cannot be undone")
    found = await anyio.to_thread.run_sync(vault.find_entries, value)
    if frozenset((e.scope, e.token) for e in found if e.erased_at is None) != pending.pairs:
        return again("the value typed does not match the person found by the search: nothing was erased")
    officer = ctx.principal.name
    result = await anyio.to_thread.run_sync(lambda: erase_subject(c.services.engine, vault, value, officer=officer))
    _pending.pop(handle, None)
    ctx.detail = {"action": "erase", "erased": len(result.erased), "recorded_as_seq": result.event_seq}
    return c.render(ctx, "subject_erased.html", nav="subjects", result=result)


def routes(c: Any) -> list[Route]:
    return [
        Route("/subjects", c.page("subjects", form), methods=["GET"]),
        Route("/subjects/find", c.page("subjects.find", find), methods=["POST"]),
        Route("/subjects/erase/confirm", c.page("subjects.erase.confirm", confirm), methods=["POST"]),
        Route("/subjects/erase", c.page("subjects.erase", erase), methods=["POST"]),
    ]
