"""Big demo CSV files, written once and reused by later runs and by every backend and slot."""

import os
from pathlib import Path

from django.conf import settings

from operations.contrib.demo.files import write_demo_csv

ROOT = Path(__file__).resolve().parent.parent.parent
SHARED_CSV_DIR = ROOT / "var" / "test" / "scale-csv"


def shared_demo_csv(name, rows, *, fmt="records", bytes_per_row):
    """The demo CSV ``name`` of ``rows`` rows in the CSV folder, written once and reused.

    Every backend and slot has a CSV folder of its own: they share one copy of the file through
    hard links to var/test/scale-csv/ (the rows are the same every time, so a race is harmless).
    ``bytes_per_row`` (low, high) tells a cached file of another size, which is not ours."""
    path = Path(settings.TAP_CSV_DIR) / name
    shared = SHARED_CSV_DIR / path.name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(shared, path)
        except OSError:
            write_demo_csv(path, rows=rows, fmt=fmt)
            shared.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, shared)
            except OSError:
                pass
    size = path.stat().st_size
    low, high = bytes_per_row
    assert low * rows <= size <= high * rows + 100, f"{path}: {size} bytes for {rows} rows"
    return path
