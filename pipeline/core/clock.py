"""The one clock: timezone-aware UTC now, and its ISO-8601 text form used in every record we write."""

from __future__ import annotations

import datetime as dt


def utc_now() -> dt.datetime:
    """The current time, timezone-aware, in UTC."""
    return dt.datetime.now(dt.UTC)


def as_utc(moment: dt.datetime | None) -> dt.datetime:
    """`moment` as an aware UTC datetime (naive values are read as UTC); now when None."""
    moment = moment or utc_now()
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def utc_iso(moment: dt.datetime | None = None, timespec: str = "seconds") -> str:
    """ISO-8601 text of `moment` (default now) in UTC, e.g. '2026-11-30T18:00:00+00:00'."""
    return as_utc(moment).astimezone(dt.UTC).isoformat(timespec=timespec)
