"""The watchdog's rule (when a pool counts as wedged) and the supervisor that replaces a worker."""

import signal
import subprocess
import sys
import time
from types import SimpleNamespace

from operations.watchdog import waiting_too_long
from tests.support.worker import ROOT


def request(started=None):
    return SimpleNamespace(time_start=started, name="operations.run_step")


def test_a_step_waiting_longer_than_the_timeout_while_processes_are_free_means_wedged():
    seen, waiting = {}, request()
    assert waiting_too_long(0.0, seen, reserved=[waiting], active=[], processes=2, timeout=8) is None
    assert waiting_too_long(7.0, seen, reserved=[waiting], active=[], processes=2, timeout=8) is None
    assert waiting_too_long(9.0, seen, reserved=[waiting], active=[], processes=2, timeout=8) is waiting


def test_waiting_behind_busy_processes_is_normal_and_a_taken_step_is_forgotten():
    seen, waiting, busy = {}, request(), [request(started=1.0), request(started=2.0)]
    assert waiting_too_long(0.0, seen, reserved=[waiting, *busy], active=busy, processes=2, timeout=8) is None
    assert waiting_too_long(60.0, seen, reserved=[waiting, *busy], active=busy, processes=2, timeout=8) is None
    waiting.time_start = 61.0  # a process took it
    assert waiting_too_long(62.0, seen, reserved=[waiting], active=[waiting], processes=2, timeout=8) is None
    assert seen == {}


def test_the_supervisor_starts_its_command_again_and_stops_all_of_it(tmp_path):
    counter = tmp_path / "starts"
    child = (f"import pathlib, time; p = pathlib.Path({str(counter)!r}); "
             "p.write_text(str(int(p.read_text() or 0) + 1) if p.exists() else '1'); "
             "time.sleep(0.3 if p.read_text() == '1' else 60)")  # dies young once, then stays
    supervisor = subprocess.Popen([sys.executable, "-m", "operations.supervise", "--grace", "1", "--",
                                   sys.executable, "-c", child], cwd=ROOT, start_new_session=True,
                                  stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not (counter.exists() and counter.read_text() == "2"):
        assert time.monotonic() < deadline, "not started again"
        time.sleep(0.1)
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=10) == 0
    assert "exited with 0" in supervisor.stderr.read()
    import psutil

    left = [p for p in psutil.process_iter(["cmdline"]) if str(counter) in " ".join(p.info["cmdline"] or [])]
    assert left == []
