"""Pages, API and admin: who may do what, CSRF, methods, refusals, query counts (issue 5)."""

import re
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from operations import services
from operations.models import Operation
from operations.states import Status

pytestmark = pytest.mark.django_db


@pytest.fixture
def people():
    owner = User.objects.create_user("owner", password="pw-owner-1234")
    other = User.objects.create_user("other", password="pw-other-1234")
    staff_without = User.objects.create_user("staff_without", password="pw-staff-1234", is_staff=True)
    staff_without.user_permissions.add(Permission.objects.get(codename="view_operation"))
    staff_with = User.objects.create_user("staff_with", password="pw-staff-1234", is_staff=True)
    staff_with.user_permissions.add(*Permission.objects.filter(
        codename__in=["view_operation", "pause_operation", "resume_operation", "cancel_operation",
                      "retry_operation"]))
    return {"anonymous": None, "owner": owner, "other": other, "staff_without": staff_without,
            "staff_with": staff_with}


def operation_in(status, owner):
    """An arithmetic operation of ``owner`` put in ``status`` through the services."""
    operation = services.operation_start(kind="arithmetic", params={"steps": 3}, owner=owner, actor="cli")
    if status in (Status.PAUSED, Status.PAUSE_REQUESTED):
        services.operation_pause(operation=operation, actor="cli")
    if status == Status.PAUSED:
        services.operation_at_pause_point(operation.pk, 1, Status.PAUSE_REQUESTED, index=1, length=3)
    if status == Status.COMPLETED:
        services.operation_at_pause_point(operation.pk, 1, Status.RUNNING, index=3, length=3, result=1)
    return Operation.objects.get(pk=operation.pk)


SETUP = {"pause": (Status.RUNNING, Status.PAUSE_REQUESTED),
         "resume": (Status.PAUSED, Status.RUNNING),
         "cancel": (Status.PAUSED, Status.CANCELLED)}


def page_client(user):
    client = Client()
    if user:
        client.force_login(user)
    return client


def api_client(user):
    client = APIClient()
    if user:
        client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


# What each subject gets from each face (the design's matrix).
EXPECTED = {
    "anonymous": {"page": "login", "api": 401, "admin": "admin-login"},
    "owner": {"page": "done", "api": 202, "admin": "admin-login"},
    "other": {"page": 404, "api": 404, "admin": "admin-login"},
    "staff_without": {"page": 403, "api": 403, "admin": "hidden"},
    "staff_with": {"page": "done", "api": 202, "admin": "done"},
}


@pytest.mark.parametrize("verb", ["pause", "resume", "cancel"])
@pytest.mark.parametrize("subject", list(EXPECTED))
@pytest.mark.parametrize("face", ["page", "api", "admin"])
def test_permission_matrix(people, subject, verb, face):
    before, after = SETUP[verb]
    operation = operation_in(before, people["owner"])
    user = people[subject]
    expected = EXPECTED[subject][face]

    if face == "page":
        response = page_client(user).post(reverse(f"operations:{verb}", args=[operation.pk]))
        if expected == "login":
            assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
        elif expected == "done":
            assert response.status_code == 302 and response["Location"] == reverse("operations:detail",
                                                                                   args=[operation.pk])
        else:
            assert response.status_code == expected
    elif face == "api":
        response = api_client(user).post(f"/api/operations/{operation.pk}/{verb}/")
        assert response.status_code == (202 if expected == "done" else expected), response.content
    else:
        client = page_client(user)
        changelist = reverse("admin:operations_operation_changelist")
        listing = client.get(changelist)
        data = {"action": verb, "_selected_action": [operation.pk], "post": "yes"}
        response = client.post(changelist, data)
        if expected == "admin-login":
            assert response.status_code == 302 and "/admin/login/" in response["Location"]
        elif expected == "hidden":
            assert listing.status_code == 200
            assert f'<option value="{verb}">' not in listing.content.decode()
        else:
            assert f'<option value="{verb}">' in listing.content.decode()
            assert response.status_code == 302

    final = Operation.objects.get(pk=operation.pk).status
    assert final == (after if expected in ("done", 202) else before), (subject, face, verb, final)


def test_staff_without_permission_sees_no_buttons_on_the_page(people):
    operation = operation_in(Status.RUNNING, people["owner"])
    page = page_client(people["staff_without"]).get(reverse("operations:detail", args=[operation.pk]))
    assert page.status_code == 200
    assert b">Pause</button>" not in page.content and b">Cancel</a>" not in page.content
    owner_page = page_client(people["owner"]).get(reverse("operations:detail", args=[operation.pk]))
    assert b">Pause</button>" in owner_page.content and b">Cancel</a>" in owner_page.content


def test_buttons_show_only_legal_verbs(people):
    client = page_client(people["owner"])
    paused = operation_in(Status.PAUSED, people["owner"])
    content = client.get(reverse("operations:detail", args=[paused.pk])).content.decode()
    assert ">Resume</button>" in content and ">Pause</button>" not in content and ">Cancel</a>" in content
    done = operation_in(Status.COMPLETED, people["owner"])
    content = client.get(reverse("operations:detail", args=[done.pk])).content.decode()
    assert not any(f">{v}</" in content for v in ("Pause", "Resume", "Retry", "Cancel"))


def test_session_post_without_csrf_token_is_forbidden(people):
    operation = operation_in(Status.RUNNING, people["owner"])
    client = Client(enforce_csrf_checks=True)
    client.force_login(people["owner"])
    assert client.post(reverse("operations:pause", args=[operation.pk])).status_code == 403
    assert client.post(f"/api/operations/{operation.pk}/pause/").status_code == 403
    assert Operation.objects.get(pk=operation.pk).status == Status.RUNNING


def test_get_on_a_control_url_is_405(people):
    operation = operation_in(Status.RUNNING, people["owner"])
    assert page_client(people["owner"]).get(reverse("operations:pause", args=[operation.pk])).status_code == 405
    assert api_client(people["owner"]).get(f"/api/operations/{operation.pk}/pause/").status_code == 405
    assert Operation.objects.get(pk=operation.pk).status == Status.RUNNING


def test_illegal_transition_is_409_in_the_api_and_a_message_on_the_page(people):
    operation = operation_in(Status.COMPLETED, people["owner"])
    reason = f"operation {operation.pk} is completed; only running or waiting operations can be paused"
    response = api_client(people["owner"]).post(f"/api/operations/{operation.pk}/pause/")
    assert response.status_code == 409 and response.json()["detail"] == reason
    response = page_client(people["owner"]).post(reverse("operations:pause", args=[operation.pk]), follow=True)
    assert reason in [str(m) for m in response.context["messages"]]


def test_api_start_validates_params_and_returns_the_contract_shape(people):
    client = api_client(people["owner"])
    bad = client.post("/api/operations/", {"kind": "arithmetic", "params": {"steps": 0, "delay": "slow"}},
                      format="json")
    assert bad.status_code == 400
    assert bad.json()["errors"] == {"steps": ["Ensure this value is greater than or equal to 1."],
                                    "delay": ["must be a number, not a string"]}
    unknown = client.post("/api/operations/", {"kind": "nope"}, format="json")
    assert unknown.status_code == 400 and "unknown operation kind 'nope'" in unknown.json()["detail"]
    created = client.post("/api/operations/", {"kind": "arithmetic", "params": {"steps": 4}}, format="json")
    assert created.status_code == 201
    body = created.json()
    for key in ("id", "kind", "status", "owner", "params", "progress", "result", "error", "run_token",
                "created_at", "started_at", "finished_at", "updated_at", "events"):
        assert key in body
    assert body["owner"] == "owner" and body["progress"] == {"done": 0, "total": 4, "percent": 0}
    assert body["events"][0]["to_status"] == "running" and body["events"][0]["actor"] == "owner"
    assert len(body["created_at"].split(".")[1]) >= 6  # microseconds
    listing = client.get("/api/operations/").json()
    assert [item["id"] for item in listing["results"]] == [body["id"]]
    assert api_client(people["other"]).get(f"/api/operations/{body['id']}/").status_code == 404
    assert api_client(people["staff_with"]).get(f"/api/operations/{body['id']}/").status_code == 200


def test_the_openapi_schema_is_served(people):
    response = api_client(people["owner"]).get("/api/schema/")
    assert response.status_code == 200
    assert b"/api/operations/{id}/pause/" in response.content and b"/grouptasks" in response.content


def test_the_api_docs_are_served_from_the_package_with_no_outside_address(people):
    page = Client().get("/api/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    assert '"/api/schema/"' in html
    assert not re.findall(r"""(?:src|href)=["'](?:https?:)?//""", html), "the page loads something from outside"
    loaded = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assert len(loaded) == 4, loaded
    for url in loaded:
        asset = Client().get(url)
        assert asset.status_code == 200, url
        body = b"".join(asset.streaming_content)
        assert len(body) > 500 and "max-age" in asset["Cache-Control"], url
    assert Client().get("/api/docs/assets/swagger-ui-bundle.js")["Content-Type"] == "text/javascript"
    assert Client().get("/api/docs/assets/..%2Fredoc%2FLICENSE").status_code == 404
    assert Client().get("/api/docs/assets/LICENSE").status_code == 404


def test_page_start_with_bad_params_shows_field_errors_and_starts_nothing(people):
    client = page_client(people["owner"])
    response = client.post(reverse("operations:new"), {"kind": "arithmetic", "steps": "-3"})
    assert response.status_code == 400
    assert "Ensure this value is greater than or equal to 1." in response.content.decode()
    assert not Operation.objects.exists()
    response = client.post(reverse("operations:new"), {"kind": "arithmetic", "steps": "3", "delay": "0.5"})
    operation = Operation.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("operations:detail", args=[operation.pk])
    assert operation.params == {"x": 4, "steps": 3, "delay": 0.5} and operation.owner == people["owner"]


def test_new_page_offers_every_kind_with_its_form(people):
    client = page_client(people["owner"])
    page = client.get(reverse("operations:new")).content.decode()
    for kind in ("arithmetic", "csv_import", "csv_summary", "bulk_insert", "batch_sum"):
        assert f"?kind={kind}" in page
    assert 'name="rows"' in client.get(reverse("operations:new") + "?kind=bulk_insert").content.decode()
    assert client.get(reverse("operations:new") + "?kind=nope").status_code == 404


def test_another_users_operation_page_is_404(people):
    operation = operation_in(Status.RUNNING, people["owner"])
    client = page_client(people["other"])
    for name in ("operations:detail", "operations:progress", "operations:cancel-confirm"):
        assert client.get(reverse(name, args=[operation.pk])).status_code == 404


def test_cancel_confirmation_says_what_will_be_undone(people):
    operation = services.operation_start(kind="bulk_insert", params={"rows": 10}, owner=people["owner"], actor="cli")
    page = page_client(people["owner"]).get(reverse("operations:cancel-confirm", args=[operation.pk]))
    assert "Discards every row staged so far; no record of this insert will remain." in page.content.decode()


def test_admin_cancel_asks_for_confirmation_first(people):
    operation = operation_in(Status.PAUSED, people["owner"])
    client = page_client(people["staff_with"])
    changelist = reverse("admin:operations_operation_changelist")
    ask = client.post(changelist, {"action": "cancel", "_selected_action": [operation.pk]})
    assert ask.status_code == 200 and "Cancel these operations?" in ask.content.decode()
    assert Operation.objects.get(pk=operation.pk).status == Status.PAUSED
    done = client.post(changelist, {"action": "cancel", "_selected_action": [operation.pk], "post": "yes"},
                       follow=True)
    assert "Cancel: 1 operation(s) changed." in done.content.decode()
    assert Operation.objects.get(pk=operation.pk).status == Status.CANCELLED


def test_admin_action_reports_refusals(people):
    running = operation_in(Status.RUNNING, people["owner"])
    done = operation_in(Status.COMPLETED, people["owner"])
    response = page_client(people["staff_with"]).post(
        reverse("admin:operations_operation_changelist"),
        {"action": "pause", "_selected_action": [running.pk, done.pk]}, follow=True)
    content = response.content.decode()
    assert "Pause: 1 operation(s) changed." in content
    assert f"Pause: 1 refused — operation {done.pk} is completed; only running or waiting operations can be paused" in content


def test_admin_change_page_is_read_only_with_workflow_and_history(people):
    operation = operation_in(Status.PAUSED, people["owner"])
    page = page_client(people["staff_with"]).get(
        reverse("admin:operations_operation_change", args=[operation.pk])).content.decode()
    assert "operations.mult" in page and "next_step" in page  # the remaining workflow
    assert "Running → Pause requested" in page and "Pause requested → Paused" in page  # labels, not codes
    assert re.search(r"<time datetime=[^>]+>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d</time>", page)  # to the second
    assert 'name="_save"' not in page
    assert re.findall(r'data-verb="(\w+)"', page) == ["resume", "cancel"]  # the legal verbs as buttons


def test_admin_change_page_buttons_run_the_verb_and_come_back(people):
    operation = operation_in(Status.PAUSED, people["owner"])
    client = page_client(people["staff_with"])
    change = reverse("admin:operations_operation_change", args=[operation.pk])
    form = {"action": "resume", "_selected_action": operation.pk, "_back_to_change": operation.pk}
    response = client.post(reverse("admin:operations_operation_changelist"), form)
    assert response.status_code == 302 and response["Location"] == change
    assert Operation.objects.get(pk=operation.pk).status == Status.RUNNING
    asked = client.post(reverse("admin:operations_operation_changelist"), {**form, "action": "cancel"})
    assert asked.status_code == 200 and "Yes, cancel them" in asked.content.decode()  # asks first
    assert f'name="_back_to_change" value="{operation.pk}"' in asked.content.decode()
    assert Operation.objects.get(pk=operation.pk).status == Status.RUNNING
    viewer = page_client(people["staff_without"]).get(change).content.decode()
    assert "data-verb=" not in viewer  # no permission, no buttons


def _many_operations(owner, count):
    Operation.objects.bulk_create([
        Operation(owner=owner, kind="arithmetic", status=Status.COMPLETED, progress_done=3, progress_total=3)
        for _ in range(count)
    ])


@pytest.mark.parametrize("count", [10, 1000])
def test_list_page_and_changelist_use_a_constant_number_of_queries(people, count, django_assert_max_num_queries):
    _many_operations(people["owner"], count)
    owner_client = page_client(people["owner"])
    staff_client = page_client(people["staff_with"])
    with django_assert_max_num_queries(8):
        assert owner_client.get(reverse("operations:list")).status_code == 200
    with django_assert_max_num_queries(14):
        assert staff_client.get(reverse("admin:operations_operation_changelist")).status_code == 200
    with django_assert_max_num_queries(8):
        assert api_client(people["owner"]).get("/api/operations/").status_code == 200


def test_state_changing_endpoints_are_throttled(people, settings):
    from django.core.cache import cache

    settings.TAP_CONTROL_THROTTLE = "3/min"
    cache.clear()
    client = api_client(people["owner"])
    operation = operation_in(Status.COMPLETED, people["owner"])
    codes = [client.post(f"/api/operations/{operation.pk}/pause/").status_code for _ in range(4)]
    assert codes == [409, 409, 409, 429]
    assert client.post("/api/operations/", {"kind": "arithmetic"}, format="json").status_code == 429
    assert client.get(f"/api/operations/{operation.pk}/").status_code == 200  # reads are not throttled
    cache.clear()


def test_no_face_shows_a_server_path_only_the_source_name(people, settings, tmp_path):
    from django.core.files.uploadedfile import SimpleUploadedFile

    settings.TAP_UPLOAD_DIR = str(tmp_path / "uploads")
    upload = SimpleUploadedFile("march.csv", b"id,name,email,amount,date\n1,A,a@example.com,1.00,2026-01-01\n")
    api = api_client(people["owner"])
    created = api.post("/api/operations/", {"kind": "csv_import", "file": upload}, format="multipart")
    assert created.status_code == 201, created.content
    operation = Operation.objects.get(pk=created.json()["id"])
    stored = operation.params["path"]
    assert str(tmp_path) in stored  # the steps still get the path
    assert "path" not in created.json()["params"] and created.json()["params"]["source"] == "march.csv"
    faces = [
        api.get(f"/api/operations/{operation.pk}/").content.decode(),
        api.get("/api/operations/").content.decode(),
        page_client(people["owner"]).get(reverse("operations:detail", args=[operation.pk])).content.decode(),
    ]
    admin = Client()
    admin.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    faces.append(admin.get(f"/admin/operations/operation/{operation.pk}/change/").content.decode())
    for text in faces:
        assert "march.csv" in text
        assert str(tmp_path) not in text and Path(stored).name not in text


def test_the_new_page_forms_say_the_right_things(people):
    client = page_client(people["owner"])
    batch = client.get(reverse("operations:new") + "?kind=batch_sum").content.decode()
    assert ">null<" not in batch and "null</textarea>" not in batch
    summary = client.get(reverse("operations:new") + "?kind=csv_summary").content.decode()
    assert "demo-people.csv" in summary and "e.g. demo-records.csv" not in summary
    response = client.post(reverse("operations:new"), {"kind": "csv_import"})
    page = response.content.decode()
    assert response.status_code == 400
    assert page.count("Give a file to upload, or pick a file on the server.") == 1
    assert "not both" not in page and not Operation.objects.exists()


def test_the_api_list_filters_and_orders_and_refuses_bad_filters_by_name(people):
    mine = [operation_in(Status.RUNNING, people["owner"]), operation_in(Status.PAUSED, people["owner"]),
            operation_in(Status.COMPLETED, people["owner"])]
    theirs = operation_in(Status.RUNNING, people["other"])
    api = api_client(people["owner"])

    def ids(query):
        response = api.get(f"/api/operations/?{query}")
        assert response.status_code == 200, response.content
        return [item["id"] for item in response.json()["results"]]

    assert ids("") == [op.pk for op in reversed(mine)]
    assert ids("ordering=created_at") == [op.pk for op in mine]
    assert ids("status=paused") == [mine[1].pk]
    assert ids("status=running,completed") == [mine[2].pk, mine[0].pk]
    assert ids("kind=arithmetic&status=running") == [mine[0].pk]
    assert ids("kind=csv_import") == []
    assert ids(f"created_after={mine[1].created_at.isoformat().replace('+', '%2B')}") == [mine[2].pk, mine[1].pk]
    bad = api.get("/api/operations/?status=sleeping&ordering=colour&created_after=yesterday")
    assert bad.status_code == 400 and set(bad.json()["errors"]) == {"status[0]", "ordering", "created_after"}, bad.json()
    assert bad.json()["detail"].startswith('status[0]: "sleeping" is not a valid choice.')
    assert api.get("/api/operations/?owner=").json()["errors"] == {"owner": ["give a value, or leave the parameter out"]}
    assert api.get("/api/operations/?owner=other").json()["results"] == []  # not staff: only their own
    assert ids("owner=owner&kind=") == [mine[2].pk, mine[1].pk, mine[0].pk]
    staff = api_client(people["staff_with"])
    listed = staff.get("/api/operations/?owner=other").json()["results"]
    assert [item["id"] for item in listed] == [theirs.pk]


def test_pages_stay_live_until_nothing_can_change_them(people):
    client = page_client(people["owner"])
    paused = operation_in(Status.PAUSED, people["owner"])
    running = operation_in(Status.RUNNING, people["owner"])
    done = operation_in(Status.COMPLETED, people["owner"])
    pages = {op.status: client.get(reverse("operations:detail", args=[op.pk])).content.decode()
             for op in (paused, running, done)}
    assert 'hx-trigger="every 1s"' in pages[Status.RUNNING]
    assert 'hx-trigger="every 2s"' in pages[Status.PAUSED]  # a resume from elsewhere still shows
    assert "hx-trigger" not in pages[Status.COMPLETED]
    listing = client.get(reverse("operations:list")).content.decode()
    assert 'hx-select="#operation-rows"' in listing and 'hx-trigger="every 2s"' in listing
    staff = page_client(people["staff_with"])
    assert "operations/admin-live.js" in staff.get(reverse("admin:operations_operation_changelist")).content.decode()


def test_a_summary_reads_as_a_table_and_downloads_whole(people):
    import csv as csvlib
    import io
    import json as jsonlib

    counts = {f"Company {i:04d}": {"Female": i, "Male": 2 * i, **({"Other": 1} if i % 7 == 0 else {})}
              for i in range(1, 1201)}  # far more than the 2,000 characters shown inline
    operation = services.operation_start(kind="arithmetic", params={"steps": 1}, owner=people["owner"], actor="cli")
    Operation.objects.filter(pk=operation.pk).update(kind="csv_summary", status=Status.COMPLETED, result=counts)
    client = page_client(people["owner"])
    page = client.get(reverse("operations:detail", args=[operation.pk])).content.decode()
    assert page.count("<tr><td>Company ") == 1200 and "Company 1200" in page  # the whole table
    assert "<th scope=\"col\">Other</th>" in page and 'class="result sortable"' in page

    as_json = client.get(reverse("operations:result", args=[operation.pk, "json"]))
    assert as_json["Content-Disposition"] == f'attachment; filename="operation-{operation.pk}-result.json"'
    api = api_client(people["owner"]).get(f"/api/operations/{operation.pk}/").json()["result"]
    assert jsonlib.loads(as_json.content) == api == counts
    rows = list(csvlib.reader(io.StringIO(client.get(reverse("operations:result", args=[operation.pk, "csv"]))
                                          .content.decode())))
    assert rows[0] == ["company", "Female", "Male", "Other", "total"] and len(rows) == 1201
    assert {row[0]: [int(n) for n in row[1:]] for row in rows[1:]} == {
        company: [c.get("Female", 0), c.get("Male", 0), c.get("Other", 0), sum(c.values())]
        for company, c in counts.items()}
    other = page_client(people["other"]).get(reverse("operations:result", args=[operation.pk, "json"]))
    assert other.status_code == 404


def test_a_long_result_without_a_table_is_shortened_on_the_page_with_a_download(people):
    operation = operation_in(Status.COMPLETED, people["owner"])
    Operation.objects.filter(pk=operation.pk).update(result=list(range(5000)))
    page = page_client(people["owner"]).get(reverse("operations:detail", args=[operation.pk])).content.decode()
    assert "download the whole result (JSON)" in page
    csv_download = page_client(people["owner"]).get(reverse("operations:result", args=[operation.pk, "csv"]))
    assert csv_download.status_code == 404


def test_start_again_opens_the_form_with_the_parameters_and_retry_is_explained(people, settings, tmp_path):
    from operations.exceptions import DATA_ERROR_NOTE

    settings.TAP_CSV_DIR = str(tmp_path)
    (tmp_path / "march.csv").write_text("id,name,email,amount,date\n1,A,a@example.com,1.00,2026-01-01\n")
    operation = services.operation_start(kind="csv_import", params={"path": "march.csv", "chunk_rows": 700},
                                         owner=people["owner"], actor="cli")
    Operation.objects.filter(pk=operation.pk).update(
        status=Status.FAILED, error=f"march.csv, line 2, column amount: not a number (step 1 of 1; {DATA_ERROR_NOTE})")
    client = page_client(people["owner"])
    page = client.get(reverse("operations:detail", args=[operation.pk])).content.decode()
    assert 'data-testid="start-again"' in page and "a data error fails the same way" in page
    again = client.get(reverse("operations:new") + f"?kind=csv_import&from={operation.pk}").content.decode()
    assert "Starting again from operation" in again
    assert '<option value="march.csv" selected>' in again and 'value="700"' in again
    assert str(tmp_path) not in again
    stranger = page_client(people["other"]).get(reverse("operations:new") + f"?kind=csv_import&from={operation.pk}")
    assert "Starting again" not in stranger.content.decode() and 'value="700"' not in stranger.content.decode()
    running = operation_in(Status.RUNNING, people["owner"])
    assert "start-again" not in client.get(reverse("operations:detail", args=[running.pk])).content.decode()


def test_admin_search_matches_an_id_a_kind_or_an_owner_exactly(people):
    mine = operation_in(Status.RUNNING, people["owner"])
    theirs = operation_in(Status.RUNNING, people["other"])
    client = page_client(people["staff_with"])

    def found(term):
        page = client.get(reverse("admin:operations_operation_changelist"), {"q": term}).content.decode()
        return sorted({int(n) for n in re.findall(r"/admin/operations/operation/(\d+)/change/", page)})

    assert found(str(mine.pk)) == [mine.pk]
    assert found("other") == [theirs.pk]
    assert found("arithmetic") == sorted([mine.pk, theirs.pk])
    assert found("arith") == [] and found("oth") == []  # exact: no scan for a fragment
    listing = client.get(reverse("admin:operations_operation_changelist"), {"kind": "arithmetic"})
    assert listing.status_code == 200


def test_a_bulk_insert_paused_before_publishing_says_its_rows_are_staged_not_stored(people):
    operation = services.operation_start(kind="bulk_insert", params={"rows": 1000}, owner=people["owner"], actor="cli")
    Operation.objects.filter(pk=operation.pk).update(status=Status.PAUSED, step_index=1, progress_done=1000,
                                                     progress_total=1000)
    page = page_client(people["owner"]).get(reverse("operations:detail", args=[operation.pk])).content.decode()
    assert "1000 / 1000 rows staged (100%)" in page
    assert re.search(r'data-testid="row-count">0<', page)


def test_the_schema_says_what_may_be_null_and_every_refusal(people):
    api = api_client(people["owner"])
    schema = api.get("/api/schema/?format=json").json()
    operation = schema["components"]["schemas"]["Operation"]["properties"]
    for name in ("owner", "started_at", "finished_at", "heartbeat_at", "resume_at", "heartbeat_age", "silence",
                 "rows_stored"):
        assert operation[name].get("nullable") is True, name
    paths = schema["paths"]
    assert {"200", "400", "401", "403"} <= set(paths["/api/operations/"]["get"]["responses"])
    assert {"201", "400", "401", "403", "409", "413", "429"} <= set(paths["/api/operations/"]["post"]["responses"])
    assert {"202", "401", "403", "404", "409", "429"} <= set(paths["/api/operations/{id}/pause/"]["post"]["responses"])
    assert {"200", "401", "403", "404"} <= set(paths["/api/operations/{id}/"]["get"]["responses"])
    names = {p["name"] for p in paths["/api/operations/"]["get"]["parameters"]}
    assert {"status", "kind", "owner", "created_after", "created_before", "ordering", "page"} <= names
    # and a real response has what the schema says, nulls included
    created = api.post("/api/operations/", {"kind": "arithmetic", "params": {"steps": 2}}, format="json").json()
    assert set(created) == set(operation) and created["finished_at"] is None


def test_the_admin_shows_a_batch_s_tasks_with_their_ids(people):
    from operations.models import StepMember
    from operations.workflow import member_task_id

    operation = services.operation_start(kind="batch_sum", params={"tasks": [{"paramA": 1, "paramB": 2}] * 3},
                                         owner=people["owner"], actor="cli")
    for i in range(3):
        StepMember.objects.create(operation=operation, step_index=0, member_index=i,
                                  task_id=member_task_id(operation.pk, 0, i), state="SUCCESS", result=3)
    page = page_client(people["staff_with"]).get(
        reverse("admin:operations_operation_change", args=[operation.pk])).content.decode()
    assert "Group tasks" in page
    assert all(str(member_task_id(operation.pk, 0, i)) in page for i in range(3))


def test_an_unknown_body_field_is_a_400_that_names_it_and_changes_nothing(people):
    api = api_client(people["owner"])
    before = Operation.objects.count()
    response = api.post("/api/operations/", {"kind": "arithmetic", "params": {"steps": 2}, "idempotency_keys": "a"},
                        format="json")
    assert response.status_code == 400
    assert "unknown field" in response.json()["errors"]["idempotency_keys"][0]
    assert "idempotency_key" in response.json()["errors"]["idempotency_keys"][0]  # what it may have meant
    assert Operation.objects.count() == before
    operation = operation_in(Status.RUNNING, people["owner"])
    response = api.post(f"/api/operations/{operation.pk}/pause/", {"resumeat": "2030-01-01T00:00:00Z"}, format="json")
    assert response.status_code == 400 and list(response.json()["errors"]) == ["resumeat"]
    assert Operation.objects.get(pk=operation.pk).status == Status.RUNNING
    paused = operation_in(Status.PAUSED, people["owner"])
    response = api.post(f"/api/operations/{paused.pk}/edit/", {"steps": [{"step": 3, "arg": [1]}]}, format="json")
    assert response.status_code == 400 and "unknown field" in response.json()["errors"]["steps[0].arg"][0]
    assert Operation.objects.get(pk=paused.pk).workflow == paused.workflow
    # the schema says so, so generated clients and fuzzers know
    schemas = api.get("/api/schema/?format=json").json()["components"]["schemas"]
    for name in ("Pause", "Resume", "Fork", "Approve", "Signal", "Edit", "StepEdit", "StartArithmetic",
                 "UploadCsvImport"):
        assert schemas[name]["additionalProperties"] is False, name
    # a multipart start's file field is not unknown: the start reads it
    from django.core.files.uploadedfile import SimpleUploadedFile

    upload = api.post("/api/operations/", {"kind": "csv_import", "file": SimpleUploadedFile("x.csv", b"id,name\n")},
                      format="multipart")
    assert "expected the header" in upload.json()["errors"]["file"][0]  # the file itself was read


def test_a_page_that_is_not_a_number_is_a_400_naming_it(people):
    api = api_client(people["owner"])
    operation_in(Status.RUNNING, people["owner"])
    assert api.get("/api/operations/?page=1").status_code == 200
    for query in ("page=x", "page=", "page=1&page=", "page=1.5"):
        response = api.get(f"/api/operations/?{query}")
        assert response.status_code == 400 and "page" in response.json()["errors"], query
    for query in ("page=9", "page=0", "page=-1"):  # a whole number that is no page: 404, as in DRF
        assert api.get(f"/api/operations/?{query}").status_code == 404, query
