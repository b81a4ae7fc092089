"""Parts of one step run side by side, each in its own thread with its own database connection.

csv_import loads the byte ranges of a large file this way: PostgreSQL parses and indexes each
range's COPY in its own backend, so the import uses more than one core of the database server.
"""

import threading
from collections.abc import Callable, Sequence

from django.db import connections

from operations.exceptions import StopStep


def run_side_by_side(parts: Sequence[Callable[[threading.Event], None]], *, name: str) -> None:
    """Call each of ``parts`` with a shared ``stopping`` event, each in its own thread, and wait
    for all of them. As soon as one raises, ``stopping`` is set, for the others to stop before
    their next piece of work; then the first error is raised here — a StopStep (a pause or
    cancel seen at a checkpoint) only if no part failed otherwise. If this thread is interrupted
    meanwhile (a soft time limit), the parts are stopped and waited for, then it goes on."""
    stopping = threading.Event()
    errors: list[BaseException] = []

    def run(part):
        try:
            part(stopping)
        except BaseException as exc:  # handed to the calling thread
            errors.append(exc)
            stopping.set()
        finally:
            connections.close_all()  # this thread's connections only

    threads = [threading.Thread(target=run, args=(part,), name=f"{name}-{number}", daemon=True)
               for number, part in enumerate(parts)]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    finally:
        stopping.set()
        for thread in threads:
            thread.join()
    first = next((exc for exc in errors if not isinstance(exc, StopStep)), errors[0] if errors else None)
    errors.clear()  # each error's traceback holds its part's frames (its chunk): no cycle through here
    if first is None:
        return
    if isinstance(first, StopStep):
        raise StopStep(first.status)  # a fresh one: the parts' frames go now, not at a garbage collection
    try:
        raise first
    finally:
        first = None

