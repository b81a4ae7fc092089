"""Helpers for tests that run a web server of their own: a free port, and waiting for it to answer."""

import socket
import time

import requests


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_answers(url, *, timeout=60, session=None, proc=None, log=lambda: ""):
    """Poll ``url`` until it answers 200; fail with ``log()`` if it never does (or ``proc`` exits)."""
    get = (session or requests).get
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc is None or proc.poll() is None, log()
        try:
            response = get(url, timeout=10)
            if response.status_code == 200:
                return response
        except requests.RequestException:  # not listening yet, or still booting
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer in {timeout}s:\n{log()}")
