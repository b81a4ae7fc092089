"""Which errors mean the database (or the disk under it) is unavailable, not that a step is wrong.

A step that meets one is neither retried nor failed: its operation stays active, its heartbeat
goes stale, and once the database answers again beat's reconciler interrupts it after the lease
and resumes it by the kind's recovery policy — as after a crash. Failing it would ask a person to
retry what is nobody's fault, and the write that marks it failed is as likely to fail as the step.
"""

from __future__ import annotations

import errno

from django.db import InterfaceError, OperationalError

#: SQLite reports a wrong statement as OperationalError too: those are the step's own bugs.
_SQLITE_STATEMENT_ERRORS = ("no such table", "no such column", "has no column", "syntax error",
                            "no such function", "already exists")
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS}


def _driver_errors() -> tuple[type[BaseException], ...]:
    """psycopg's own connection errors: raw cursors (COPY) raise them unwrapped by Django."""
    try:
        import psycopg
    except ImportError:
        return ()
    return (psycopg.OperationalError, psycopg.InterfaceError)


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says the database or its disk is unavailable."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS:
            return True
        if isinstance(exc, (OperationalError, InterfaceError, *_driver_errors())):
            text = str(exc).lower()
            return not any(statement in text for statement in _SQLITE_STATEMENT_ERRORS)
        exc = exc.__cause__ or exc.__context__
    return False
