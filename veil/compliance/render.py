"""Render report data (from :mod:`veil.compliance.queries`) as HTML, PDF, CSV or JSON.

One structure, four views: the HTML is a single self-contained file (inline CSS and SVG, no
scripts, no external fetches); the PDF is WeasyPrint's rendering of that same HTML; CSV is the
same numbers in long form (section, table, key, metric, value) for spreadsheets; JSON is the
structure itself.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime, timedelta
from html import escape
from typing import Any

from veil.compliance.charts import PALETTE, bar_chart, column_chart
from veil.errors import VeilError

CSS = """
@page { size: A4; margin: 14mm 12mm 16mm 12mm;
        @bottom-right { content: "page " counter(page) " of " counter(pages); font-size: 8pt; color: #6b7280;
                        font-family: Helvetica, Arial, sans-serif; }
        @bottom-left { content: "Veil compliance report"; font-size: 8pt; color: #6b7280;
                       font-family: Helvetica, Arial, sans-serif; } }
* { box-sizing: border-box; }
body { font-family: Helvetica, Arial, sans-serif; color: #111827; margin: 0; background: #f3f4f6; font-size: 13px; }
main { max-width: 1040px; margin: 0 auto; padding: 24px; }
header.cover { background: #0f172a; color: #f8fafc; padding: 28px 32px; border-radius: 10px; margin-bottom: 20px; }
header.cover .brand { font-size: 12px; letter-spacing: .18em; text-transform: uppercase; color: #93c5fd; }
header.cover h1 { margin: 6px 0 4px; font-size: 28px; font-weight: 600; }
header.cover .meta { color: #cbd5e1; font-size: 13px; }
header.cover .meta span { margin-right: 18px; }
.badge { display: inline-block; padding: 3px 10px; border-radius: 999px; font-size: 12px; font-weight: 600; }
.badge.ok { background: #dcfce7; color: #166534; } .badge.bad { background: #fee2e2; color: #991b1b; }
.badge.muted { background: #e5e7eb; color: #374151; }
section { background: #fff; border-radius: 10px; padding: 20px 24px; margin-bottom: 18px;
          box-shadow: 0 1px 2px rgba(0,0,0,.06); break-inside: auto; }
section h2 { font-size: 17px; margin: 0 0 4px; } section h3 { font-size: 13px; margin: 18px 0 6px; color: #374151; }
section p.lead { color: #6b7280; margin: 0 0 14px; }
.kpis { display: grid; grid-template-columns: repeat(4, 1fr); gap: 12px; }
.kpi { border: 1px solid #e5e7eb; border-radius: 8px; padding: 12px 14px; }
.kpi .v { font-size: 24px; font-weight: 600; } .kpi .l { color: #6b7280; font-size: 11px; text-transform: uppercase;
          letter-spacing: .06em; }
.kpi.warn .v { color: #b91c1c; }
table { width: 100%; border-collapse: collapse; font-size: 12px; margin-top: 4px; }
th { text-align: left; font-weight: 600; color: #374151; background: #f9fafb; border-bottom: 1px solid #e5e7eb;
     padding: 6px 8px; }
td { padding: 5px 8px; border-bottom: 1px solid #f3f4f6; vertical-align: top; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
tr { break-inside: avoid; }
code, td.mono { font-family: "DejaVu Sans Mono", Menlo, monospace; font-size: 11px; }
.empty { color: #9ca3af; font-style: italic; padding: 8px 0; }
.chart { display: block; margin: 8px 0 4px; width: 100%; height: auto; }
.grid2 { display: grid; grid-template-columns: 1fr 1fr; gap: 18px; }
footer { color: #6b7280; font-size: 11px; text-align: center; padding: 8px 0 24px; }
@media print { body { background: #fff; } main { padding: 0; max-width: none; }
               section { box-shadow: none; border: 1px solid #e5e7eb; } }
"""


def _n(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else ("yes" if value else "no")
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)


def _when(value: Any) -> str:
    if not value:
        return ""
    try:
        return datetime.fromisoformat(str(value)).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return str(value)


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]], empty: str) -> str:
    """``columns``: (key, header, kind) with kind ``n`` (number), ``t`` (time), ``m`` (mono) or ``s``."""
    if not rows:
        return f"<p class='empty'>{escape(empty)}</p>"
    head = "".join(f"<th class='{'n' if k == 'n' else ''}'>{escape(h)}</th>" for _, h, k in columns)
    body = []
    for row in rows:
        cells = []
        for key, _, kind in columns:
            value = row.get(key)
            if kind == "n":
                cells.append(f"<td class='n'>{escape(_n(value))}</td>")
            elif kind == "t":
                cells.append(f"<td>{escape(_when(value))}</td>")
            elif kind == "m":
                cells.append(f"<td class='mono'>{escape(_n(value))}</td>")
            else:
                cells.append(f"<td>{escape(_n(value))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _days(report: dict[str, Any]) -> list[str]:
    start = datetime.fromisoformat(report["period"]["from"]).astimezone(UTC).date()
    end = datetime.fromisoformat(report["period"]["to"]).astimezone(UTC)
    last = (end - timedelta(microseconds=1)).date()
    days: list[str] = []
    d = start
    while d <= last and len(days) < 400:
        days.append(d.isoformat())
        d += timedelta(days=1)
    return days


def _series(report: dict[str, Any], *keys: str) -> tuple[list[str], dict[str, list[float]]]:
    days = _days(report)
    by_day = {r["day"]: r for r in report["access"]["daily"]}
    return days, {k: [float(by_day.get(d, {}).get(k, 0)) for d in days] for k in keys}


def _kpi(label: str, value: Any, warn: bool = False) -> str:
    css = "kpi warn" if warn and value else "kpi"
    return f"<div class='{css}'><div class='v'>{_n(value)}</div><div class='l'>{escape(label)}</div></div>"


def _integrity_badge(integrity: dict[str, Any]) -> str:
    if integrity.get("verified") is None:
        return "<span class='badge muted'>chain not verified</span>"
    if integrity["verified"]:
        return "<span class='badge ok'>audit chain verified</span>"
    return "<span class='badge bad'>audit chain BROKEN</span>"


def html_report(report: dict[str, Any], *, generated: datetime | None = None) -> str:
    generated = generated or datetime.now(UTC)
    period = report["period"]
    s = report["summary"]
    title_from = _when(period["from"])[:10]
    title_to = (datetime.fromisoformat(period["to"]) - timedelta(microseconds=1)).astimezone(UTC).date().isoformat()
    filters = "".join(
        f"<span>{escape(k)}: <b>{escape(str(v))}</b></span>"
        for k, v in (("principal", period["principal"]), ("upstream", period["upstream"]))
        if v
    )
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Veil compliance report {title_from} to {title_to}</title><style>{CSS}</style></head><body><main>",
        "<header class='cover'><div class='brand'>Veil · privacy-preserving MCP gateway</div>",
        "<h1>Compliance report</h1>",
        f"<div class='meta'><span>Period: <b>{title_from}</b> to <b>{title_to}</b> (UTC)</span>{filters}"
        f"<span>Generated {generated:%Y-%m-%d %H:%M} UTC</span> {_integrity_badge(report['integrity'])}</div></header>",
    ]
    parts.append(
        "<section id='summary'><h2>Summary</h2><p class='lead'>Everything the gateway recorded in the period. "
        "Audit events carry tokens and digests only: no personal data appears in this report.</p><div class='kpis'>"
        + _kpi("sessions", s["sessions"])
        + _kpi("principals", s["principals"])
        + _kpi("tool calls", s["tool_calls"])
        + _kpi("code executions", s["executions"])
        + _kpi("denials", s["denials"], warn=True)
        + _kpi("errors", s["errors"], warn=True)
        + _kpi("failed authentications", s["auth_failures"], warn=True)
        + _kpi("values untokenised", s["untokenisations"])
        + "</div></section>"
    )
    days, series = _series(report, "calls", "executions")
    _, refused = _series(report, "denials", "errors")
    acc = report["access"]
    parts.append(
        "<section id='access'><h2>Access</h2><p class='lead'>Who called which upstream tools, and when.</p>"
        + column_chart(
            days, {"tool calls": series["calls"], "code executions": series["executions"]}, title="Calls per day"
        )
        + "<h3>By principal</h3>"
        + table(
            acc["by_principal"],
            [
                ("principal", "Principal", "s"),
                ("sessions", "Sessions", "n"),
                ("calls", "Tool calls", "n"),
                ("executions", "Executions", "n"),
                ("denials", "Denials", "n"),
                ("errors", "Errors", "n"),
                ("first", "First", "t"),
                ("last", "Last", "t"),
            ],
            "No access in this period.",
        )
        + "<h3>By upstream and tool</h3>"
        + table(
            acc["by_tool"],
            [
                ("upstream", "Upstream", "s"),
                ("tool", "Tool", "m"),
                ("calls", "Calls", "n"),
                ("principals", "Principals", "n"),
                ("denials", "Denials", "n"),
                ("errors", "Errors", "n"),
                ("avg_ms", "Avg ms", "n"),
            ],
            "No tool calls in this period.",
        )
        + "</section>"
    )
    pdata = report["personal_data"]
    parts.append(
        "<section id='personal-data'><h2>Personal data processed</h2><p class='lead'>Values detected in upstream "
        "results and replaced by tokens before reaching the agent or the sandbox, by entity type.</p>"
        + bar_chart(
            [(r["entity_type"], r["values_tokenised"]) for r in pdata["by_entity_type"]],
            title="Values tokenised by entity type",
            color=PALETTE[3],
        )
        + "<h3>By entity type and upstream</h3>"
        + table(
            pdata["by_upstream"],
            [
                ("entity_type", "Entity type", "m"),
                ("upstream", "Source", "s"),
                ("values_tokenised", "Values tokenised", "n"),
                ("events", "Events", "n"),
            ],
            "No personal data was processed in this period.",
        )
        + "</section>"
    )
    parts.append(
        "<section id='flows'><h2>Flows of real values</h2><p class='lead'>Tokens turned back into real values in "
        "outbound calls, by entity type and destination, with the policy rule that allowed each.</p>"
        + table(
            report["flows"]["untokenisations"],
            [
                ("entity_type", "Entity type", "m"),
                ("destination", "Destination", "m"),
                ("rule", "Rule", "m"),
                ("untokenisations", "Values", "n"),
                ("principals", "Principals", "n"),
            ],
            "No real values left the gateway in this period.",
        )
        + "</section>"
    )
    parts.append(_agent_raw_pii_html(report.get("agent_raw_pii")))
    ref = report["refusals"]
    parts.append(
        "<section id='refusals'><h2>Refusals</h2><p class='lead'>Calls and flows the policy denied, and requests "
        "that failed authentication.</p>"
        + column_chart(
            days,
            {"denials": refused["denials"], "errors": refused["errors"]},
            title="Denials and errors per day",
            colors=[PALETTE[1], PALETTE[2]],
            height=200,
        )
        + "<h3>Denied access and flows</h3>"
        + table(
            ref["denied"],
            [
                ("kind", "Event", "m"),
                ("refusal", "Refusal", "s"),
                ("rule", "Rule", "m"),
                ("entity_type", "Entity type", "m"),
                ("upstream", "Upstream", "s"),
                ("tool", "Tool", "m"),
                ("count", "Count", "n"),
                ("principals", "Principals", "n"),
            ],
            "Nothing was denied in this period.",
        )
        + "<h3>Failed authentication</h3>"
        + table(
            ref["auth_failed"],
            [
                ("reason", "Reason", "s"),
                ("client", "Client", "m"),
                ("count", "Count", "n"),
                ("first", "First", "t"),
                ("last", "Last", "t"),
            ],
            "No failed authentication in this period.",
        )
        + "</section>"
    )
    inc = report["incidents"]
    parts.append(
        "<section id='incidents'><h2>Code execution incidents</h2><p class='lead'>Sandbox runs that did not end "
        "normally: timeouts, memory kills, output limits and sandbox violations.</p>"
        + table(
            inc["by_outcome"],
            [("outcome", "Outcome", "m"), ("count", "Count", "n")],
            "Every code execution in this period ended normally.",
        )
        + (
            (
                "<h3>Incidents"
                + (f" (first {inc['listed_limit']})" if len(inc["events"]) >= inc["listed_limit"] else "")
                + "</h3>"
                + table(
                    inc["events"],
                    [
                        ("seq", "Seq", "n"),
                        ("ts", "Time", "t"),
                        ("principal", "Principal", "s"),
                        ("session_id", "Session", "m"),
                        ("outcome", "Outcome", "m"),
                        ("duration_ms", "ms", "n"),
                        ("cpu_s", "CPU s", "n"),
                        ("max_rss_mb", "RSS MB", "n"),
                    ],
                    "",
                )
            )
            if inc["events"]
            else ""
        )
        + (
            "<h3>Unfinished calls</h3><p>An intent was recorded but no outcome: Veil stopped between them.</p>"
            + table(
                inc["unfinished"],
                [
                    ("seq", "Seq", "n"),
                    ("ts", "Time", "t"),
                    ("principal", "Principal", "s"),
                    ("session_id", "Session", "m"),
                    ("method", "Method", "m"),
                    ("upstream", "Upstream", "m"),
                ],
                "",
            )
            if inc.get("unfinished")
            else ""
        )
        + "</section>"
    )
    pol = report["policies"]
    parts.append(
        "<section id='policies'><h2>Policy versions</h2><p class='lead'>The policy in force at the start of the "
        "period and every version loaded during it (version = SHA-256 of the document).</p>"
        + "<h3>In force at the start</h3>"
        + table(
            pol["in_force_at_start"],
            [("version", "Version", "m"), ("loaded_at", "Loaded", "t"), ("path", "File", "m")],
            "No policy load recorded before the period.",
        )
        + "<h3>Loaded during the period</h3>"
        + table(
            pol["loaded"],
            [
                ("loaded_at", "Loaded", "t"),
                ("version", "Version", "m"),
                ("reason", "Reason", "s"),
                ("path", "File", "m"),
            ],
            "No policy was loaded during the period.",
        )
        + (
            "<h3>Rejected documents</h3>"
            + table(pol["rejected"], [("ts", "Time", "t"), ("path", "File", "m"), ("error", "Error", "s")], "")
            if pol["rejected"]
            else ""
        )
        + "</section>"
    )
    parts.append(_integrity_html(report["integrity"]))
    parts.append(
        "<footer>Produced by <code>veil report</code> from the audit trail. Counts are aggregated by the database; "
        "the JSON and CSV exports of this report carry the same numbers.</footer></main></body></html>"
    )
    return "".join(parts)


def _agent_raw_pii_html(raw: dict[str, Any] | None) -> str:
    """Sessions whose agent sent raw PII (it only ever sees tokens: these are its own guesses or
    typed values), most first; those at or over the threshold flagged as possible probing."""
    if raw is None:
        return ""
    flagged = raw["flagged_sessions"]
    badge = (
        f"<span class='badge bad'>{flagged} session(s) flagged: {raw['threshold']}+ raw values</span>"
        if flagged
        else f"<span class='badge ok'>no session at {raw['threshold']}+ raw values</span>"
    )
    rows = [{**r, "flagged": "PROBING?" if r["flagged"] else ""} for r in raw["sessions"]]
    return (
        "<section id='agent-raw-pii'><h2>Raw personal data sent by the agent</h2><p class='lead'>The agent only "
        "sees tokens, so a raw value in its arguments is its own: a guess or a typed value. Many of them in one "
        "session can be probing an upstream that echoes what it is sent (an existence oracle no gateway can "
        "close; see docs/threat-model.md). Counts by entity type only, never values.</p>"
        + badge
        + table(
            rows,
            [
                ("flagged", "Flag", "s"),
                ("session_id", "Session", "m"),
                ("principal", "Principal", "s"),
                ("raw_values", "Raw values", "n"),
                ("entity_types", "Entity types", "m"),
                ("calls", "Calls", "n"),
                ("first", "First", "t"),
                ("last", "Last", "t"),
            ],
            "The agent sent no raw personal data in this period.",
        )
        + "</section>"
    )


def _integrity_html(integrity: dict[str, Any]) -> str:
    if integrity.get("verified") is None:
        body = "<p class='empty'>" + escape("; ".join(integrity.get("notes", []))) + "</p>"
    else:
        facts = [
            ("Result", _integrity_badge(integrity)),
            ("Events checked", escape(_n(integrity["events_checked"]))),
            ("Sequence range", escape(f"{integrity['first_seq'] or '-'} to {integrity['last_seq'] or '-'}")),
            ("Anchor", escape(integrity["anchor"] or "-")),
            (
                "Signatures checked against",
                "the trusted public key given to <code>veil report</code>"
                if integrity.get("public_key_trusted")
                else "the public keys stored with the checkpoints (pass --public-key to trust them independently)",
            ),
        ]
        if integrity["problem"]:
            facts.append(("First broken link", f"<b>{escape(integrity['problem'])}</b>"))
        body = "<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts) + "</table>"
        body += "<h3>Signed checkpoints</h3>" + table(
            integrity["checkpoints"],
            [
                ("id", "#", "n"),
                ("seq", "Seq", "n"),
                ("ts", "Signed", "t"),
                ("key_id", "Key", "m"),
                ("ok", "Valid", "s"),
                ("note", "Note", "s"),
            ],
            "No signed checkpoint covers this period: run `veil audit checkpoint` (or enable periodic checkpoints).",
        )
        for note in integrity.get("notes", []):
            body += f"<p class='lead'>{escape(note)}</p>"
    return (
        "<section id='integrity'><h2>Integrity</h2><p class='lead'>The hash chain over the period's events, "
        "recomputed from the rows, and the Ed25519-signed checkpoints that cover it.</p>" + body + "</section>"
    )


def pdf_report(html: str) -> bytes:
    """The same HTML, rendered by WeasyPrint (no network: the document has no external references)."""
    try:
        from weasyprint import HTML
    except (ImportError, OSError) as exc:  # OSError: pango/cairo system libraries missing
        raise VeilError(
            f"PDF output needs WeasyPrint and the Pango library ({type(exc).__name__}: {exc}); "
            "install libpango-1.0-0 and libpangoft2-1.0-0, or use --format html"
        ) from None
    return HTML(string=html, base_url=None, url_fetcher=_no_fetch).write_pdf()


def _no_fetch(url: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    raise ValueError(f"report rendering does not fetch external resources ({url[:40]})")


def json_report(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=False, default=str) + "\n"


def _key(row: dict[str, Any], metrics: set[str]) -> str:
    return "|".join(f"{k}={v}" for k, v in row.items() if k not in metrics and v is not None)


def csv_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str, Any]]:
    """Long form: (section, table, key, metric, value); numbers only, keyed by the row's labels."""
    out: list[tuple[str, str, str, str, Any]] = []

    def emit(section: str, name: str, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            metrics = {k for k, v in row.items() if isinstance(v, int | float) and not isinstance(v, bool)}
            metrics.discard("seq")
            key = _key(row, metrics)
            for metric in sorted(metrics):
                out.append((section, name, key, metric, row[metric]))

    emit("summary", "summary", [{k: v for k, v in report["summary"].items()}])
    for section in ("access", "personal_data", "flows", "refusals", "incidents"):
        for name, rows in report[section].items():
            if isinstance(rows, list):
                emit(section, name, rows)
    raw = report.get("agent_raw_pii")
    if raw is not None:
        for metric in ("threshold", "session_count", "flagged_sessions", "raw_values"):
            out.append(("agent_raw_pii", "totals", "", metric, raw[metric]))
        emit("agent_raw_pii", "sessions", [{**r, "flagged": int(r["flagged"])} for r in raw["sessions"]])
    for name in ("in_force_at_start", "loaded", "rejected"):
        for row in report["policies"][name]:
            out.append(("policies", name, _key(row, set()), "count", 1))
    integ = report["integrity"]
    if integ.get("verified") is not None:
        out.append(("integrity", "chain", "", "verified", int(bool(integ["verified"]))))
        out.append(("integrity", "chain", "", "events_checked", integ["events_checked"]))
        out.append(("integrity", "checkpoints", "", "count", len(integ["checkpoints"])))
        out.append(("integrity", "checkpoints", "", "valid", sum(1 for c in integ["checkpoints"] if c["ok"])))
    return out


def csv_report(report: dict[str, Any]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["section", "table", "key", "metric", "value"])
    writer.writerows(csv_rows(report))
    return buf.getvalue()


def period_label(start: date, end: date) -> str:
    return f"{start.isoformat()} to {end.isoformat()}"
