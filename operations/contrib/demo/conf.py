"""The demo kinds' settings, with their defaults (docs/settings.md). Read when used."""

from pathlib import Path

from django.conf import settings

from operations.conf import (
    PREFIX,
    AppSettings,
    Option,
    non_negative_number,
    path_or_none,
    positive_int,
    positive_int_or_none,
)


def _default_csv_dir():
    return Path(settings.MEDIA_ROOT) / "operations" / "csv" if settings.MEDIA_ROOT else None


OPTIONS = [
    Option("CSV_DIR", _default_csv_dir, path_or_none,
           "Server-side CSV files that csv_import and csv_summary may read (the demo files among them). "
           "Default: MEDIA_ROOT/operations/csv."),
    Option("CSV_CHUNK_ROWS", 50_000, positive_int, "Rows per checkpoint of the CSV import and summary."),
    Option("CSV_IMPORT_RANGES", 2, positive_int,
           "On PostgreSQL, csv_import loads a large file (four chunks at least) in byte ranges through "
           "up to this many connections side by side (ranges + 1 per import): a connection done with its "
           "range takes the second half of the largest one left (never after a quoted field); "
           "1: from the first row to the last."),
    Option("CSV_MAX_UPLOAD_MB", 200, positive_int, "The largest CSV upload accepted, in MB."),
    Option("CSV_IMPORT_MAX_CONCURRENT", 1, positive_int_or_none,
           "Unfinished csv_import operations allowed per user (None: no limit)."),
    Option("BULK_CHUNK_ROWS", 10_000, positive_int, "Rows per checkpoint of bulk_insert."),
    Option("BATCH_MIN_SECONDS", 3.0, non_negative_number, "Each batch_sum task takes at least this long."),
    Option("BATCH_MAX_SECONDS", 10.0, non_negative_number, "… and at most this long."),
]

conf = AppSettings(PREFIX, OPTIONS)
