"""GDPR Article 30 "records of processing activities" and the HIPAA-style access log.

Both come from the same data as the full report: the policy's ``metadata`` says who the
controller is and why data is processed (purposes, data subjects, transfers); the audit trail
says which categories of personal data were actually processed (entity types) and who received
real values (the destinations of untokenisations) or supplied them (upstream sources).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from html import escape
from typing import Any

import sqlalchemy as sa

from veil.audit import events as ev
from veil.compliance.queries import Period, _clean, _rows
from veil.compliance.render import CSS, table

SECURITY_MEASURES = [
    "Pseudonymisation: personal data in upstream results is replaced by tokens before it reaches the AI agent "
    "or the code sandbox; real values are restored only in outbound calls the policy allows.",
    "Encryption at rest: real values are stored only in the token vault, encrypted with AES-256-GCM under "
    "per-entry keys wrapped by a master key held outside the database; lookups use keyed HMACs.",
    "Crypto-shredding on erasure requests: destroying an entry's key makes the value unrecoverable.",
    "Access control and flow control by a versioned policy document (every load is audited).",
    "Tamper-evident audit trail: append-only, hash-chained, with Ed25519-signed checkpoints.",
    "Agent-written code runs in an isolated firejail sandbox with CPU, memory, time and network limits.",
]


def _list(metadata: dict[str, Any], key: str) -> list[str]:
    value = metadata.get(key) or []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def build_ropa(conn: sa.Connection, period: Period, policy: Any | None) -> dict[str, Any]:
    """The Article 30(1) record for the period; ``policy`` is a loaded :class:`veil.policies.Policy`."""
    meta: dict[str, Any] = dict(policy.metadata) if policy is not None else {}
    where, params = period.where()
    categories = _rows(
        conn,
        f"""SELECT e.key AS entity_type, sum(e.value::bigint) AS values_processed,
                   array_to_string(array_agg(DISTINCT coalesce(a.upstream, 'sandbox')), ', ') AS sources
            FROM audit_events a, jsonb_each_text(a.entities) e
            WHERE {where.replace("ts ", "a.ts ")} GROUP BY 1 ORDER BY 2 DESC, 1""",
        params,
    )
    recipients = _rows(
        conn,
        f"""SELECT split_part(u->>'destination', '__', 1) AS recipient,
                   array_to_string(array_agg(DISTINCT u->>'entity_type'), ', ') AS entity_types,
                   count(*) AS values_sent
            FROM audit_events a, jsonb_array_elements(a.untokenised) u
            WHERE {where.replace("ts ", "a.ts ")} GROUP BY 1 ORDER BY 3 DESC, 1""",
        params,
    )
    retention = (policy.audit or {}).get("retention_months") if policy is not None else None
    return {
        "period": {"from": period.start.isoformat(), "to": period.end.isoformat()},
        "controller": meta.get("controller") or meta.get("owner") or "(set metadata.controller in the policy)",
        "contact": meta.get("contact") or meta.get("owner") or "",
        "processing_activity": meta.get("description") or meta.get("name") or "",
        "policy": {"name": meta.get("name"), "version": getattr(policy, "version", None)},
        "purposes": _list(meta, "purposes"),
        "data_subjects": _list(meta, "data_subjects"),
        "declared_data_categories": _list(meta, "data_categories"),
        "data_categories": _clean(categories),
        "declared_recipients": _list(meta, "recipients"),
        "recipients": _clean(recipients),
        "transfers": _list(meta, "transfers") or ["none declared"],
        "retention": (
            f"audit events: {retention} months (policy audit.retention_months)"
            if retention
            else "audit events: kept until `veil audit retention` is run; vault entries: per token TTL"
        ),
        "security_measures": SECURITY_MEASURES,
    }


def ropa_html(ropa: dict[str, Any]) -> str:
    def items(values: list[str]) -> str:
        if not values:
            return "<p class='empty'>none declared in the policy metadata</p>"
        return "<ul>" + "".join(f"<li>{escape(v)}</li>" for v in values) + "</ul>"

    facts = [
        ("Controller", escape(ropa["controller"])),
        ("Contact", escape(ropa["contact"])),
        ("Processing activity", escape(ropa["processing_activity"])),
        ("Policy", escape(f"{ropa['policy']['name']} (version {str(ropa['policy']['version'])[:16]}...)")),
        ("Period", escape(f"{ropa['period']['from'][:10]} to {ropa['period']['to'][:10]} (end exclusive)")),
        ("Retention", escape(ropa["retention"])),
    ]
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Records of processing</title>"
        f"<style>{CSS}</style></head><body><main><header class='cover'><div class='brand'>Veil · GDPR Article 30"
        "</div><h1>Records of processing activities</h1></header><section><h2>Controller and activity</h2><table>"
        + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts)
        + "</table><h3>Purposes of the processing</h3>"
        + items(ropa["purposes"])
        + "<h3>Categories of data subjects</h3>"
        + items(ropa["data_subjects"])
        + "</section><section><h2>Categories of personal data processed</h2>"
        + table(
            ropa["data_categories"],
            [("entity_type", "Entity type", "m"), ("sources", "Sources", "s"), ("values_processed", "Values", "n")],
            "No personal data processed.",
        )
        + "</section><section><h2>Recipients</h2>"
        + table(
            ropa["recipients"],
            [
                ("recipient", "Recipient (upstream)", "s"),
                ("entity_types", "Data", "m"),
                ("values_sent", "Values sent", "n"),
            ],
            "No real values were sent anywhere.",
        )
        + "<h3>Declared recipients</h3>"
        + items(ropa["declared_recipients"])
        + "<h3>Transfers to third countries</h3>"
        + items(ropa["transfers"])
        + "</section><section><h2>Technical and organisational security measures</h2>"
        + items(ropa["security_measures"])
        + "</section></main></body></html>"
    )


def ropa_csv(ropa: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["field", "item", "detail", "value"])
    for key in ("controller", "contact", "processing_activity", "retention"):
        w.writerow([key, "", "", ropa[key]])
    for key in (
        "purposes",
        "data_subjects",
        "declared_data_categories",
        "declared_recipients",
        "transfers",
        "security_measures",
    ):
        for v in ropa[key]:
            w.writerow([key, v, "", ""])
    for r in ropa["data_categories"]:
        w.writerow(["data_categories", r["entity_type"], r["sources"], r["values_processed"]])
    for r in ropa["recipients"]:
        w.writerow(["recipients", r["recipient"], r["entity_types"], r["values_sent"]])
    return buf.getvalue()


ACCESS_LOG_COLUMNS = [
    "ts",
    "seq",
    "event_id",
    "principal",
    "roles",
    "tenant",
    "session_id",
    "kind",
    "upstream",
    "tool",
    "outcome",
    "decision",
    "rule",
    "entity_types",
    "values_tokenised",
    "values_untokenised",
    "destinations",
]


def access_log(conn: sa.Connection, period: Period) -> Iterator[list[Any]]:
    """One row per access event (who, when, what, outcome), streamed with a server-side cursor."""
    where, params = period.where()
    params |= {
        "kinds": [
            ev.TOOL_CALL,
            ev.CODE_EXECUTE,
            ev.RESOURCE_READ,
            ev.PROMPT_GET,
            ev.AUTH_FAILED,
            ev.SUBJECT_FIND,
            ev.SUBJECT_ERASE,
            ev.SESSION_OPEN,
        ]
    }
    stmt = sa.text(
        f"""SELECT ts, seq, id, principal, array_to_string(roles, ' '), tenant, session_id, kind, upstream, tool,
                   outcome, decision, rule,
                   (SELECT string_agg(k, ' ' ORDER BY k) FROM jsonb_object_keys(entities) k),
                   (SELECT coalesce(sum(v::bigint), 0) FROM jsonb_each_text(entities) AS e(k, v)),
                   jsonb_array_length(untokenised),
                   (SELECT string_agg(DISTINCT split_part(u->>'destination', ':', 1), ' ')
                      FROM jsonb_array_elements(untokenised) u)
            FROM audit_events WHERE {where} AND kind = ANY(:kinds) ORDER BY seq"""
    ).execution_options(stream_results=True, yield_per=10_000)
    for row in conn.execute(stmt, params):
        values = list(row)
        values[0] = values[0].isoformat()
        values[2] = str(values[2])
        yield values


def write_access_log_csv(conn: sa.Connection, period: Period, out: io.TextIOBase) -> int:
    w = csv.writer(out, lineterminator="\n")
    w.writerow(ACCESS_LOG_COLUMNS)
    n = 0
    for row in access_log(conn, period):
        w.writerow(["" if v is None else v for v in row])
        n += 1
    return n


__all__ = ["ACCESS_LOG_COLUMNS", "access_log", "build_ropa", "ropa_csv", "ropa_html", "write_access_log_csv"]
