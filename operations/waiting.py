"""Wait steps: a step that parks its operation in *Waiting* until a person, a system or time wakes it.

``wait_for_signal("approval")`` (or ``wait_for_approval()``) is a chain step like any other. When
the engine reaches it, the operation becomes ``waiting`` and no worker holds it: the message is
acknowledged, nothing beats. A person approves or rejects it (every face), a system sends the
signal by name (API, CLI, ``operation_signal``); the payload, if any, becomes the value carried
into the next step. A timeout, checked by beat, ends the wait as the step says: ``fail`` (the
default: a retry waits again), ``continue`` (the carried value goes on unchanged) or ``cancel``.

``sleep_for(seconds)`` / ``sleep_until(when)`` are durable sleeps: a wait for the name ``sleep``
that only its time ends (beat, within TAP_RECONCILE_INTERVAL). The wake-up time is kept with the
operation, so a sleep paused and resumed (or a worker and beat restarted) still wakes at the time
it first said; an approve wakes it early.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from celery import Signature
from django.utils import timezone

from .workflow import step

WAIT_TASK = "operations.wait_for"
SLEEP_TASK = "operations.sleep"
#: The name a sleep waits under (``waiting_for``): no signal has it.
SLEEP = "sleep"
#: The longest sleep (a year): longer is a mistake, not a plan.
MAX_SLEEP = 366 * 24 * 3600.0
#: What a wait's timeout does.
ON_TIMEOUT = ("fail", "continue", "cancel")
MAX_NAME = 100


class WaitHere(Exception):
    """Raised by the wait step; the engine parks the operation (it is not a failure)."""

    def __init__(self, name: str, timeout: float | None, on_timeout: str, state: Any = None):
        super().__init__(name)
        self.name, self.timeout, self.on_timeout, self.state = name, timeout, on_timeout, state


@step(name=WAIT_TASK, atomic=False)
def wait_for(carry: Any = None, name: str = "approval", timeout: float | None = None,
             on_timeout: str = "fail") -> Any:
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
        raise ValueError(f"a wait's name is a text of 1 to {MAX_NAME} characters, not {name!r}")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise ValueError(f"a wait's timeout is a number of seconds above 0, or None, not {timeout!r}")
    if name.strip() == SLEEP:
        raise ValueError(f"{SLEEP!r} is the name sleeps wait under; give the signal another name")
    if on_timeout not in ON_TIMEOUT:
        raise ValueError(f"a wait's on_timeout is one of {', '.join(ON_TIMEOUT)}, not {on_timeout!r}")
    raise WaitHere(name.strip(), timeout, on_timeout)


def wait_for_signal(name: str, *, timeout: float | None = None, on_timeout: str = "fail") -> Signature:
    """A chain step that waits for the signal ``name`` (``operation_signal``), at most ``timeout``
    seconds if given; the signal's payload is carried into the next step."""
    return wait_for.s(name=name, timeout=timeout, on_timeout=on_timeout)


def wait_for_approval(*, timeout: float | None = None, on_timeout: str = "fail") -> Signature:
    """A chain step that waits until a person approves (Approve in the admin or on the page)."""
    return wait_for_signal("approval", timeout=timeout, on_timeout=on_timeout)


@step(name=SLEEP_TASK, atomic=False, context=True)
def sleep(ctx: Any, carry: Any = None, seconds: float | None = None, until: str | None = None) -> Any:
    """Park the operation until ``until`` (ISO 8601) or for ``seconds``; the carried value goes on."""
    wake = _wake_time(ctx.state, seconds, until)
    left = (wake - timezone.now()).total_seconds()
    if left <= 0:
        return carry
    raise WaitHere(SLEEP, left, "continue", state={"sleep_until": wake.isoformat()})


def _wake_time(state: Any, seconds: Any, until: Any) -> datetime:
    if isinstance(state, dict) and state.get("sleep_until"):  # asleep before: the time it said then
        return datetime.fromisoformat(state["sleep_until"])
    if (seconds is None) == (until is None):
        raise ValueError("a sleep takes seconds or until, one of the two")
    if until is not None:
        try:
            wake = datetime.fromisoformat(until)
        except (TypeError, ValueError):
            raise ValueError(f"a sleep's until is an ISO 8601 time, not {until!r}") from None
        return wake if timezone.is_aware(wake) else timezone.make_aware(wake)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= MAX_SLEEP:
        raise ValueError(f"a sleep's seconds are a number from 0 to {MAX_SLEEP:g}, not {seconds!r}")
    return timezone.now() + timedelta(seconds=seconds)


def sleep_for(seconds: float) -> Signature:
    """A chain step that parks the operation for ``seconds`` without holding a worker (beat wakes
    it); the value carried into it goes on to the next step."""
    return sleep.s(seconds=seconds)


def sleep_until(when: datetime | str) -> Signature:
    """A chain step that parks the operation until ``when`` (an aware datetime, or ISO 8601)."""
    if isinstance(when, datetime):
        when = (when if timezone.is_aware(when) else timezone.make_aware(when)).isoformat()
    return sleep.s(until=when)
