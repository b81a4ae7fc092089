"""A small supervisor for a worker: ``python -m operations.supervise [--grace S] -- COMMAND …``.

It runs COMMAND in a process group of its own and starts it again when it exits by itself — a
worker whose watchdog found it wedged (``operations.watchdog``), or one the OOM killer took —
after 1 s, doubling up to 30 s while it keeps dying young. On SIGINT or SIGTERM it passes SIGTERM
to the whole group, waits ``--grace`` seconds (3) for a warm shutdown, then SIGKILLs what is
left of the group and exits: nothing of it outlives it. Meant for development (``make run``: honcho
stops everything when one process exits, and kills its children after 5 s); in production the
process manager (systemd, a container's restart policy) plays this part.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

YOUNG = 60.0  # a child that ran shorter than this died young: wait longer before the next start


def kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m operations.supervise", description=__doc__.split("\n\n")[0])
    parser.add_argument("--grace", type=float, default=3.0, help="seconds between SIGTERM and SIGKILL at the end")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command (after --)")
    options = parser.parse_args(argv)
    command = options.command[1:] if options.command[:1] == ["--"] else options.command
    if not command:
        parser.error("give the command to supervise after --")

    stopping = False
    child: subprocess.Popen | None = None

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None:
            kill_group(child.pid, signal.SIGTERM)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    delay = 1.0
    while not stopping:
        started = time.monotonic()
        child = subprocess.Popen(command, start_new_session=True)
        while child.poll() is None and not stopping:
            time.sleep(0.2)
        if stopping:
            break
        ran = time.monotonic() - started
        kill_group(child.pid, signal.SIGKILL)  # what it left behind (pool children)
        delay = 1.0 if ran > YOUNG else min(30.0, delay * 2)
        print(f"operations.supervise: {command[0]} exited with {child.returncode} after {ran:.0f}s; "
              f"starting it again in {delay:.0f}s", file=sys.stderr, flush=True)
        deadline = time.monotonic() + delay
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.2)
    if child is not None:
        kill_group(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + options.grace
        while group_alive(child.pid) and time.monotonic() < deadline:
            child.poll()  # reap the leader as soon as it exits
            time.sleep(0.1)
        kill_group(child.pid, signal.SIGKILL)
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
