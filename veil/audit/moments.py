"""Reading the time bounds people type (`veil audit verify --from`, `veil report --to`, the
console's filters), so every surface reads ``2026-11-30`` the same way: a whole UTC day, an end
day included."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta


def parse_moment(value: str, *, end: bool = False) -> datetime:
    """``YYYY-MM-DD`` (a whole day; as an ``end`` it includes that day) or an ISO timestamp
    (naive means UTC). Raises ValueError naming the value (its first 40 characters)."""
    value = value.strip()
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return moment + timedelta(days=1) if end else moment
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value[:40]!r} is not a date (YYYY-MM-DD) or an ISO timestamp") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
