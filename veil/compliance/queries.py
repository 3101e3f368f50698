"""Report data: every number is aggregated by PostgreSQL (GROUP BY), never by looping in Python.

Why: a busy month holds millions of audit events; each section here is one or a few queries
over the month partitions the period covers (partition pruning on ``ts``), returning a few
hundred rows at most. :func:`build_report` returns plain JSON data; the HTML, PDF, CSV and
JSON renderers all read the same structure, so every format carries the same numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from veil.audit import events as ev
from veil.audit.verify import verify

INCIDENT_LIMIT = 200
SYSTEM_PRINCIPAL = "veil"


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime  # exclusive
    principal: str | None = None
    upstream: str | None = None

    def where(self, *, filtered: bool = True) -> tuple[str, dict[str, Any]]:
        sql = "ts >= :start AND ts < :end"
        params: dict[str, Any] = {"start": self.start, "end": self.end}
        if filtered and self.principal is not None:
            sql += " AND principal = :principal"
            params["principal"] = self.principal
        if filtered and self.upstream is not None:
            sql += " AND upstream = :upstream"
            params["upstream"] = self.upstream
        return sql, params


def _rows(conn: sa.Connection, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(sa.text(sql), params).mappings()]


def _clean(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """JSON-ready rows: timestamps as ISO strings, numerics as int/float."""
    out = []
    for row in rows:
        clean = {}
        for k, v in row.items():
            if isinstance(v, datetime):
                v = v.isoformat()
            elif isinstance(v, Decimal):  # sum() and round() return numeric
                v = int(v) if v == int(v) else float(v)
            clean[k] = v
        out.append(clean)
    return out


def summary(conn: sa.Connection, p: Period) -> dict[str, Any]:
    where, params = p.where()
    params |= {"call": ev.TOOL_CALL, "exec": ev.CODE_EXECUTE, "auth": ev.AUTH_FAILED, "sys": SYSTEM_PRINCIPAL}
    row = (
        conn.execute(
            sa.text(
                f"""
            SELECT count(*) AS events,
                   count(DISTINCT session_id) AS sessions,
                   count(DISTINCT principal) FILTER (WHERE principal <> :sys) AS principals,
                   count(*) FILTER (WHERE kind = :call) AS tool_calls,
                   count(*) FILTER (WHERE kind = :exec) AS executions,
                   count(*) FILTER (WHERE outcome = 'denied') AS denials,
                   count(*) FILTER (WHERE outcome NOT IN ('ok', 'denied')) AS errors,
                   coalesce(sum(coalesce((detail->>'count')::bigint, 1)) FILTER (WHERE kind = :auth), 0)
                       AS auth_failures,
                   coalesce(sum(jsonb_array_length(untokenised)), 0) AS untokenisations,
                   min(ts) AS first_event, max(ts) AS last_event
            FROM audit_events WHERE {where}
            """
            ),
            params,
        )
        .mappings()
        .one()
    )
    return _clean([dict(row)])[0]


def access(conn: sa.Connection, p: Period) -> dict[str, Any]:
    where, params = p.where()
    params |= {"call": ev.TOOL_CALL, "exec": ev.CODE_EXECUTE, "sys": SYSTEM_PRINCIPAL}
    counts = """count(*) FILTER (WHERE kind = :call) AS calls,
                count(*) FILTER (WHERE kind = :exec) AS executions,
                count(*) FILTER (WHERE outcome = 'denied') AS denials,
                count(*) FILTER (WHERE outcome NOT IN ('ok', 'denied')) AS errors"""
    by_principal = _rows(
        conn,
        f"""SELECT principal, {counts}, count(DISTINCT session_id) AS sessions, min(ts) AS first, max(ts) AS last
            FROM audit_events WHERE {where} AND principal IS NOT NULL AND principal <> :sys
            GROUP BY principal ORDER BY calls DESC, principal""",
        params,
    )
    by_tool = _rows(
        conn,
        f"""SELECT upstream, tool, count(*) AS calls,
                   count(*) FILTER (WHERE outcome = 'denied') AS denials,
                   count(*) FILTER (WHERE outcome NOT IN ('ok', 'denied')) AS errors,
                   round(avg(duration_ms)::numeric, 2) AS avg_ms,
                   count(DISTINCT principal) AS principals
            FROM audit_events WHERE {where} AND kind = :call
            GROUP BY upstream, tool ORDER BY calls DESC, upstream, tool""",
        params,
    )
    daily = _rows(
        conn,
        f"""SELECT to_char(date_trunc('day', ts AT TIME ZONE 'UTC'), 'YYYY-MM-DD') AS day, {counts}
            FROM audit_events WHERE {where}
            GROUP BY 1 ORDER BY 1""",
        params,
    )
    return {"by_principal": _clean(by_principal), "by_tool": _clean(by_tool), "daily": _clean(daily)}


def personal_data(conn: sa.Connection, p: Period) -> dict[str, Any]:
    where, params = p.where()
    # One scan of the events (hash aggregate per entity type and source), then the per-type
    # totals from that small result, still in SQL (GROUPING SETS would sort the whole scan).
    rows = _rows(
        conn,
        f"""WITH d AS (
                SELECT e.key AS entity_type, coalesce(a.upstream, '(sandbox)') AS upstream,
                       sum(e.value::bigint) AS values_tokenised, count(*) AS events
                FROM audit_events a, jsonb_each_text(a.entities) e
                WHERE {where.replace("ts ", "a.ts ")}
                GROUP BY 1, 2)
            SELECT entity_type, upstream, false AS total, values_tokenised, events FROM d
            UNION ALL
            SELECT entity_type, NULL, true, sum(values_tokenised), sum(events) FROM d GROUP BY 1
            ORDER BY 4 DESC, 1, 2""",
        params,
    )
    totals = [{k: r[k] for k in ("entity_type", "values_tokenised", "events")} for r in rows if r["total"]]
    by_upstream = [{k: v for k, v in r.items() if k != "total"} for r in rows if not r["total"]]
    return {"by_entity_type": _clean(totals), "by_upstream": _clean(by_upstream)}


def flows(conn: sa.Connection, p: Period) -> dict[str, Any]:
    where, params = p.where()
    rows = _rows(
        conn,
        f"""SELECT u->>'entity_type' AS entity_type,
                   split_part(u->>'destination', ':', 1) AS destination,
                   u->>'rule' AS rule, count(*) AS untokenisations,
                   count(DISTINCT a.principal) AS principals
            FROM audit_events a, jsonb_array_elements(a.untokenised) u
            WHERE {where.replace("ts ", "a.ts ")}
            GROUP BY 1, 2, 3 ORDER BY 4 DESC, 1, 2, 3""",
        params,
    )
    return {"untokenisations": _clean(rows)}


RAW_PII_THRESHOLD = 10  # default of `veil report --raw-pii-threshold`


def agent_raw_pii(conn: sa.Connection, p: Period, threshold: int = RAW_PII_THRESHOLD) -> dict[str, Any]:
    """Raw PII the agent itself sent (``detail.agent_raw_pii``: counts by type, set by the proxy's
    untokenise stage), per session, most first. The agent only ever sees tokens, so these are
    guesses or typed values: a session probing an echoing upstream (an equality oracle no gateway
    can close, docs/threat-model.md) stands out here, flagged at ``threshold`` values or more."""
    where, params = p.where()
    params |= {"threshold": threshold, "limit": INCIDENT_LIMIT}
    per_session = f"""SELECT coalesce(a.session_id, '') AS session_id, a.principal,
                   sum(e.value::bigint) AS raw_values, count(DISTINCT a.seq) AS calls,
                   string_agg(DISTINCT e.key, ' ' ORDER BY e.key) AS entity_types,
                   min(a.ts) AS first, max(a.ts) AS last
            FROM audit_events a, jsonb_each_text(a.detail->'agent_raw_pii') e
            WHERE {where.replace("ts ", "a.ts ").replace("principal =", "a.principal =")}
              AND jsonb_typeof(a.detail->'agent_raw_pii') = 'object'
            GROUP BY 1, 2"""
    sessions = _rows(
        conn,
        f"""SELECT *, raw_values >= :threshold AS flagged FROM ({per_session}) s
            ORDER BY raw_values DESC, session_id LIMIT :limit""",
        params,
    )
    totals = _rows(
        conn,
        f"""SELECT count(*) AS session_count, count(*) FILTER (WHERE raw_values >= :threshold) AS flagged_sessions,
                   coalesce(sum(raw_values), 0) AS raw_values
            FROM ({per_session}) s""",
        params,
    )[0]
    return {"threshold": threshold, **_clean([totals])[0], "sessions": _clean(sessions), "listed_limit": INCIDENT_LIMIT}


def refusals(conn: sa.Connection, p: Period) -> dict[str, Any]:
    where, params = p.where()
    params |= {"auth": ev.AUTH_FAILED}
    denied = _rows(
        conn,
        f"""SELECT kind, coalesce(detail->>'error', decision, '') AS refusal,
                   coalesce(rule, '') AS rule, coalesce(detail->>'entity_type', '') AS entity_type,
                   coalesce(upstream, '') AS upstream, coalesce(tool, '') AS tool,
                   count(*) AS count, count(DISTINCT principal) AS principals
            FROM audit_events WHERE {where} AND outcome = 'denied' AND kind <> :auth
            GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 7 DESC, 1, 2, 3, 4, 5, 6""",
        params,
    )
    auth = _rows(
        conn,
        f"""SELECT coalesce(detail->>'reason', '') AS reason, coalesce(detail->>'client', '') AS client,
                   sum(coalesce((detail->>'count')::bigint, 1)) AS count, min(ts) AS first, max(ts) AS last
            FROM audit_events WHERE {where} AND kind = :auth
            GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2""",
        params,
    )
    return {"denied": _clean(denied), "auth_failed": _clean(auth)}


def incidents(conn: sa.Connection, p: Period) -> dict[str, Any]:
    where, params = p.where()
    params |= {"exec": ev.CODE_EXECUTE, "limit": INCIDENT_LIMIT}
    by_outcome = _rows(
        conn,
        f"""SELECT outcome, count(*) AS count FROM audit_events
            WHERE {where} AND kind = :exec AND outcome <> 'ok' GROUP BY 1 ORDER BY 2 DESC, 1""",
        params,
    )
    listed = _rows(
        conn,
        f"""SELECT seq, ts, principal, session_id, outcome, round(duration_ms::numeric, 1) AS duration_ms,
                   detail->>'cpu_s' AS cpu_s, detail->>'max_rss_mb' AS max_rss_mb, args_digest AS code_digest
            FROM audit_events WHERE {where} AND kind = :exec AND outcome <> 'ok'
            ORDER BY seq LIMIT :limit""",
        params,
    )
    return {
        "by_outcome": _clean(by_outcome),
        "events": _clean(listed),
        "listed_limit": INCIDENT_LIMIT,
        "unfinished": unfinished(conn, p),
    }


def unfinished(conn: sa.Connection, p: Period | None = None, *, since: int = 0) -> list[dict[str, Any]]:
    """Calls whose intent is in the trail but whose outcome is not: Veil stopped between them."""
    where, params = p.where() if p is not None else ("true", {})
    params |= {"intent": ev.INTENT, "since": since, "limit": INCIDENT_LIMIT}
    rows = _rows(
        conn,
        f"""SELECT i.seq, i.id::text AS id, i.ts, i.principal, i.session_id, i.upstream, i.tool,
                   i.detail->>'method' AS method
            FROM audit_events i WHERE {where.replace("ts", "i.ts")} AND i.kind = :intent AND i.seq > :since
              AND NOT EXISTS (SELECT 1 FROM audit_events o WHERE o.detail->>'intent' = i.id::text)
            ORDER BY i.seq LIMIT :limit""",
        params,
    )
    return _clean(rows)


def policies(conn: sa.Connection, p: Period) -> dict[str, Any]:
    where, params = p.where(filtered=False)
    params |= {"load": ev.POLICY_LOAD, "rejected": ev.POLICY_REJECTED}
    in_force = _rows(
        conn,
        """SELECT ts AS loaded_at, policy_version AS version, detail->>'path' AS path,
                  coalesce(detail->>'reason', '') AS reason
           FROM audit_events WHERE kind = :load AND ts < :start ORDER BY seq DESC LIMIT 1""",
        params,
    )
    loads = _rows(
        conn,
        f"""SELECT ts AS loaded_at, policy_version AS version, detail->>'path' AS path,
                   coalesce(detail->>'reason', '') AS reason
            FROM audit_events WHERE {where} AND kind = :load ORDER BY seq""",
        params,
    )
    rejected = _rows(
        conn,
        f"""SELECT ts, detail->>'path' AS path, coalesce(detail->>'error', '') AS error
            FROM audit_events WHERE {where} AND kind = :rejected ORDER BY seq""",
        params,
    )
    return {"in_force_at_start": _clean(in_force), "loaded": _clean(loads), "rejected": _clean(rejected)}


def integrity(conn: sa.Connection, p: Period, public_key: Ed25519PublicKey | None) -> dict[str, Any]:
    result = verify(conn, start=p.start, end=p.end, public_key=public_key)
    return {
        "verified": result.ok,
        "first_seq": result.first_seq,
        "last_seq": result.last_seq,
        "events_checked": result.events,
        "anchor": result.anchor,
        "problem": str(result.problem) if result.problem else None,
        "checkpoints": [
            {
                "id": c.checkpoint.id,
                "seq": c.checkpoint.seq,
                "ts": c.checkpoint.ts.isoformat(),
                "key_id": c.checkpoint.key_id,
                "ok": c.ok,
                "note": c.note,
            }
            for c in result.checkpoints
        ],
        "notes": result.notes,
        "public_key_trusted": public_key is not None,
    }


SECTIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "summary": summary,
    "access": access,
    "personal_data": personal_data,
    "flows": flows,
    "agent_raw_pii": agent_raw_pii,
    "refusals": refusals,
    "incidents": incidents,
    "policies": policies,
}


def build_report(
    conn: sa.Connection,
    period: Period,
    *,
    public_key: Ed25519PublicKey | None = None,
    verify_chain: bool = True,
    progress: Callable[[str], None] | None = None,
    raw_pii_threshold: int = RAW_PII_THRESHOLD,
) -> dict[str, Any]:
    """All sections as JSON data. ``progress`` gets one line per finished section;
    ``raw_pii_threshold``: sessions whose agent sent at least this many raw values are flagged."""
    report: dict[str, Any] = {
        "period": {
            "from": period.start.isoformat(),
            "to": period.end.isoformat(),
            "principal": period.principal,
            "upstream": period.upstream,
        }
    }
    for name, fn in SECTIONS.items():
        t = time.perf_counter()
        report[name] = fn(conn, period, raw_pii_threshold) if fn is agent_raw_pii else fn(conn, period)
        if progress:
            progress(f"{name} ({time.perf_counter() - t:.2f}s)")
    if verify_chain:
        t = time.perf_counter()
        report["integrity"] = integrity(conn, period, public_key)
        if progress:
            progress(f"integrity: {report['integrity']['events_checked']} events ({time.perf_counter() - t:.2f}s)")
    else:
        report["integrity"] = {"verified": None, "notes": ["chain verification skipped (--no-verify)"]}
    return report
