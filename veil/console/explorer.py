"""Audit explorer queries: filters, keyset pagination, export, chain status.

Pages are cut by ``seq`` (keyset pagination: ``seq < :before ORDER BY seq DESC LIMIT n``), never
by OFFSET, so page 1,000 costs what page 1 costs: PostgreSQL walks each month partition's
primary key backwards and stops after ``n`` matching rows. A time filter prunes partitions. No
page counts rows: a total over a million events would cost more than the page itself.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from veil.audit.moments import parse_moment

PAGE_SIZE = 50
EXPORT_BATCH = 2000
COLUMNS = (
    "seq, ts, id, kind, outcome, principal, roles, tenant, session_id, scope, upstream, tool, args_digest, "
    "entities, tokens, untokenised, decision, rule, duration_ms, policy_version, detail"
)
EXPORT_FIELDS = [c.strip() for c in COLUMNS.split(",")]


def _when(value: str, *, end: bool = False) -> datetime | None:
    """An empty filter is no bound; otherwise as the CLI reads it (:func:`parse_moment`)."""
    return parse_moment(value, end=end) if value.strip() else None


@dataclass
class Filters:
    """The explorer's filters, as given in the page's query string (identifiers, never values)."""

    start: str = ""  # from (inclusive)
    end: str = ""  # to (a whole day is included)
    principal: str = ""
    session: str = ""
    upstream: str = ""
    tool: str = ""
    kind: str = ""
    outcome: str = ""
    rule: str = ""
    entity: str = ""

    @classmethod
    def from_query(cls, query: Any) -> Filters:
        names = {f.name: ("from" if f.name == "start" else "to" if f.name == "end" else f.name) for f in fields(cls)}
        return cls(**{attr: str(query.get(param, "")).strip()[:200] for attr, param in names.items()})

    def query(self) -> dict[str, str]:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value:
                out["from" if f.name == "start" else "to" if f.name == "end" else f.name] = value
        return out

    def where(self) -> tuple[str, dict[str, Any]]:
        """SQL conditions and parameters; ``ValueError`` for a date that does not parse."""
        sql: list[str] = ["true"]
        params: dict[str, Any] = {}
        start, end = _when(self.start), _when(self.end, end=True)
        if start:
            sql.append("ts >= :start")
            params["start"] = start
        if end:
            sql.append("ts < :end")
            params["end"] = end
        for attr, column in (
            ("principal", "principal"),
            ("session", "session_id"),
            ("upstream", "upstream"),
            ("tool", "tool"),
            ("kind", "kind"),
            ("outcome", "outcome"),
            ("rule", "rule"),
        ):
            value = getattr(self, attr)
            if value:
                sql.append(f"{column} = :{attr}")
                params[attr] = value
        if self.entity:
            sql.append(
                "(entities ? :entity OR untokenised @> jsonb_build_array(jsonb_build_object('entity_type', "
                "CAST(:entity AS text))))"
            )
            params["entity"] = self.entity
        return " AND ".join(sql), params


@dataclass
class Page:
    rows: list[dict[str, Any]]
    newer: int | None  # ``after=`` for the newer page, when there is one
    older: int | None  # ``before=`` for the older page, when there is one


def page(
    conn: sa.Connection, filters: Filters, *, before: int | None = None, after: int | None = None, size: int = PAGE_SIZE
) -> Page:
    """One page of events, newest first, with the cursors of its neighbours."""
    custom_plans(conn)
    where, params = filters.where()
    params["n"] = size + 1
    if after is not None:
        params["after"] = after
        rows = _rows(
            conn, f"SELECT {COLUMNS} FROM audit_events WHERE {where} AND seq > :after ORDER BY seq ASC LIMIT :n", params
        )
        more_newer = len(rows) > size
        rows = list(reversed(rows[:size]))
        older = rows[-1]["seq"] if rows else None
        return Page(rows, rows[0]["seq"] if rows and more_newer else None, older)
    if before is not None:
        params["before"] = before
        where += " AND seq < :before"
    rows = _rows(conn, f"SELECT {COLUMNS} FROM audit_events WHERE {where} ORDER BY seq DESC LIMIT :n", params)
    more_older = len(rows) > size
    rows = rows[:size]
    return Page(
        rows, rows[0]["seq"] if rows and before is not None else None, rows[-1]["seq"] if rows and more_older else None
    )


def custom_plans(conn: sa.Connection) -> None:
    """Make PostgreSQL walk ``seq`` backwards and stop at the page's last row.

    Its estimates multiply the filters' selectivities as if independent, but they are not (a
    tool belongs to one upstream): it then expects a handful of matches and prefers to read a
    whole month and sort it (0.2 s at 300,000 events, seconds at millions). Without sorting the
    page costs what it scans until ``n`` rows match: milliseconds for any common filter; a rare
    one over a long period still scans (a session: add its day). Plans are made for each page's
    values, never generic ones from the driver's prepared statements.
    """
    conn.execute(sa.text("SET LOCAL enable_sort = off"))
    conn.execute(sa.text("SET LOCAL plan_cache_mode = force_custom_plan"))


def event(conn: sa.Connection, seq: int) -> dict[str, Any] | None:
    rows = _rows(conn, f"SELECT {COLUMNS} FROM audit_events WHERE seq = :seq", {"seq": seq})
    return rows[0] if rows else None


def _rows(conn: sa.Connection, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(sa.text(sql), params).mappings()]


_choices: tuple[float, dict[str, list[str]]] | None = None
CHOICES_TTL_S = 60.0


def choices(conn: sa.Connection) -> dict[str, list[str]]:
    """Values suggested for the kind and outcome filters (any value may be typed): those of the
    latest 20,000 events, computed at most once a minute."""
    global _choices
    if _choices is not None and time.monotonic() - _choices[0] < CHOICES_TTL_S:
        return _choices[1]
    out = {}
    for column in ("kind", "outcome"):
        out[column] = [
            r[0]
            for r in conn.execute(
                sa.text(
                    f"SELECT DISTINCT {column} FROM (SELECT {column} FROM audit_events ORDER BY seq DESC "
                    "LIMIT 20000) r ORDER BY 1"
                )
            )
        ]
    _choices = (time.monotonic(), out)
    return out


def export_rows(conn: sa.Connection, filters: Filters) -> Iterator[dict[str, Any]]:
    """Every event of the filtered set, oldest first, fetched in keyset batches."""
    custom_plans(conn)
    where, params = filters.where()
    last = 0
    while True:
        batch = _rows(
            conn,
            f"SELECT {COLUMNS} FROM audit_events WHERE {where} AND seq > :last ORDER BY seq LIMIT :n",
            {**params, "last": last, "n": EXPORT_BATCH},
        )
        yield from batch
        if len(batch) < EXPORT_BATCH:
            return
        last = batch[-1]["seq"]


def plain(row: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready: timestamps ISO, ids as text."""
    out = {}
    for k, v in row.items():
        if isinstance(v, datetime):
            v = v.isoformat()
        elif k == "id":
            v = str(v)
        out[k] = v
    return out


def csv_line(row: dict[str, Any] | None) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if row is None:
        writer.writerow(EXPORT_FIELDS)
    else:
        p = plain(row)
        writer.writerow(
            [
                json.dumps(p[k], sort_keys=True) if isinstance(p[k], dict | list) else ("" if p[k] is None else p[k])
                for k in EXPORT_FIELDS
            ]
        )
    return buf.getvalue()


def json_line(row: dict[str, Any]) -> str:
    return json.dumps(plain(row), sort_keys=False, default=str) + "\n"
