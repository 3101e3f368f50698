"""Reports and charts: ``veil report`` in the browser, and the trail's activity over time.

Reports are built by ``veil.compliance`` exactly as the CLI builds them (same queries, same
renderers), so a download from the console and a file from ``veil report`` carry the same numbers.
Charts reuse ``veil.compliance.charts`` (inline SVG, no script).
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import anyio.to_thread
import sqlalchemy as sa
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from veil.audit import events as ev
from veil.compliance.charts import PALETTE, bar_chart, column_chart
from veil.compliance.queries import Period

FORMATS = ("html", "pdf", "csv", "json")
KINDS = ("full", "ropa", "access-log")
MEDIA = {"html": "text/html", "pdf": "application/pdf", "csv": "text/csv", "json": "application/json"}
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'"


def _period(q: Any, *, default_days: int = 30) -> tuple[Period, str, str]:
    today = datetime.now(UTC).date()
    start_s = str(q.get("from") or (today - timedelta(days=default_days - 1)).isoformat())
    end_s = str(q.get("to") or today.isoformat())
    try:
        start, end = date.fromisoformat(start_s), date.fromisoformat(end_s)
    except ValueError:
        raise ValueError("the period is given as whole days: YYYY-MM-DD") from None
    if end < start:
        raise ValueError("'to' must not be before 'from'")
    if (end - start).days > 400:
        raise ValueError("a period is at most 400 days")
    lo = datetime(start.year, start.month, start.day, tzinfo=UTC)
    hi = datetime(end.year, end.month, end.day, tzinfo=UTC) + timedelta(days=1)
    principal = str(q.get("principal") or "").strip() or None
    upstream = str(q.get("upstream") or "").strip() or None
    return Period(lo, hi, principal, upstream), start.isoformat(), end.isoformat()


async def form(c: Any, ctx: Any) -> Response:
    _, start, end = _period(ctx.request.query_params)
    return c.render(ctx, "reports.html", nav="reports", start=start, end=end, kinds=KINDS, formats=FORMATS)


async def download(c: Any, ctx: Any) -> Response:
    from veil.console.app import SECURITY_HEADERS

    q = ctx.request.query_params
    period, start, end = _period(q)
    kind, fmt = str(q.get("kind") or "full"), str(q.get("format") or "html")
    if kind not in KINDS or fmt not in FORMATS:
        raise ValueError(f"kind is one of {', '.join(KINDS)}; format one of {', '.join(FORMATS)}")
    if kind == "access-log" and fmt not in ("csv", "json"):
        raise ValueError("the access log is written as csv or json (it can hold millions of rows)")
    ctx.kind = ev.CONSOLE_EXPORT
    ctx.detail = {"what": f"report.{kind}", "format": fmt}
    suffix = "jsonl" if kind == "access-log" and fmt == "json" else fmt
    name = f"veil-{kind}-{start}-to-{end}.{suffix}"
    inline = q.get("view") == "1" and fmt == "html"
    headers = {
        **SECURITY_HEADERS,
        "content-security-policy": REPORT_CSP,
        "content-disposition": f'{"inline" if inline else "attachment"}; filename="{name}"',
    }
    if kind == "access-log":
        from veil.console.app import _threaded

        return StreamingResponse(
            _threaded(lambda: _access_log(c.services.engine, period, fmt)),
            media_type="text/csv" if fmt == "csv" else "application/x-ndjson",
            headers=headers,
        )
    body = await anyio.to_thread.run_sync(lambda: _build(c.services, period, kind, fmt))
    return Response(body, media_type=MEDIA[fmt], headers=headers)


def _build(services: Any, period: Period, kind: str, fmt: str) -> bytes:
    from veil.compliance import render

    with services.engine.connect() as conn:
        if kind == "ropa":
            from veil.compliance.ropa import build_ropa, ropa_csv, ropa_html
            from veil.policies import load_policy

            data = build_ropa(conn, period, load_policy(services.policy_path))
            if fmt == "json":
                return (json.dumps(data, indent=2) + "\n").encode()
            if fmt == "csv":
                return ropa_csv(data).encode()
            html = ropa_html(data)
        else:
            from veil.compliance.queries import build_report

            data = build_report(conn, period, public_key=services.public_key)
            if fmt == "json":
                return render.json_report(data).encode()
            if fmt == "csv":
                return render.csv_report(data).encode()
            html = render.html_report(data)
    return html.encode() if fmt == "html" else render.pdf_report(html)


def _access_log(engine: sa.Engine, period: Period, fmt: str) -> Any:
    from veil.compliance.ropa import ACCESS_LOG_COLUMNS, access_log

    with engine.connect() as conn:
        if fmt == "csv":
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow(ACCESS_LOG_COLUMNS)
            for row in access_log(conn, period):
                writer.writerow(row)
                if buf.tell() > 64 * 1024:
                    yield buf.getvalue()
                    buf.seek(0)
                    buf.truncate()
            yield buf.getvalue()
        else:
            for row in access_log(conn, period):
                yield json.dumps(dict(zip(ACCESS_LOG_COLUMNS, row, strict=True)), default=str) + "\n"


# One scan per chart family, aggregated by PostgreSQL: the daily counts (no JSON unpacked), then
# the entity counts (each row's ``entities`` unpacked once, grouped by day and type).
_DAILY = """
    SELECT to_char(date_trunc('day', ts AT TIME ZONE 'UTC'), 'YYYY-MM-DD') AS day,
           count(*) FILTER (WHERE kind = :call) AS calls, count(*) FILTER (WHERE kind = :exec) AS executions,
           count(*) FILTER (WHERE outcome = 'denied') AS denials,
           count(*) FILTER (WHERE outcome NOT IN ('ok', 'denied', 'pending')) AS errors
    FROM audit_events WHERE {where} GROUP BY 1
"""
_ENTITIES = """
    SELECT to_char(date_trunc('day', a.ts AT TIME ZONE 'UTC'), 'YYYY-MM-DD') AS day, e.key AS entity_type,
           sum(e.value::bigint) AS n
    FROM audit_events a, jsonb_each_text(a.entities) e
    WHERE {where} GROUP BY 1, 2
"""


def _charts(services: Any, period: Period) -> dict[str, str]:
    where, params = period.where()
    params |= {"call": ev.TOOL_CALL, "exec": ev.CODE_EXECUTE}
    qualified = (
        where.replace("ts ", "a.ts ").replace("principal =", "a.principal =").replace("upstream =", "a.upstream =")
    )
    with services.engine.connect() as conn:
        daily = {r.day: r for r in conn.execute(sa.text(_DAILY.format(where=where)), params)}
        per_day: dict[str, float] = {}
        per_type: dict[str, float] = {}
        for r in conn.execute(sa.text(_ENTITIES.format(where=qualified)), params):
            per_day[r.day] = per_day.get(r.day, 0.0) + float(r.n)
            per_type[r.entity_type] = per_type.get(r.entity_type, 0.0) + float(r.n)
    days = []
    d = period.start.date()
    while d < period.end.date():
        days.append(d.isoformat())
        d += timedelta(days=1)

    def series(key: str) -> list[float]:
        return [float(getattr(daily[day], key)) if day in daily else 0.0 for day in days]

    types = sorted(per_type.items(), key=lambda kv: (-kv[1], kv[0]))
    return {
        "calls": column_chart(
            days, {"tool calls": series("calls"), "code executions": series("executions")}, title="Calls per day"
        ),
        "denials": column_chart(
            days,
            {"denials": series("denials"), "errors": series("errors")},
            title="Denials and errors per day",
            colors=[PALETTE[1], PALETTE[2]],
            height=200,
        ),
        "entities": column_chart(
            days,
            {"values tokenised": [per_day.get(day, 0.0) for day in days]},
            title="Personal data values tokenised per day",
            colors=[PALETTE[3]],
            height=200,
        ),
        "types": bar_chart(types, title="Values tokenised by entity type", color=PALETTE[3]),
    }


async def charts(c: Any, ctx: Any) -> Response:
    period, start, end = _period(ctx.request.query_params)
    svgs = await anyio.to_thread.run_sync(_charts, c.services, period)
    return c.render(
        ctx,
        "charts.html",
        nav="charts",
        start=start,
        end=end,
        svgs=svgs,
        principal_filter=period.principal or "",
        upstream_filter=period.upstream or "",
    )


def routes(c: Any) -> list[Route]:
    return [
        Route("/reports", c.page("reports", form)),
        Route("/reports/download", c.page("reports.download", download)),
        Route("/charts", c.page("charts", charts)),
    ]
