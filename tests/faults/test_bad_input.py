"""Bad input, face by face (issue 6): every refusal names what was wrong and writes nothing.

CSV files run through the real worker on SQLite and PostgreSQL (the COPY fast path); parameters
go through the API, the pages and the CLI; edited stored workflows are refused at resume.
"""

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.db import connection
from django.urls import reverse
from django.utils.html import escape

from operations import services
from operations.contrib.demo.csvio import MAX_LINE_BYTES
from operations.contrib.demo.models import Record
from operations.models import ConcurrencySlot, Operation
from operations.states import Status
from tests.faults.checker import check_operation
from tests.support.ops import wait_settled, wait_status
from tests.test_interfaces import api_client, operation_in, page_client
from tests.test_seed_operations import raw_file, start

ROOT = Path(__file__).resolve().parent.parent.parent


# --- CSV files --------------------------------------------------------------------------------

HEADER = b"id,name,email,amount,date\n"
CHUNK = 4


def good_rows(ids, end=b"\n"):
    return b"".join(b"%d,Row %d,r%d@example.org,%d.25,2020-01-%02d%s" % (i, i, i, i, i % 28 + 1, end) for i in ids)


def stored_ids(operation):
    return sorted(Record.objects.filter(operation_id=operation.pk).values_list("external_id", flat=True))


# A first full chunk (ids 1-4, lines 2-5), then two good rows (lines 6-7) and the bad row on
# line 8, all three in the second chunk. The reason differs by database (SQLite checks rows
# in Python, PostgreSQL's COPY checks them), the place may not.
BAD_ROWS = {
    "too-few-columns": (b"7,Row 7,r7@example.org,1.00\n", None,
                        {"sqlite": "expected 5 columns (id, name, email, amount, date), got 4",
                         "postgresql": "expected 5 columns (id, name, email, amount, date); "
                                       "the row ends before column date"}),
    "too-many-columns": (b"7,Row 7,r7@example.org,1.00,2020-01-07,surplus\n", None,
                         {"sqlite": "expected 5 columns (id, name, email, amount, date), got 6",
                          "postgresql": "expected 5 columns (id, name, email, amount, date); the row has more"}),
    "invalid-utf8": (b"7,Row \xff\xfe 7,r7@example.org,1.00,2020-01-07\n", None,
                     {"sqlite": "not valid UTF-8 (byte 0xff at position 6)",
                      "postgresql": 'invalid byte sequence for encoding "UTF8": 0xff'}),
    "nul-byte": (b"7,Row\x00 7,r7@example.org,1.00,2020-01-07\n", None,
                 {"sqlite": "contains a NUL byte",
                  "postgresql": 'invalid byte sequence for encoding "UTF8": 0x00'}),
    "name-too-long": (b"7," + b"N" * 201 + b",r7@example.org,1.00,2020-01-07\n", "name",
                      {"sqlite": "longer than 200 characters (201)",
                       "postgresql": "value too long for type character varying(200)"}),
    "line-too-long": (b"7," + b"N" * MAX_LINE_BYTES + b",r7@example.org,1.00,2020-01-07\n", None,
                      {"sqlite": f"the line is longer than {MAX_LINE_BYTES} bytes",
                       "postgresql": f"the line is longer than {MAX_LINE_BYTES} bytes"}),
    "empty-name": (b"7,,r7@example.org,1.00,2020-01-07\n", "name",
                   {"sqlite": "the value is empty", "postgresql": "the value is empty"}),
    "id-of-an-earlier-chunk": (b"2,Again,a2@example.org,1.00,2020-01-07\n", "id",
                               {"sqlite": "duplicate id 2 (an earlier row has the same id)",
                                "postgresql": "duplicate id 2 (an earlier row has the same id)"}),
    "id-twice-in-the-chunk": (b"5,Again,a5@example.org,1.00,2020-01-07\n", "id",
                              {"sqlite": "duplicate id 5 (line 6 has the same id)",
                               "postgresql": "duplicate id 5 (an earlier row has the same id)"}),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
@pytest.mark.integration
@pytest.mark.backends("sqlite-fs", "pg-redis")
def test_a_bad_row_fails_the_import_with_file_line_and_column_and_keeps_only_earlier_chunks(worker, case):
    bad_row, column, reasons = BAD_ROWS[case]
    name = f"{case}.csv"
    raw_file(name, HEADER + good_rows(range(1, 7)) + bad_row + good_rows(range(8, 12)))
    logged_before = len(worker.log_text())
    operation = start("csv_import", path=name, chunk_rows=CHUNK)
    failed = wait_settled(operation.pk)
    assert failed.status == Status.FAILED, failed.error
    where = f"{name}, line 8" + (f", column {column}" if column else "")
    # For people: the data error first, the engine's words after; in the log: one line, no traceback.
    assert failed.error.startswith(f"{where}: {reasons[connection.vendor]} (step 1 of 1"), failed.error
    assert "not retried" in failed.error
    logged = worker.log_text()[logged_before:]
    assert f"operation {operation.pk}: step 1 of 1 (operations.csv_import): {where}" in logged, logged
    assert "Traceback" not in logged, logged
    assert stored_ids(operation) == [1, 2, 3, 4]  # the first chunk; nothing of the failing one
    assert failed.checkpoint["rows"] == failed.progress_done == CHUNK
    assert check_operation(operation.pk) == []


@pytest.mark.integration
@pytest.mark.backends("sqlite-fs", "pg-redis")
def test_lines_are_counted_in_the_file_even_after_a_quoted_field_spans_lines(worker):
    """A record spanning lines keeps its first line, and the lines after it are not shifted."""
    name = "multiline-then-bad.csv"
    rows = good_rows([1]) + b'2,"Lee, Ann\nsecond line",a@example.org,1.00,2020-01-02\n' + good_rows([3, 4, 5])
    raw_file(name, HEADER + rows + b"6,Row 6,r6@example.org,1.00,not-a-date\n")
    operation = start("csv_import", path=name, chunk_rows=CHUNK)
    failed = wait_settled(operation.pk)
    assert failed.status == Status.FAILED, failed.error
    assert f"{name}, line 8, column date: " in failed.error, failed.error  # not 7: row 2 spans lines 3-4
    assert stored_ids(operation) == [1, 2, 3, 4]


def _completed_import(name, content):
    raw_file(name, content)
    operation = start("csv_import", path=name, chunk_rows=CHUNK)
    done = wait_status(operation.pk, Status.COMPLETED, Status.FAILED)
    assert done.status == Status.COMPLETED, done.error
    return done


def _stored(operation):
    return sorted((i, n, e, f"{float(a):.2f}", str(d)) for i, n, e, a, d in Record.objects.filter(
        operation_id=operation.pk).values_list("external_id", "name", "email", "amount", "date"))


def _parsed(content):
    rows = list(csv.reader(io.StringIO(content.decode("utf-8-sig"), newline="")))[1:]
    return sorted((int(i), n, e, f"{float(a):.2f}", d) for i, n, e, a, d in rows)


@pytest.mark.parametrize("case, content", [
    ("bom", b"\xef\xbb\xbf" + HEADER + good_rows(range(1, 11))),
    ("mixed-line-endings", b"id,name,email,amount,date\r\n" + b"".join(
        good_rows([i], end=b"\r\n" if i % 2 else b"\n") for i in range(1, 11))),
    # Backslashes and tabs are plain characters in a CSV file: COPY's faster text format, which
    # PostgreSQL's path uses for chunks without a quote, must not read them as escapes.
    ("backslashes-and-tabs", HEADER + good_rows(range(1, 5)) + b"5,\\N,back\\slash@example.org,5.00,2020-01-05\n"
                             b"6,tab\there \\.,t@example.org,6.00,2020-01-06\n7,end\\,e@example.org,7.00,2020-01-07\n"
                             + good_rows(range(8, 11))),
    ("quoted-comma-and-newline", HEADER + good_rows([1, 2]) + b'3,"Smith, John\nJr. ""JJ""",j@example.org,3.00,'
                                                              b'2020-01-03\n' + good_rows(range(4, 11))),
])
@pytest.mark.integration
@pytest.mark.backends("sqlite-fs", "pg-redis")
def test_well_formed_variants_import_every_row_exactly(worker, case, content):
    done = _completed_import(f"{case}.csv", content)
    assert done.result == {"rows": 10, "file": f"{case}.csv"}
    assert _stored(done) == _parsed(content)
    assert not Record.objects.filter(operation_id=done.pk, name__contains="\r").exists()
    assert not Record.objects.filter(operation_id=done.pk, name__contains="\ufeff").exists()
    if case == "backslashes-and-tabs":
        assert [Record.objects.get(operation_id=done.pk, external_id=i).name for i in (5, 6, 7)] == [
            "\\N", "tab\there \\.", "end\\"]
    if case == "quoted-comma-and-newline":
        assert Record.objects.get(operation_id=done.pk, external_id=3).name == 'Smith, John\nJr. "JJ"'


@pytest.mark.parametrize("name, content, message", [
    ("empty.csv", b"", "empty.csv: the file is empty"),
    ("header-only.csv", HEADER, "header-only.csv: the file has a header but no data rows"),
    ("blank-first-line.csv", b"\n" + HEADER + good_rows([1]), "blank-first-line.csv, line 1: line 1 is blank; "
                                                                "expected a header"),
])
@pytest.mark.integration
@pytest.mark.backends("sqlite-fs", "pg-redis")
def test_a_file_without_data_is_refused_at_start(worker, name, content, message):
    raw_file(name, content)
    with pytest.raises(services.InvalidParams) as refused:
        start("csv_import", path=name)
    assert refused.value.errors == {"path": [message]}
    assert Operation.objects.count() == 0 and ConcurrencySlot.objects.count() == 0


@pytest.mark.django_db
def test_a_refused_upload_is_not_kept():
    upload_dir = Path(settings.TAP_UPLOAD_DIR)
    before = set(upload_dir.iterdir()) if upload_dir.is_dir() else set()
    with pytest.raises(services.InvalidParams) as refused:
        services.operation_start(kind="csv_import", actor="cli",
                                 files={"file": SimpleUploadedFile("only-header.csv", HEADER)})
    assert refused.value.errors == {"file": ["only-header.csv: the file has a header but no data rows"]}
    assert Operation.objects.count() == 0
    assert set(upload_dir.iterdir()) == before


PEOPLE_HEADER = b"first_name,last_name,gender,company\n"


@pytest.mark.parametrize("case, bad_row, reason", [
    ("people-columns", b"Ann,Lee,Female\n", "expected 4 columns (first_name, last_name, gender, company), got 3"),
    ("people-utf8", b"Ann,Lee\xe9,Female,Acme\n", "not valid UTF-8 (byte 0xe9 at position 7)"),
])
@pytest.mark.integration
@pytest.mark.backends("sqlite-fs", "pg-redis")
def test_a_bad_row_fails_the_summary_with_its_line(worker, case, bad_row, reason):
    people = b"".join(b"P%d,Q%d,Female,Acme\n" % (i, i) for i in range(6))
    raw_file(f"{case}.csv", PEOPLE_HEADER + people + bad_row + people)
    operation = start("csv_summary", path=f"{case}.csv", chunk_rows=CHUNK)
    failed = wait_settled(operation.pk)
    assert failed.status == Status.FAILED, failed.error
    assert failed.error.startswith(f"{case}.csv, line 8: {reason} (step 1 of 1"), failed.error
    assert failed.result is None
    assert failed.checkpoint["counts"] == {"Acme": {"Female": CHUNK}}  # the failing chunk counted nothing


# --- parameters: API, pages, CLI --------------------------------------------------------------

TOO_MANY_TASKS = [{"paramA": 1, "paramB": 2}] * 1001

# kind, params as JSON, the field named, its message. The API checks the types its schema
# declares (operations.paramschema), then the kind's form.
JSON_PARAMS = [
    ("arithmetic", {"steps": "ten"}, "steps", "must be a whole number, not a string"),
    ("arithmetic", {"steps": True}, "steps", "must be a whole number, not true/false"),
    ("arithmetic", {"steps": False}, "steps", "must be a whole number, not true/false"),
    ("arithmetic", {"delay": True}, "delay", "must be a number, not true/false"),  # was read as 1.0
    ("arithmetic", {"steps": [5]}, "steps", "must be a whole number, not a list"),
    ("arithmetic", {"steps": []}, "steps", "must be a whole number, not a list"),  # was the default
    ("arithmetic", {"delay": {}}, "delay", "must be a number, not an object"),
    ("arithmetic", {"steps": None}, "steps", "must be a whole number, not null"),
    ("arithmetic", {"steps": 1.5}, "steps", "must be a whole number, not 1.5"),
    ("arithmetic", {"steps": -3}, "steps", "Ensure this value is greater than or equal to 1."),
    ("arithmetic", {"delay": -0.5}, "delay", "Ensure this value is greater than or equal to 0."),
    ("arithmetic", {"steps": 1001}, "steps", "Ensure this value is less than or equal to 1000."),
    ("arithmetic", {"delay": 60.5}, "delay", "Ensure this value is less than or equal to 60."),
    ("arithmetic", {"x": 10**10}, "x", "Ensure this value is less than or equal to 1000000000."),
    ("batch_sum", {"tasks": TOO_MANY_TASKS}, "tasks", "must hold at most 1000 items, not 1001"),
    ("batch_sum", {"tasks": [{"paramA": 1, "paramB": 2}, {"paramA": "one", "paramB": 2}]}, "tasks[1].paramA",
     "must be a number, not a string"),
    ("batch_sum", {"tasks": [{"paramA": 1, "paramB": True}]}, "tasks[0].paramB", "must be a number, not true/false"),
    ("batch_sum", {"tasks": [{"paramA": 1}]}, "tasks[0].paramB", "This field is required."),
    ("batch_sum", {"tasks": {"paramA": 1, "paramB": 2}}, "tasks", "must be a list, not an object"),
    ("bulk_insert", {"rows": 0}, "rows", "Ensure this value is greater than or equal to 1."),
    ("bulk_insert", {}, "rows", "This field is required."),
    ("bulk_insert", {"rows": 10**8}, "rows", "Ensure this value is less than or equal to 10000000."),
    ("bulk_insert", {"rows": 10, "chunk_rows": True}, "chunk_rows", "must be a whole number, not true/false"),
    ("arithmetic", {"steps": 3, "colour": "red"}, "__all__",
     "unknown parameter(s) for arithmetic: colour; expected: x, steps, delay"),
]


def _case_id(case):
    kind, params, field, _ = case
    return f"{kind}-{field}-{json.dumps(params)[:30]}"


@pytest.fixture
def owner(django_user_model):
    return django_user_model.objects.create_user("owner", password="pw-owner-1234")


@pytest.mark.django_db
@pytest.mark.parametrize("case", JSON_PARAMS, ids=_case_id)
def test_api_refuses_bad_params_naming_the_field(owner, case, django_capture_on_commit_callbacks):
    kind, params, field, message = case
    with django_capture_on_commit_callbacks() as callbacks:
        response = api_client(owner).post("/api/operations/", {"kind": kind, "params": params}, format="json")
    assert response.status_code == 400, response.content
    assert response.json() == {"detail": message if field == "__all__" else f"{field}: {message}",
                               "errors": {field: [message]}}
    assert Operation.objects.count() == 0 and callbacks == []


@pytest.mark.django_db
@pytest.mark.parametrize("body, expected", [
    ({"kind": "nope"}, None),  # the known kinds follow; checked below
    ({"params": {"steps": 3}}, {"kind": ["This field is required."]}),
    ({"kind": "arithmetic", "params": [3]}, {"params": ["params must be a JSON object"]}),
    ({"kind": "arithmetic", "params": "steps=3"}, {"params": ["params must be a JSON object"]}),
    ({"kind": "arithmetic", "params": None}, {"params": ["This field may not be null."]}),
    ([{"kind": "arithmetic"}], {"__all__": ["Invalid data. Expected a dictionary, but got list."]}),
])
def test_api_refuses_an_unknown_kind_and_params_that_are_not_an_object(owner, body, expected,
                                                                       django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        response = api_client(owner).post("/api/operations/", body, format="json")
    assert response.status_code == 400, response.content
    if expected is None:
        assert response.json()["errors"]["kind"][0].startswith(
            "unknown operation kind 'nope'; known kinds: arithmetic, batch_sum, bulk_insert, csv_import")
    else:
        assert response.json()["errors"] == expected
        assert response.json()["detail"] == "; ".join(f"{name}: {messages[0]}" if name != "__all__" else messages[0]
                                                      for name, messages in expected.items())
    assert Operation.objects.count() == 0 and callbacks == []


@pytest.mark.django_db
@pytest.mark.parametrize("number, shown", [("1e400", "inf"), ("-1e400", "-inf")])
def test_grouptasks_refuses_numbers_no_json_column_can_store(owner, number, shown):
    """1e400 parses to infinity even in strict JSON; stored in PostgreSQL's jsonb, it was a 500."""
    task = '{"paramA": %s, "paramB": 1}' % number
    client = api_client(owner)
    response = client.post("/grouptasks", '{"tasks": [%s]}' % task, content_type="application/json")
    assert response.status_code == 400, response.content
    assert response.json()["errors"] == {"tasks[0].paramA": [f"must be a number, not {shown}"]}
    response = client.post("/api/operations/", '{"kind": "batch_sum", "params": {"tasks": [%s]}}' % task,
                           content_type="application/json")
    assert response.status_code == 400 and response.json()["errors"] == {"params": ["Value must be valid JSON."]}
    assert Operation.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize("body, errors", [
    ({"tasks": [{"paramA": True, "paramB": 1}]}, {"tasks[0].paramA": ["must be a number, not true/false"]}),
    ({"tasks": TOO_MANY_TASKS}, {"tasks": ["must hold at most 1000 items, not 1001"]}),
    ({"tasks": None}, {"tasks": ["must be a list, not null"]}),
    ({"tasks": [{"paramA": 1, "paramB": 2}], "colour": "red"},
     {"__all__": ["unknown parameter(s) for /grouptasks: colour; expected: tasks"]}),
    ([1, 2], {"body": ["must be an object, not a list"]}),
])
def test_grouptasks_refuses_bad_tasks_naming_the_field(owner, body, errors):
    response = api_client(owner).post("/grouptasks", body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["errors"] == errors
    assert Operation.objects.count() == 0


# The pages post strings; the kind's form reads them.
PAGE_PARAMS = [
    ("batch_sum", {"tasks": "[" * 1000 + "]" * 1000}, "tasks", "JSON nested deeper than 32 levels (TAP_MAX_JSON_DEPTH)"),
    ("batch_sum", {"tasks": "[" * 40 + "]" * 40}, "tasks", "JSON nested deeper than 32 levels (TAP_MAX_JSON_DEPTH)"),
    ("arithmetic", {"steps": "ten"}, "steps", "Enter a whole number."),
    ("arithmetic", {"steps": "true"}, "steps", "Enter a whole number."),
    ("arithmetic", {"steps": "1.5"}, "steps", "Enter a whole number."),
    ("arithmetic", {"steps": "-3"}, "steps", "Ensure this value is greater than or equal to 1."),
    ("arithmetic", {"steps": "1001"}, "steps", "Ensure this value is less than or equal to 1000."),
    ("arithmetic", {"delay": "61"}, "delay", "Ensure this value is less than or equal to 60."),
    ("arithmetic", {"delay": "nan"}, "delay", "Enter a number."),
    ("batch_sum", {"tasks": json.dumps(TOO_MANY_TASKS)}, "tasks", "1001 tasks; a batch holds at most 1000."),
    ("batch_sum", {"tasks": '[{"paramA": "one", "paramB": 2}]'}, "tasks",
     "tasks[0].paramA: must be a number, got 'one'"),
    ("batch_sum", {"tasks": "[{paramA: 1}]"}, "tasks", "Enter a valid JSON."),
    ("bulk_insert", {"rows": "0"}, "rows", "Ensure this value is greater than or equal to 1."),
    ("bulk_insert", {"rows": "10", "chunk_rows": "0"}, "chunk_rows", "Ensure this value is greater than or equal to 1."),
]


@pytest.mark.django_db
@pytest.mark.parametrize("case", PAGE_PARAMS, ids=_case_id)
def test_page_refuses_bad_params_with_a_field_error(owner, case, django_capture_on_commit_callbacks):
    kind, params, field, message = case
    with django_capture_on_commit_callbacks() as callbacks:
        response = page_client(owner).post(reverse("operations:new"), {"kind": kind, **params})
    assert response.status_code == 400
    assert response.context["form"].errors == {field: [message]}
    assert f'<div class="field-error" role="alert">{escape(message)}</div>' in response.content.decode()
    assert Operation.objects.count() == 0 and callbacks == []


@pytest.mark.django_db
def test_page_refuses_an_unknown_kind_with_400_and_the_reason(owner):
    response = page_client(owner).post(reverse("operations:new"), {"kind": "nope", "steps": "3"})
    assert response.status_code == 400
    assert "unknown operation kind &#x27;nope&#x27;; known kinds: arithmetic" in response.content.decode()
    assert Operation.objects.count() == 0


# The CLI: NAME=VALUE strings; the message is the whole of the CommandError.
CLI_PARAMS = [
    (["arithmetic", "--param", "steps=ten"], "steps: Enter a whole number."),
    (["arithmetic", "--param", "steps=true"], "steps: Enter a whole number."),
    (["arithmetic", "--param", "steps=1.5"], "steps: Enter a whole number."),
    (["arithmetic", "--param", "steps=-3"], "steps: Ensure this value is greater than or equal to 1."),
    (["arithmetic", "--param", "steps=1001"], "steps: Ensure this value is less than or equal to 1000."),
    (["arithmetic", "--param", "delay=61"], "delay: Ensure this value is less than or equal to 60."),
    (["arithmetic", "--param", "colour=red"],
     "unknown parameter(s) for arithmetic: colour; expected: x, steps, delay"),
    (["arithmetic", "--param", "steps"], "--param 'steps': expected NAME=VALUE"),
    (["bulk_insert", "--param", "rows=0"], "rows: Ensure this value is greater than or equal to 1."),
    (["batch_sum", "--param", f"tasks={json.dumps(TOO_MANY_TASKS)}"], "tasks: 1001 tasks; a batch holds at most 1000."),
    (["batch_sum", "--param", 'tasks=[{"paramA": "one", "paramB": 2}]'],
     "tasks: tasks[0].paramA: must be a number, got 'one'"),
    (["batch_sum", "--param", 'tasks=[{"paramA": NaN, "paramB": 2}]'], "tasks: tasks[0].paramA: must be a number, got nan"),
]


@pytest.mark.django_db
@pytest.mark.parametrize("args, message", CLI_PARAMS, ids=lambda v: str(v)[:40])
def test_cli_refuses_bad_params_naming_the_field(args, message, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        with pytest.raises(CommandError) as refused:
            call_command("operations", "start", *args, stdout=io.StringIO())
    assert str(refused.value) == message
    assert Operation.objects.count() == 0 and callbacks == []


@pytest.mark.django_db
def test_cli_refuses_an_unknown_kind():
    with pytest.raises(CommandError, match=r"^kind: unknown operation kind 'nope'; known kinds: arithmetic, "):
        call_command("operations", "start", "nope", stdout=io.StringIO())
    assert Operation.objects.count() == 0


@pytest.mark.parametrize("args, stderr", [
    (["arithmetic", "--param", "steps=true", "--param", "delay=61"],
     "CommandError: steps: Enter a whole number.; delay: Ensure this value is less than or equal to 60.\n"),
    (["nope"], "CommandError: kind: unknown operation kind 'nope'; known kinds: arithmetic, "),
])
def test_cli_process_exits_non_zero_with_the_message_on_stderr(transactional_db, subprocess_env, args, stderr):
    result = subprocess.run([sys.executable, "manage.py", "operations", "start", *args], cwd=ROOT,
                            env=subprocess_env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith(stderr), result.stderr
    assert result.stdout == ""
    assert Operation.objects.count() == 0


# --- stored workflows ---------------------------------------------------------------------------


def _set(index, **changes):
    def edit(plan):
        plan["steps"][index] = {**plan["steps"][index], **changes}
    return edit


def _replace(index, entry):
    def edit(plan):
        plan["steps"][index] = entry
    return edit


def _top(**changes):
    return lambda plan: plan.update(changes)


# An arithmetic plan is add(4, 6) → mult(16) → add(6); each edit, and the reason resume gives.
EDITS = {
    "unregistered-task": (_replace(1, {"task": "os.system", "args": ["id"]}),
                          "steps[1] names 'os.system', which is not a registered operation step"),
    "celery-task": (_replace(1, {"task": "celery.backend_cleanup", "args": []}),
                    "steps[1] names 'celery.backend_cleanup', a Celery built-in task, not an operation step"),
    "no-task": (_replace(1, {"args": [16]}), "steps[1] names no task"),
    "not-a-dict": (_replace(1, "operations.mult"), "steps[1] is not a signature dict: 'operations.mult'"),
    "extra-positional": (_set(1, args=[16, 1, 2]),
                         "steps[1] (operations.mult): arguments do not fit the step: too many positional arguments"),
    "unknown-keyword": (_set(2, kwargs={"shell": True}),
                        "steps[2] (operations.add): arguments do not fit the step: "
                        "got an unexpected keyword argument 'shell'"),
    "args-not-a-list": (_set(1, args="16"), "steps[1] (operations.mult): args must be a list and kwargs an object"),
    "unsupported-key": (_set(1, link={"task": "os.system"}), "steps[1] (operations.mult) has unsupported keys: link"),
    "unsupported-option": (_set(1, options={"countdown": 5, "queue": "celery"}),
                           "steps[1] (operations.mult): unsupported options ['countdown']"),
    "steps-not-a-list": (_top(steps={"0": {"task": "operations.add", "args": [4, 6]}}),
                         "the stored workflow has no list of steps"),
    "no-steps": (_top(steps=[]), "the workflow has no steps"),
    "wrong-version": (_top(version=2), "the stored workflow has version 2, expected 1"),
    "bad-pause-every": (_top(pause_every=True),
                        "the stored workflow's pause_every is True, expected a positive integer"),
    "group-member": (_replace(1, {"group": [{"task": "operations.mult", "args": [2], "kwargs": {}},
                                            {"task": "os.system", "args": ["id"]}]}),
                     "steps[1].group[1] names 'os.system', which is not a registered operation step"),
    "group-extra-key": (_replace(1, {"group": [{"task": "operations.mult", "args": [2]}], "chord": True}),
                        'steps[1]: a group step is {"group": [signature dicts]}'),
}


def _edited(operation, edit):
    plan = json.loads(json.dumps(operation.workflow))
    edit(plan)
    Operation.objects.filter(pk=operation.pk).update(workflow=plan)
    return plan


@pytest.mark.django_db
@pytest.mark.parametrize("case", list(EDITS))
def test_resume_refuses_an_edited_workflow_naming_the_step(case, django_capture_on_commit_callbacks):
    edit, reason = EDITS[case]
    operation = operation_in(Status.PAUSED, None)
    plan = _edited(operation, edit)
    with django_capture_on_commit_callbacks() as callbacks:
        with pytest.raises(services.TransitionRefused) as refused:
            services.operation_resume(operation=operation.pk, actor="cli")
    assert str(refused.value) == f"operation {operation.pk} cannot be resumed: {reason}"
    assert callbacks == []  # nothing published
    operation.refresh_from_db()
    assert (operation.status, operation.run_token, operation.workflow) == (Status.PAUSED, 1, plan)
    event = operation.events.order_by("at", "id").last()
    assert (event.actor, event.from_status, event.to_status) == ("cli", Status.PAUSED, Status.PAUSED)
    assert event.note == f"resume refused: {reason}"
    assert check_operation(operation.pk) == []


@pytest.mark.django_db
def test_retry_refuses_an_edited_workflow_too(django_capture_on_commit_callbacks):
    operation = operation_in(Status.RUNNING, None)
    services.operation_fail(operation.pk, 1, "step 2 of 3 failed")
    edit, reason = EDITS["unregistered-task"]
    _edited(operation, edit)
    with django_capture_on_commit_callbacks() as callbacks:
        with pytest.raises(services.TransitionRefused, match=rf"^operation {operation.pk} cannot be retried: "
                                                             rf"steps\[1\] names 'os.system'"):
            services.operation_retry(operation=operation.pk, actor="cli")
    assert callbacks == []
    operation.refresh_from_db()
    assert (operation.status, operation.run_token) == (Status.FAILED, 1)
    assert operation.events.order_by("at", "id").last().note == f"retry refused: {reason}"


# --- requests no view should answer with a 500 ------------------------------------------------

DEEP = "[" * 1000 + "]" * 1000  # 2 KB


@pytest.mark.django_db
@pytest.mark.parametrize("url, body", [
    ("/api/operations/", '{"kind": "arithmetic", "params": {"x": %s}}' % DEEP),
    ("/api/operations/", DEEP),
    ("/grouptasks", '{"tasks": %s}' % DEEP),
    ("/api/operations/", '{"kind": "arithmetic", "params": {"x": %s}}' % ("[" * 100 + "]" * 100)),
])
def test_json_nested_too_deep_is_a_400_naming_the_limit(owner, url, body):
    response = api_client(owner).post(url, body, content_type="application/json")
    assert response.status_code == 400, response.content
    assert "nested deeper than" in response.json()["detail"], response.json()
    assert Operation.objects.count() == 0


@pytest.mark.django_db
def test_a_body_over_the_limit_is_a_413_naming_the_limit(owner, settings):
    body = '{"kind": "arithmetic", "params": {"x": "%s"}}' % ("a" * 3_000_000)
    response = api_client(owner).post("/api/operations/", body, content_type="application/json")
    assert response.status_code == 413, response.content
    detail = response.json()["detail"]
    assert f"{settings.DATA_UPLOAD_MAX_MEMORY_SIZE:,} bytes" in detail and "DATA_UPLOAD_MAX_MEMORY_SIZE" in detail
    assert Operation.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["r" * 236 + ".csv", "../../etc/passwd.csv", "a b\u00e9\u202e\x01.csv"])
def test_a_long_or_strange_upload_name_is_stored_under_a_safe_name(owner, name, settings, tmp_path):
    settings.TAP_UPLOAD_DIR = str(tmp_path)
    upload = SimpleUploadedFile(name, b"id,name,email,amount,date\n1,A,a@example.com,1.00,2026-01-01\n")
    response = api_client(owner).post("/api/operations/", {"kind": "csv_import", "file": upload}, format="multipart")
    assert response.status_code == 201, response.content
    stored = list(tmp_path.iterdir())
    assert len(stored) == 1 and len(stored[0].name.encode()) <= 150 and stored[0].parent == tmp_path
    assert all(c.isascii() and (c.isalnum() or c in "-_.") for c in stored[0].name), stored[0].name
