"""Wait steps: a step that parks its operation in *Waiting* until a person or a system signals it.

``wait_for_signal("approval")`` (or ``wait_for_approval()``) is a chain step like any other. When
the engine reaches it, the operation becomes ``waiting`` and no worker holds it: the message is
acknowledged, nothing beats. A person approves or rejects it (every face), a system sends the
signal by name (API, CLI, ``operation_signal``); the payload, if any, becomes the value carried
into the next step. A timeout, checked by beat, ends the wait as the step says: ``fail`` (the
default: a retry waits again), ``continue`` (the carried value goes on unchanged) or ``cancel``.
"""

from __future__ import annotations

from typing import Any

from celery import Signature

from .workflow import step

WAIT_TASK = "operations.wait_for"
#: What a wait's timeout does.
ON_TIMEOUT = ("fail", "continue", "cancel")
MAX_NAME = 100


class WaitHere(Exception):
    """Raised by the wait step; the engine parks the operation (it is not a failure)."""

    def __init__(self, name: str, timeout: float | None, on_timeout: str):
        super().__init__(name)
        self.name, self.timeout, self.on_timeout = name, timeout, on_timeout


@step(name=WAIT_TASK, atomic=False)
def wait_for(carry: Any = None, name: str = "approval", timeout: float | None = None,
             on_timeout: str = "fail") -> Any:
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
        raise ValueError(f"a wait's name is a text of 1 to {MAX_NAME} characters, not {name!r}")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise ValueError(f"a wait's timeout is a number of seconds above 0, or None, not {timeout!r}")
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
