"""Parameters shared by the kinds that work through rows in chunks (CSV import / summary, bulk insert)."""

from django import forms

from operations.catalogue import KindForm


class ChunkedForm(KindForm):
    chunk_rows = forms.IntegerField(required=False, min_value=1, max_value=1_000_000,
                                    help_text="Rows per checkpoint: a pause or cancel lands within one chunk.")
    rows_per_second = forms.IntegerField(required=False, min_value=1,
                                         help_text="Optional rate limit, to spare the database (or to watch it).")
