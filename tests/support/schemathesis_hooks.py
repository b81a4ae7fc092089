"""Schemathesis hooks for tests/test_schemathesis.py (loaded through SCHEMATHESIS_HOOKS).

A multipart start's ``file`` is documented as binary, and any bytes fit that; but the server
checks an upload's first line before it starts anything (a bad file is a 400 naming the file and
the line, as every face answers). So for the positive cases, the only ones that promise a valid
request, the generated file is replaced by a CSV with the header the kind's form documents, and a
pause's or resume's time by one to come.
Negative cases keep what Schemathesis made. The test passes each kind's header in
``TAP_SCHEMATHESIS_HEADERS`` (JSON), read from the kinds' forms.
"""

import json
import os
import random
from datetime import datetime, timedelta, timezone

import schemathesis
from schemathesis import GenerationMode

HEADERS = json.loads(os.environ.get("TAP_SCHEMATHESIS_HEADERS", "{}"))


#: Times a pause or resume takes, which the server wants to come (a past one is a 400 naming it);
#: a schema cannot say "in the future", so positive cases get a time within the coming year.
FUTURE_TIMES = ("resume_at", "at")


@schemathesis.hook
def map_case(context, case):
    body = case.body
    if (case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE
            and isinstance(body, dict) and any(name in body for name in FUTURE_TIMES)):
        soon = (datetime.now(timezone.utc) + timedelta(minutes=random.randint(5, 60 * 24 * 300))).isoformat()
        case.body = body = {**body, **{name: soon for name in FUTURE_TIMES if name in body}}
    if (case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE
            and isinstance(body, dict) and "file" in body and isinstance(body.get("kind"), str)):
        header = HEADERS.get(body["kind"])
        if header is not None:
            rows = [",".join(f"{column}{random.randint(0, 9)}" for column in header) for _ in range(3)]
            case.body = {**body, "file": ("\n".join([",".join(header), *rows]) + "\n").encode()}
    return case


@schemathesis.hook
def filter_case(context, case):
    """Schemathesis 4.32 labels positive a /grouptasks body with an extra top-level field
    (``"errors": {…}``, borrowed from the error responses) although the schema closes the body
    with ``additionalProperties: false``; the server refuses it, rightly. Such cases are dropped."""
    if (case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE
            and case.path == "/grouptasks" and isinstance(case.body, dict)):
        return set(case.body) <= {"tasks"}
    return True
