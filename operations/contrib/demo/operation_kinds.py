"""Imported by the operations catalogue in every process: registers the demo kinds."""

from .kinds import arithmetic, batch_sum, bulk_insert, csv_import, csv_summary, reviewed_import  # noqa: F401
