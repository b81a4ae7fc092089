"""csv_summary of the 1M-row demo people file, read through every face (issue 12, acceptance 2).

A real worker summarizes the file (written once, then shared through var/test/scale-csv); the
owner, logged in, then reads the detail page, result.csv, result.json and the API. The page's
table must hold every company and every count, cell by cell; both downloads must be the API's
result exactly (integers that stay integers, no thousands separators, nothing cut).
"""

import csv
import io
import json
import time
from collections import Counter
from html.parser import HTMLParser

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from operations import services
from operations.states import Status
from tests.support.files import shared_demo_csv
from tests.support.ops import wait_status

pytestmark = [pytest.mark.integration, pytest.mark.backends("sqlite-fs", "pg-redis")]

ROWS = 1_000_000
#: The demo people rows are 23-47 bytes each (≈ 34 on average at 1M).
BYTES_PER_ROW = (28, 40)
#: Each face must answer within this (seconds): the table is small, the file is not.
PAGE_SECONDS = 2.0


class ResultTable(HTMLParser):
    """The header cells and the body rows of the page's ``data-testid="result-table"``, as text."""

    def __init__(self):
        super().__init__()
        self.columns, self.rows, self.tables = [], [], 0
        self._inside, self._row, self._cell = False, None, None

    def handle_starttag(self, tag, attrs):
        if tag == "table" and ("data-testid", "result-table") in attrs:
            self.tables += 1
            self._inside = True
        elif self._inside and tag == "tr":
            self._row = []
        elif self._inside and tag in ("th", "td"):
            self._cell = []

    def handle_endtag(self, tag):
        if not self._inside:
            return
        if tag == "table":
            self._inside = False
        elif tag in ("th", "td"):
            self._row.append((tag, "".join(self._cell).strip()))
            self._cell = None
        elif tag == "tr":
            tags = {t for t, _ in self._row}
            cells = [text for _, text in self._row]
            if tags == {"th"}:
                self.columns.append(cells)
            else:
                assert tags == {"td"}, f"a row of mixed cells: {self._row}"
                self.rows.append(cells)

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def page_table(html):
    parser = ResultTable()
    parser.feed(html)
    assert parser.tables == 1, f"{parser.tables} result tables on the page"
    assert len(parser.columns) == 1, f"{len(parser.columns)} heading rows"
    return parser.columns[0], parser.rows


def expected_counts(path):
    """Per company, per gender, read from the file itself (not from the operation)."""
    counts = {}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        assert next(reader) == ["first_name", "last_name", "gender", "company"]
        for _first, _last, gender, company in reader:
            counts.setdefault(company, Counter())[gender] += 1
    return {company: dict(genders) for company, genders in counts.items()}


def as_table(counts):
    """(columns, rows) as text, laid out independently of the kind: companies in order, every
    gender seen anywhere as a column (0 where a company has none), then the total."""
    genders = sorted({gender for per_company in counts.values() for gender in per_company})
    rows = [[company, *(str(per_company.get(g, 0)) for g in genders), str(sum(per_company.values()))]
            for company, per_company in sorted(counts.items())]
    return ["company", *genders, "total"], rows


def integers_only(counts):
    """Every count is an int (1 == 1.0 in Python: equality alone would not see a float or a bool)."""
    return all(type(n) is int for per_company in counts.values() for n in per_company.values())


def timed_get(client, url):
    started = time.monotonic()
    response = client.get(url)
    seconds = time.monotonic() - started
    assert response.status_code == 200, (url, response.status_code, response.content[:300])
    print(f"{url}: {seconds * 1000:.0f} ms")
    assert seconds < PAGE_SECONDS, f"{url} took {seconds:.2f}s"
    return response


def test_a_summary_of_the_million_row_demo_file_shows_whole_and_downloads_equal_the_api(worker):
    path = shared_demo_csv("demo-people-1m.csv", ROWS, fmt="people", bytes_per_row=BYTES_PER_ROW)
    expected = expected_counts(path)
    assert sum(sum(g.values()) for g in expected.values()) == ROWS
    owner = User.objects.create_user("owner", password="pw-owner-1234")
    operation = services.operation_start(kind="csv_summary", params={"path": path.name}, owner=owner, actor="cli")
    done = wait_status(operation.pk, Status.COMPLETED, Status.FAILED, timeout=120)
    assert done.status == Status.COMPLETED, done.error
    assert done.progress_done == done.progress_total == ROWS

    client = Client()
    assert client.login(username="owner", password="pw-owner-1234")
    page = timed_get(client, reverse("operations:detail", args=[operation.pk])).content.decode()
    as_csv = timed_get(client, reverse("operations:result", args=[operation.pk, "csv"]))
    as_json = timed_get(client, reverse("operations:result", args=[operation.pk, "json"]))
    api = timed_get(client, f"/api/operations/{operation.pk}/").json()["result"]

    # The API's result is the file's counts, as integers.
    assert api == expected and integers_only(api)
    columns, rows = as_table(api)
    assert columns == ["company", "Agender", "Female", "Male", "Non-binary", "total"] and len(rows) == 40

    # The page: the whole table, every cell, in the kind's order (companies alphabetically).
    shown_columns, shown_rows = page_table(page)
    assert shown_columns == columns
    assert [row for row in rows if row not in shown_rows] == [], "rows of the result missing from the page"
    assert [row for row in shown_rows if row not in rows] == [], "rows on the page that are not the result's"
    assert shown_rows == rows
    assert f"{len(rows)} row(s)" in page and "Shortened here" not in page

    # result.json: the API's result exactly.
    assert as_json["Content-Type"] == "application/json"
    downloaded = json.loads(as_json.content)
    assert downloaded == api and integers_only(downloaded)

    # result.csv: the same table, cell for cell, numbers as plain digits.
    assert as_csv["Content-Type"] == "text/csv; charset=utf-8"
    parsed = list(csv.reader(io.StringIO(as_csv.content.decode("utf-8"))))
    assert parsed[0] == columns and parsed[1:] == rows
    assert all(cell.isdigit() for row in parsed[1:] for cell in row[1:])
    assert {row[0]: dict(zip(columns[1:-1], map(int, row[1:-1]))) for row in parsed[1:]} == {
        company: {g: per_company.get(g, 0) for g in columns[1:-1]} for company, per_company in api.items()}
