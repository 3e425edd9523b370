"""Strict RFC 3339 timestamps for filters given as text (HTTP queries, the CLI)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from .errors import ValidationError

# A date, a time and an offset (Z or +hh:mm): no date-only forms, no naive times,
# no epoch numbers, which would each leave the meaning to guesswork.
_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})"
)


def parse_rfc3339(value: str, name: str = "time") -> datetime:
    """Parse to an aware UTC datetime; raises ``ValidationError`` saying what is wanted."""
    match = _RFC3339.fullmatch(value.strip())
    problem = None
    if match is not None:
        date, clock, fraction, offset = match.groups()
        # Python reads at most microseconds; finer digits cannot matter to stored times.
        micros = (fraction or "0")[:6].ljust(6, "0")
        offset = "+00:00" if offset in ("Z", "z") else offset
        try:
            return datetime.fromisoformat(f"{date}T{clock}.{micros}{offset}").astimezone(UTC)
        except ValueError as exc:
            problem = str(exc)
        except OverflowError:
            # A valid local time whose UTC instant is before year 1 or after 9999.
            problem = "its UTC instant is outside 0001-01-01 to 9999-12-31"
    raise ValidationError(
        f"{name} must be an RFC 3339 date-time with an offset, e.g. "
        f"2026-01-02T03:04:05.000006Z; got {value[:64]!r}" + (f" ({problem})" if problem else "")
    )
