"""Month partitions of ``audit_events``: create on demand, list, drop.

Why monthly partitions: retention becomes a ``DROP TABLE`` of whole months (instant, no dead
tuples, not blocked by the append-only row trigger) and reports for a period only scan the
months they cover. Partition bounds are calendar months in UTC, named ``audit_events_yYYYYmMM``.

The DEFAULT partition exists so an insert never fails for want of a partition; it should stay
empty. PostgreSQL refuses to create a partition whose range already has rows in DEFAULT, so
:func:`ensure_partition` moves such rows into the new partition in the same transaction. Both
DDL operations run in database functions (migrations/versions/0004_roles.py): the role Veil serves
as has no DDL rights, and the event trigger that guards the audit tables lets only them through.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

PARENT = "audit_events"
DEFAULT = "audit_events_default"
_NAME = re.compile(r"^audit_events_y(\d{4})m(\d{2})$")


@dataclass(frozen=True, order=True)
class Month:
    year: int
    month: int

    @classmethod
    def of(cls, ts: datetime) -> Month:
        ts = ts.astimezone(UTC)
        return cls(ts.year, ts.month)

    @property
    def start(self) -> datetime:
        return datetime(self.year, self.month, 1, tzinfo=UTC)

    def next(self) -> Month:
        return Month(self.year + self.month // 12, self.month % 12 + 1)

    def minus(self, months: int) -> Month:
        index = self.year * 12 + (self.month - 1) - months
        return Month(index // 12, index % 12 + 1)

    @property
    def table(self) -> str:
        return f"audit_events_y{self.year:04d}m{self.month:02d}"

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


def existing(conn: sa.Connection) -> list[Month]:
    """Month partitions attached to ``audit_events``, oldest first."""
    names = conn.execute(
        sa.text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'audit_events'::regclass"
        )
    ).scalars()
    months = []
    for name in names:
        m = _NAME.match(name)
        if m:
            months.append(Month(int(m.group(1)), int(m.group(2))))
    return sorted(months)


def ensure_partition(conn: sa.Connection, month: Month) -> bool:
    """Create ``month``'s partition if missing (moving any rows DEFAULT holds for it); True if created.

    Done by ``veil_audit_ensure_partition`` (migration 0004), a SECURITY DEFINER function, so the
    runtime role can roll over months without DDL rights. Callers serialise on the chain-head
    lock, so two processes never race to create the same one.
    """
    if conn.execute(sa.text("SELECT to_regclass(:n)"), {"n": month.table}).scalar() is not None:
        return False
    return bool(conn.execute(sa.text("SELECT veil_audit_ensure_partition(:d)"), {"d": month.start.date()}).scalar())


def drop_partition(conn: sa.Connection, month: Month) -> None:
    """Drop a whole month through ``veil_audit_drop_month``, which allows only what retention does:
    the oldest month, ended before last month began, right after a ``retention.drop`` event
    naming it was appended (see :mod:`veil.audit.retention`)."""
    conn.execute(sa.text("SELECT veil_audit_drop_month(:d)"), {"d": month.start.date()})


def months_in_default(conn: sa.Connection) -> list[Month]:
    rows = conn.execute(sa.text(f"SELECT DISTINCT date_trunc('month', ts AT TIME ZONE 'UTC') FROM {DEFAULT}")).scalars()
    return sorted(Month(r.year, r.month) for r in rows)


class PartitionCache:
    """Which months are known to exist, so the hot path checks the catalogue once a month.

    A month is remembered only after the transaction that ensured it committed (``add``), so a
    rolled-back creation is never trusted.
    """

    def __init__(self) -> None:
        self._known: set[Month] = set()
        self._lock = threading.Lock()

    def known(self, month: Month) -> bool:
        with self._lock:
            return month in self._known

    def add(self, months: set[Month] | list[Month]) -> None:
        with self._lock:
            self._known.update(months)

    def forget(self, month: Month) -> None:
        with self._lock:
            self._known.discard(month)
