"""Deleting an operation with many stored rows from the admin: time, page size, web worker memory.

    .venv/bin/python bench/delete.py [--rows 1000000]

Loads ``--rows`` records for one csv_import operation (COPY, as the import does) into its own
PostgreSQL database, serves the project with gunicorn (one sync worker, production-like: DEBUG
off), logs in as a superuser and, through HTTP as a person would, opens the admin's delete
confirmation and confirms it. It prints how long each took, the confirmation page's size, and how
much the gunicorn worker's resident memory grew (sampled every 20 ms), against the targets:
under 5 s and under 50 MB of growth. Exits 0 when a target is missed (a report, not a test).
"""

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import ROOT, configure_environment, database_url, reset_database, setup_django

DB = "tapbench_delete"
VAR = ROOT / "var" / "bench" / "delete"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_rows(rows):
    from operations import services
    from operations.contrib.demo.csvio import chunks
    from operations.contrib.demo.files import RECORD_HEADER, write_demo_csv
    from operations.contrib.demo.kinds.csv_import import load_chunk
    from operations.models import Operation

    path = write_demo_csv(VAR / "rows.csv", rows=rows)
    operation = services.operation_start(kind="arithmetic", params={"steps": 1}, actor="cli")
    Operation.objects.filter(pk=operation.pk).update(kind="csv_import", status="completed")
    for chunk, _ in chunks(None, path, RECORD_HEADER, path.name, 50_000, blocks=True):
        load_chunk(operation.pk, chunk, path.name)
    return operation.pk


class Peak(threading.Thread):
    """The largest RSS of a process, sampled until stopped."""

    def __init__(self, pid):
        import psutil

        super().__init__(daemon=True)
        self.process, self.peak, self.done = psutil.Process(pid), 0, threading.Event()
        self.start_rss = self.process.memory_info().rss

    def run(self):
        while not self.done.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.02)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    options = parser.parse_args(argv)
    import psutil
    import requests

    VAR.mkdir(parents=True, exist_ok=True)
    reset_database(DB)
    configure_environment(database_url=database_url(DB), broker_url="memory://", var_dir=VAR)
    setup_django()
    from django.contrib.auth.models import User

    User.objects.create_superuser("bench", password="bench-pass-12345")
    started = time.monotonic()
    operation_id = load_rows(options.rows)
    print(f"loaded {options.rows:,} records for operation {operation_id} in {time.monotonic() - started:.1f} s")

    port = free_port()
    log = open(VAR / "gunicorn.log", "wb")
    web = subprocess.Popen([sys.executable, "-m", "gunicorn", "tapproject.wsgi:application", "--bind",
                            f"127.0.0.1:{port}", "--workers", "1", "--worker-class", "sync", "--timeout", "600"],
                           cwd=ROOT, env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT,
                           start_new_session=True)
    try:
        base, session = f"http://127.0.0.1:{port}", requests.Session()
        for _ in range(300):
            try:
                if session.get(f"{base}/admin/login/", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        session.post(f"{base}/admin/login/", data={"username": "bench", "password": "bench-pass-12345",
                                                    "csrfmiddlewaretoken": session.cookies["csrftoken"],
                                                    "next": "/admin/"}, headers={"Referer": f"{base}/admin/login/"})
        (worker,) = psutil.Process(web.pid).children()
        session.get(f"{base}/admin/", timeout=30)  # warm: the first request imports the admin
        peak = Peak(worker.pid)
        peak.start()
        url = f"{base}/admin/operations/operation/{operation_id}/delete/"
        t0 = time.monotonic()
        page = session.get(url, timeout=600)
        t1 = time.monotonic()
        done = session.post(url, data={"post": "yes", "csrfmiddlewaretoken": session.cookies["csrftoken"]},
                            headers={"Referer": url}, timeout=600, allow_redirects=False)
        t2 = time.monotonic()
        peak.done.set()
        peak.join()
    finally:
        os.killpg(web.pid, signal.SIGTERM)
        web.wait(timeout=30)
    from operations.contrib.demo.models import Record

    left = Record.objects.filter(operation_id=operation_id).count()
    growth = (peak.peak - peak.start_rss) / 2**20
    counted = re.search(r"([\d,]+) row\(s\) of data it stored", page.text)
    print(f"confirmation: HTTP {page.status_code}, {len(page.content):,} B, {t1 - t0:.2f} s"
          f" (says: {counted.group(0) if counted else 'no count'})")
    print(f"delete: HTTP {done.status_code}, {t2 - t1:.2f} s; records left: {left}")
    print(f"web worker RSS: {peak.start_rss / 2**20:.1f} MB before, peak {peak.peak / 2**20:.1f} MB "
          f"(+{growth:.1f} MB)")
    total = t2 - t0
    print(f"{'PASS' if total < 5 else 'MISS'}  confirmation + delete of {options.rows:,} rows: {total:.2f} s "
          f"(target < 5 s)")
    print(f"{'PASS' if growth < 50 else 'MISS'}  web worker RSS growth: {growth:.1f} MB (target < 50 MB)")
    if left or done.status_code != 302:
        return 1
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
