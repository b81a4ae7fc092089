"""Real Celery worker subprocesses for integration tests: start, wait until they answer, kill."""

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent.parent


class WorkerProcess:
    """One ``celery worker`` subprocess, in its own process group so a test can kill all of it."""

    def __init__(self, env, log_path, *, concurrency=2, pool="prefork", name=None, queues=None,
                 extra_args=(), supervised=False, wrapper=()):
        self.env = env
        self.log_path = Path(log_path)
        self.concurrency = concurrency
        self.pool = pool
        self.name = name or f"test-{uuid.uuid4().hex[:6]}"
        self.queues = queues
        self.extra_args = list(extra_args)
        #: Run under ``python -m operations.supervise``, which starts the worker again when it exits.
        self.supervised = supervised
        #: A command the worker runs under, e.g. ``["ip", "netns", "exec", "tap-w1"]`` (its own host).
        self.wrapper = list(wrapper)
        self.proc = None
        self._log = None
        #: Where this run's output begins in the log, which every restart appends to.
        self._log_start = 0

    def command(self):
        cmd = [
            sys.executable, "-m", "celery", "-A", "tapproject", "worker",
            "--loglevel", "INFO", "--pool", self.pool, "--concurrency", str(self.concurrency),
            "--hostname", f"{self.name}@%h", "--without-gossip", "--without-mingle",
        ]
        if self.queues:
            cmd += ["--queues", ",".join(self.queues)]
        cmd += self.extra_args
        if self.supervised:
            cmd = [sys.executable, "-m", "operations.supervise", "--grace", "3", "--", *cmd]
        return [*self.wrapper, *cmd]

    def start(self):
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self._log_start = self._log.seek(0, os.SEEK_END)
        self.proc = subprocess.Popen(
            self.command(), cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def wait_ready(self, timeout=60):
        """Block until the worker has executed a task end to end (broker → worker → result)."""
        from operations.tasks import ping

        deadline = time.monotonic() + timeout
        token = uuid.uuid4().hex
        # A ping published in the instant after another worker was killed can be handed to that
        # dead worker's pending BRPOP and lost (Redis has no ack): ask again every few seconds.
        results, asked = [], 0.0
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() - asked > 5:
                results.append(ping.apply_async(args=[token]))
                asked = time.monotonic()
            for result in results:
                if result.ready():
                    assert result.get(timeout=1)["pong"] == token
                    return self
            time.sleep(0.1)
        raise TimeoutError(f"worker did not answer within {timeout}s:\n{self.log_tail()}")

    def wait_started(self, timeout=60):
        """Block until the log of this (newly started) worker says it is ready: with another
        worker running, the ping of ``wait_ready`` may be answered by that one instead."""
        deadline = time.monotonic() + timeout
        while not re.search(rf"{re.escape(self.name)}@\S+ ready\.", self.log_text()):
            if not self.alive():
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker did not start within {timeout}s:\n{self.log_tail()}")
            time.sleep(0.1)
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def children(self):
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def worker_main(self):
        """The celery worker's main process (the supervisor's child, when supervised)."""
        if not self.supervised:
            return psutil.Process(self.proc.pid)
        children = psutil.Process(self.proc.pid).children()
        return children[0] if children else None

    def pool_children(self):
        main = self.worker_main()
        try:
            return main.children() if main else []
        except psutil.NoSuchProcess:
            return []

    def kill(self):
        """SIGKILL the whole worker (main process and pool children): a machine losing power."""
        if self.proc is None:
            return
        if self.supervised:  # its worker runs in a process group of its own
            try:
                os.kill(self.proc.pid, signal.SIGSTOP)  # it starts no new worker while we look
                descendants = psutil.Process(self.proc.pid).children(recursive=True)
            except (ProcessLookupError, psutil.NoSuchProcess):
                descendants = []
            for process in descendants:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self._close_log()

    def stop(self, timeout=30):
        """Warm shutdown (SIGTERM); SIGKILL if it does not finish in time."""
        if self.proc is None or not self.alive():
            self._close_log()
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        # Pool children that outlived their parent would hold database connections.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._close_log()

    def restart(self):
        self.stop()
        return self.start()

    def log_text(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_since_start(self):
        """The log of the current run only: a task an earlier run was killed in is not open here."""
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as log:
            log.seek(self._log_start)
            return log.read().decode(errors="replace")

    def log_tail(self, lines=60):
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _close_log(self):
        if self._log is not None:
            self._log.close()
            self._log = None



class BeatProcess:
    """One ``celery beat`` subprocess: the database scheduler, and the reconciler thread."""

    def __init__(self, env, log_path, schedule_path):
        self.env = env
        self.log_path = Path(log_path)
        self.schedule_path = Path(schedule_path)
        self.proc = None
        self._log = None

    def start(self):
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tapproject", "beat", "--loglevel", "INFO",
             "--schedule", str(self.schedule_path)],
            cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        return self

    def wait_reconciling(self, timeout=60):
        """Until the log says the reconciler thread started in beat's process."""
        deadline = time.monotonic() + timeout
        while "reconciler started in this process" not in self.log_text():
            if self.proc.poll() is not None:
                raise RuntimeError(f"beat exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"beat did not start its reconciler within {timeout}s:\n{self.log_text()[-3000:]}")
            time.sleep(0.1)
        return self

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_text(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
