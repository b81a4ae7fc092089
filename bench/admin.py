"""The admin changelist, its search, the API list and the live pages' polls with many operations:
latency and queries.

    .venv/bin/python bench/admin.py [--operations 100000] [--rounds 15]

Fills its own PostgreSQL database with ``--operations`` operations of 200 owners (bulk insert),
then, through Django's test client in this process (DEBUG off, as in production), requests each
page ``--rounds`` times, interleaved, and prints the median and 90th percentile latency and the
number of queries of each, against the target: a median under 150 ms and a query count that does
not grow with the table. The baseline, measured in the same rounds, is the bare ORM query of one
page of 50 rows (what no page can be faster than). The live pages poll (htmx on the app's pages,
admin-live.js in the admin): the cost of that choice is printed as the server time a hundred
open tabs take per second. A report, not a test: it exits 0.
"""

import argparse
import statistics
import sys
import time

from common import ROOT, configure_environment, database_url, reset_database, setup_django

DB = "tapbench_admin"
TARGET_MS = 150
#: How often each live page polls while an operation may still change (operations/views.py,
#: list.html, admin-live.js); a paused or failed operation's page polls half as often.
POLLS = {"live poll: /operations/ list": 2, "live poll: a running operation": 1, "live poll: admin changelist": 2}


def fill(count, owners=200):
    from django.contrib.auth.models import User
    from django.utils import timezone

    from operations.models import Operation
    from operations.states import Status

    users = User.objects.bulk_create([User(username=f"owner{i:03d}") for i in range(owners)])
    statuses = [Status.COMPLETED] * 6 + [Status.FAILED, Status.CANCELLED, Status.PAUSED, Status.RUNNING]
    kinds = ["arithmetic", "csv_import", "csv_summary", "bulk_insert", "batch_sum"]
    now, batch = timezone.now(), []
    for i in range(count):
        batch.append(Operation(owner=users[i % owners], kind=kinds[i % len(kinds)], status=statuses[i % len(statuses)],
                               progress_done=3, progress_total=3, params={"steps": 3},
                               error="step 1 of 1 failed: ValueError" if i % 10 == 6 else ""))
        if len(batch) == 10_000:
            Operation.objects.bulk_create(batch)
            batch = []
    Operation.objects.bulk_create(batch)
    from django.db import connection

    with connection.cursor() as cursor:  # a second apart, newest last, as they were started
        cursor.execute(f"UPDATE {Operation._meta.db_table} SET created_at = %s - (%s - id) * interval '1 second'",
                       [now, count])
        cursor.execute("ANALYZE")
    return users[17].username


def measure(client, url):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        started = time.perf_counter()
        response = client.get(url)
        elapsed = time.perf_counter() - started
    assert response.status_code == 200, (url, response.status_code)
    return elapsed * 1000, len(queries)


def baseline():
    from operations.models import Operation

    started = time.perf_counter()
    list(Operation.objects.select_related("owner").order_by("-created_at", "-id")[:50])
    return (time.perf_counter() - started) * 1000, 1


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--operations", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=15)
    options = parser.parse_args()
    configure_environment(database_url=database_url(DB), broker_url="memory://", var_dir=ROOT / "var" / "bench" / "admin")
    reset_database(DB)
    setup_django()
    from django.conf import settings
    from django.contrib.auth.models import User
    from django.test import Client
    from rest_framework.authtoken.models import Token

    settings.ALLOWED_HOSTS = ["*"]
    started = time.perf_counter()
    owner = fill(options.operations)
    print(f"{options.operations:,} operations inserted in {time.perf_counter() - started:.1f}s")
    boss = User.objects.create_superuser("bench-admin", password="pw-bench-12345")
    client = Client()
    client.force_login(boss)
    people = Client()  # an owner of options.operations / 200 operations, on their own list
    people.force_login(User.objects.get(username=owner))
    api = Client(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=boss).key}")
    some_id = options.operations // 2
    from operations.models import Operation
    from operations.states import Status

    running_id = Operation.objects.filter(status=Status.RUNNING).values_list("id", flat=True).first()
    pages = {
        "admin changelist": (client, "/admin/operations/operation/"),
        "admin changelist, status filter": (client, "/admin/operations/operation/?status__exact=failed"),
        "admin search by owner": (client, f"/admin/operations/operation/?q={owner}"),
        "admin search by id": (client, f"/admin/operations/operation/?q={some_id}"),
        "admin search by kind": (client, "/admin/operations/operation/?q=csv_summary"),
        "admin operation page": (client, f"/admin/operations/operation/{some_id}/change/"),
        "API list": (api, "/api/operations/"),
        "API list, filtered": (api, "/api/operations/?status=failed&kind=csv_import"),
        "live poll: /operations/ list": (people, "/operations/"),
        "live poll: a running operation": (client, f"/operations/{running_id}/progress/"),
        "live poll: admin changelist": (client, "/admin/operations/operation/"),
    }
    timings = {name: [] for name in [*pages, "baseline: one page of 50 rows"]}
    queries = {}
    for name, (who, url) in pages.items():  # warm up
        measure(who, url)
    for _ in range(options.rounds):  # interleaved, so a slow moment hits every page alike
        for name, (who, url) in pages.items():
            ms, count = measure(who, url)
            timings[name].append(ms)
            queries[name] = count
        timings["baseline: one page of 50 rows"].append(baseline()[0])
        queries["baseline: one page of 50 rows"] = 1
    base = statistics.median(timings["baseline: one page of 50 rows"])
    print(f"\n{'page':<34} {'median ms':>10} {'p90 ms':>8} {'queries':>8} {'× baseline':>11}  target")
    missed = 0
    for name, values in timings.items():
        values.sort()
        median, p90 = statistics.median(values), values[int(0.9 * (len(values) - 1))]
        is_page = not name.startswith("baseline")
        verdict = ("PASS" if median < TARGET_MS else "MISS") if is_page else ""
        missed += verdict == "MISS"
        print(f"{name:<34} {median:>10.1f} {p90:>8.1f} {queries[name]:>8} {median / base:>11.1f}  {verdict}")
    print(f"\n{options.operations:,} operations; target: median under {TARGET_MS} ms; {missed} page(s) missed it")
    for name, every in POLLS.items():
        median = statistics.median(timings[name])
        print(f"{name}: every {every:g} s, 100 open tabs take {100 * median / 1000 / every:.2f} s of server time "
              f"per second ({median:.1f} ms a poll)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
