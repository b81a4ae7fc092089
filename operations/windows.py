"""Pause windows: "08:00-18:00" — times of day (TIME_ZONE) when an operation must not run.

Beat's reconciler pauses a running operation whose window (its own, else its kind's) is open,
with a planned resume at the time it closes (``operations.services.operations_keep_windows``).
A window may wrap midnight ("22:00-06:00"); one that opens when it closes ("08:00-08:00") is
empty: it never opens.
"""

from __future__ import annotations

import re
from datetime import datetime, time, timedelta

from django.utils import timezone

WINDOW = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")


def parse_window(text: str) -> tuple[time, time]:
    """(opens, closes) of "HH:MM-HH:MM"; ValueError saying what a window looks like otherwise."""
    match = WINDOW.match(text.strip()) if isinstance(text, str) else None
    if not match:
        raise ValueError(f'a pause window is "HH:MM-HH:MM" (24-hour, e.g. "08:00-18:00"), not {text!r:.40}')
    return time(int(match[1]), int(match[2])), time(int(match[3]), int(match[4]))


def window_closes(text: str, now: datetime | None = None) -> datetime | None:
    """When the window ``text`` closes if it is open at ``now``; None if it is not open."""
    opens, closes = parse_window(text)
    if opens == closes:  # empty
        return None
    local = timezone.localtime(now or timezone.now())
    today_open = local.replace(hour=opens.hour, minute=opens.minute, second=0, microsecond=0)
    today_close = local.replace(hour=closes.hour, minute=closes.minute, second=0, microsecond=0)
    if opens < closes:  # within one day
        return today_close if today_open <= local < today_close else None
    if local >= today_open:  # wraps midnight: open from tonight until tomorrow's close
        return today_close + timedelta(days=1)
    return today_close if local < today_close else None
