"""The seed operation kinds (arithmetic, csv_import, csv_summary, bulk_insert, batch_sum), their
tables, settings, CLI verbs and the batch service's /grouptasks and /tasks endpoints.

Optional: add ``"operations.contrib.demo"`` to INSTALLED_APPS (after ``"operations"``) to get them;
a host that does not gets none of it.
"""
