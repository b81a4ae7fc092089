"""The built-in operation kinds; each module registers itself with the catalogue on import."""

from . import arithmetic, batch_sum, bulk_insert, csv_import, csv_summary  # noqa: F401
