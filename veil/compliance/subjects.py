"""Data-subject requests: find (GDPR Art. 15) and erase (Art. 17) a person's values.

Finding needs no decryption: the vault is searched by the keyed HMAC of the value the officer
typed (``Vault.find_entries``), which yields (scope, token) pairs; audit events are then matched
on scope + token, in ``tokens`` (the value appeared, tokenised, in a result) and in
``untokenised`` (the real value was sent to a destination, under a rule). Nothing printed or
recorded here contains the value, except that the officer's own input is echoed back to them.

Erasing crypto-shreds the entries (``Vault.erase_entries``): their keys and ciphertexts are
destroyed, tokens that referred to them fail with "erased", and the audit trail (which never
held the value) stays intact and verifiable. The request itself is recorded as a
``subject.erase`` event carrying tokens and scopes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from veil.audit import events as ev
from veil.audit.chain import append_events
from veil.errors import AuditUnavailable


@dataclass
class Occurrence:
    seq: int
    ts: datetime
    event_id: str
    kind: str
    principal: str | None
    session_id: str | None
    upstream: str | None
    tool: str | None
    outcome: str
    token: str
    scope: str
    tokenised: bool  # the token appeared in what the agent or sandbox received
    sent_to: list[dict[str, str]] = field(default_factory=list)  # untokenisations: destination, rule


@dataclass
class Findings:
    entries: list[Any]  # veil.tokenizer.vault.VaultEntryInfo
    occurrences: list[Occurrence]
    event_seq: int | None = None

    def to_json(self) -> dict[str, Any]:
        def plain(obj: Any) -> dict[str, Any]:
            data = asdict(obj)
            return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in data.items()}

        return {
            "entries": [{**plain(e), "sources": list(e.sources)} for e in self.entries],
            "occurrences": [plain(o) for o in self.occurrences],
            "recorded_as_seq": self.event_seq,
        }


_OCCURRENCES = sa.text(
    """
    SELECT a.seq, a.ts, a.id, a.kind, a.principal, a.session_id, a.upstream, a.tool, a.outcome,
           t.token, t.scope, t.token = ANY(a.tokens) AS tokenised,
           coalesce((SELECT jsonb_agg(jsonb_build_object('destination', u->>'destination', 'rule', u->>'rule'))
                       FROM jsonb_array_elements(a.untokenised) u WHERE u->>'token' = t.token), '[]') AS sent_to
    FROM unnest(CAST(:scopes AS text[]), CAST(:tokens AS text[])) AS t(scope, token)
    JOIN audit_events a
      ON a.scope = t.scope
     AND (a.tokens @> ARRAY[t.token]
          OR a.untokenised @> jsonb_build_array(jsonb_build_object('token', t.token)))
    ORDER BY a.seq, t.token
    """
)


def occurrences(conn: sa.Connection, pairs: list[tuple[str, str]]) -> list[Occurrence]:
    """Audit events mentioning any of the (scope, token) pairs."""
    if not pairs:
        return []
    rows = conn.execute(_OCCURRENCES, {"scopes": [s for s, _ in pairs], "tokens": [t for _, t in pairs]}).all()
    return [
        Occurrence(
            r.seq,
            r.ts,
            str(r.id),
            r.kind,
            r.principal,
            r.session_id,
            r.upstream,
            r.tool,
            r.outcome,
            r.token,
            r.scope,
            bool(r.tokenised),
            list(r.sent_to),
        )
        for r in rows
    ]


def _record(engine: sa.Engine, event: ev.AuditEvent) -> int:
    try:
        with engine.begin() as conn:
            return append_events(conn, [event])[0].seq
    except sa.exc.SQLAlchemyError as exc:
        raise AuditUnavailable(
            f"the {event.kind} event could not be written to the audit trail ({type(exc).__name__})"
        ) from None


def find_subject(engine: sa.Engine, vault: Any, value: str, *, officer: str) -> Findings:
    """Vault entries and audit occurrences for ``value``; the search is itself audited."""
    entries = vault.find_entries(value)
    pairs = sorted({(e.scope, e.token) for e in entries})
    with engine.connect() as conn:
        found = occurrences(conn, pairs)
    findings = Findings(entries, found)
    findings.event_seq = _record(
        engine,
        ev.AuditEvent(
            kind=ev.SUBJECT_FIND,
            principal=officer,
            tokens=sorted({t for _, t in pairs}),
            detail={
                "entries": [{"scope": s, "token": t} for s, t in pairs],
                "occurrences": len(found),
            },
        ),
    )
    return findings


@dataclass
class Erasure:
    erased: list[Any]
    occurrences: int
    event_seq: int | None


def erase_subject(engine: sa.Engine, vault: Any, value: str, *, officer: str) -> Erasure:
    """Crypto-shred every live entry for ``value`` and record a ``subject.erase`` event."""
    erased = vault.erase_entries(value)
    pairs = sorted({(e.scope, e.token) for e in erased})
    with engine.connect() as conn:
        mentioned = len(occurrences(conn, pairs))
    seq = _record(
        engine,
        ev.AuditEvent(
            kind=ev.SUBJECT_ERASE,
            principal=officer,
            tokens=sorted({t for _, t in pairs}),
            detail={
                "entries": sorted(
                    ({"scope": e.scope, "token": e.token, "entity_type": e.entity_type} for e in erased),
                    key=lambda d: (d["scope"], d["token"]),
                ),
                "erased": len(erased),
                "audit_events_mentioning": mentioned,
            },
        ),
    )
    return Erasure(erased, mentioned, seq)


def format_findings(findings: Findings, typed: str) -> str:
    """Text for the officer. ``typed`` (their own input) is the only value ever shown."""
    lines = [
        f"Subject search for {typed!r}: {len(findings.entries)} vault entr"
        f"{'y' if len(findings.entries) == 1 else 'ies'}, {len(findings.occurrences)} audit event(s)"
    ]
    if findings.entries:
        lines.append("")
        lines.append("Vault entries (token, scope, type, created, state, seen from):")
        for e in findings.entries:
            state = f"erased {e.erased_at:%Y-%m-%d %H:%M}" if e.erased_at else "live"
            lines.append(
                f"  {e.token}  {e.scope}  {e.entity_type}  {e.created_at:%Y-%m-%d %H:%M}  {state}  "
                f"{', '.join(e.sources) or '-'}"
            )
    if findings.occurrences:
        lines.append("")
        lines.append("Audit events (when, who, what, where the value went):")
        for o in findings.occurrences:
            what = f"{o.upstream}__{o.tool}" if o.upstream else (o.tool or o.kind)
            flow = []
            if o.tokenised:
                flow.append("shown to the agent as " + o.token)
            flow += [f"sent to {s['destination']} (rule {s['rule']})" for s in o.sent_to]
            lines.append(
                f"  {o.ts:%Y-%m-%d %H:%M:%S}  seq {o.seq}  {o.principal or '-'}  {o.kind} {what}  "
                f"[{o.outcome}]  {'; '.join(flow)}"
            )
    if findings.event_seq is not None:
        lines.append("")
        lines.append(f"This search was recorded in the audit trail (subject.find, seq {findings.event_seq}).")
    return "\n".join(lines)
