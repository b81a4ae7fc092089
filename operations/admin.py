"""The admin: watch operations, and Pause / Resume / Cancel / Retry a selection through the services."""

import json

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.db.models import Q
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from . import schedules, selectors, services
from .catalogue import all_kinds
from .models import Operation, OperationEvent, OperationQuota, Schedule, StepMember
from .states import label

MAX_STEPS_SHOWN = 50


class ReadOnlyInline(admin.TabularInline):
    """Part of the operation's record: shown with it, never edited, added or removed by hand."""

    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_view_permission(self, request, obj=None):
        return request.user.has_perm("operations.view_operation")  # part of the operation


class OperationEventInline(ReadOnlyInline):
    model = OperationEvent
    fields = ("when", "actor", "via", "change", "note")
    readonly_fields = fields

    @admin.display(description="when", ordering="at")
    def when(self, event):
        """To the second (the admin's default format stops at the minute; events come seconds apart)."""
        return format_html('<time datetime="{}">{}</time>', event.at.isoformat(),
                           timezone.localtime(event.at).strftime("%Y-%m-%d %H:%M:%S"))

    @admin.display(description="change")
    def change(self, event):
        """Status labels, as the pages show them; a note (no status change) shows its status once."""
        if event.from_status and event.from_status != event.to_status:
            return f"{label(event.from_status)} → {label(event.to_status)}"
        return label(event.to_status)


def _to_the_second(moment):
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S") if moment else "—"


def _to_the_second_of(field, description):
    """A read-only field showing ``field`` to the second (the admin's format stops at the minute)."""

    @admin.display(description=description, ordering=field)
    def show(self, obj):
        return _to_the_second(getattr(obj, field))

    return show


class KindFilter(admin.SimpleListFilter):
    """By kind, offering the registered kinds: Django's own filter asks the table for its
    DISTINCT kinds, a scan of every row on each page view."""

    title, parameter_name = "kind", "kind"

    def lookups(self, request, model_admin):
        return [(kind.name, kind.name) for kind in all_kinds()]

    def queryset(self, request, queryset):
        return queryset.filter(kind=self.value()) if self.value() else queryset


class StepMemberInline(ReadOnlyInline):
    """The tasks of a group step (a batch's): each one's Celery task id (the id /tasks/<id>
    answers for), state and result — the step messages themselves store no result (the
    operation's row is their result), so Celery's own Task results list stays empty for them."""

    model = StepMember
    fields = ("step_index", "member_index", "task_id", "state", "result", "error", "finished")
    readonly_fields = fields
    verbose_name, verbose_name_plural = "group task", "group tasks"
    finished = _to_the_second_of("finished_at", "finished")


@admin.register(Operation)
class OperationAdmin(admin.ModelAdmin):
    list_display = ("id", "kind", "owner", "status_badge", "progress_bar", "sign_of_life", "last_change")
    list_display_links = ("id", "kind")
    list_filter = ("status", KindFilter, "owner")
    search_fields = ("=id",)  # the box; what a term matches is get_search_results'
    search_help_text = "An operation's id, a kind (csv_import) or an owner's username — exactly."
    # No date_hierarchy: its SELECT DISTINCT date_trunc(…) scans every row on each page view.
    list_select_related = ("owner",)
    list_per_page = 50
    show_full_result_count = False  # COUNT(*) over 100k rows on every page view adds nothing
    actions = ["approve", "reject", "pause", "resume", "cancel", "terminate", "retry", "fork"]
    inlines = [OperationEventInline, StepMemberInline]
    fields = ("kind", "owner", "status_badge", "progress_bar", "parameters", "result", "error", "run_token",
              "remaining_workflow", "lineage", "heartbeat", "sign_of_life", "resumes_at", "deadline", "deaths",
              "auto_resumes", "idempotency_key", "schedule", "created", "started", "finished", "duration", "updated",
              "kept_until")
    readonly_fields = fields

    class Media:
        css = {"all": ["operations/admin.css"]}
        js = ["operations/admin-live.js"]  # the changelist and the operation's page refresh themselves

    def has_add_permission(self, request):
        return False  # operations start from the pages, the API or the CLI, with their parameters checked

    def get_search_results(self, request, queryset, search_term):
        """Exact matches on indexed columns only: Django's default (``icontains`` on kind, owner
        and error) scans every row — 0.5 s and more at 100k operations (bench/admin.py)."""
        term = search_term.strip()
        if not term:
            return queryset, False
        if term.isdigit():
            return queryset.filter(pk=int(term)), False
        owners = get_user_model().objects.filter(**{get_user_model().USERNAME_FIELD: term}).values("pk")
        return queryset.filter(Q(kind=term) | Q(owner_id__in=owners)), False

    def change_view(self, request, object_id, form_url="", extra_context=None):
        """The operation's page, with the verbs that apply now and that this user may use as buttons."""
        operation = self.get_object(request, object_id)
        actions = selectors.operation_actions(operation, request.user) if operation else []
        if operation and selectors.can_control(request.user, operation, "fork") and selectors.fork_steps(operation):
            actions.append("fork")
        # Editing a paused operation's parameters is a form: its page has it (staff see every page).
        edit_url = (reverse("operations:detail", args=[operation.pk]) + "#edit"
                    if operation and selectors.edit_form(operation, request.user) else "")
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), "tap_actions": actions,
                                                                   "tap_edit_url": edit_url})

    def response_action(self, request, queryset):
        """A verb pressed on an operation's page goes back to that page, not to the list."""
        response = super().response_action(request, queryset)
        back = request.POST.get("_back_to_change", "")
        if back.isdigit() and isinstance(response, HttpResponseRedirect):
            return HttpResponseRedirect(reverse("admin:operations_operation_change", args=[int(back)]))
        return response

    def get_deleted_objects(self, objs, request):
        """What a delete removes, as counts: Django's own list names every related row (a million
        records of an import make a 20 MB page and take minutes to build)."""
        operations = list(objs)
        listed, perms_needed = [], set()
        if operations and not self.has_delete_permission(request):
            perms_needed.add(self.opts.verbose_name)
        for operation in operations:
            parts = [f"{count:,} {what}" for what, count in selectors.operation_dependents(operation) if count]
            listed += [f"{self.opts.verbose_name.capitalize()}: {operation}", parts]
        return listed, {self.opts.verbose_name_plural: len(operations)}, perms_needed, []

    def has_change_permission(self, request, obj=None):
        return False  # engine fields change only through the actions below

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj):
        return format_html('<span class="tap-badge tap-{}">{}</span>', obj.status, label(obj.status))

    @admin.display(description="progress")
    def progress_bar(self, obj):
        total = obj.progress_total or 0
        return format_html('<progress max="100" value="{}"></progress> {}% <span class="tap-muted">{} / {}</span>',
                           obj.percent, obj.percent, obj.progress_done, total or "?")

    @admin.display(description="last sign of life", ordering="heartbeat_at")
    def sign_of_life(self, obj):
        """How long ago a worker reported, for active and interrupted operations; a warning once
        an active one is silent."""
        age = selectors.shown_heartbeat_age(obj)
        if age is None:
            return "—"
        warning = selectors.silence(obj)
        if warning:
            return format_html('<span class="tap-silent" title="{}">⚠ {} ago</span>', warning,
                               selectors.human_duration(age))
        return f"{selectors.human_duration(age)} ago"

    @admin.display(description="last change", ordering="updated_at")
    def last_change(self, obj):
        return obj.updated_at

    heartbeat = _to_the_second_of("heartbeat_at", "heartbeat at")
    resumes_at = _to_the_second_of("resume_at", "resumes by itself at")
    deadline = _to_the_second_of("deadline_at", "deadline")

    @admin.display(description="kept until")
    def kept_until(self, obj):
        """When retention deletes it (TAP_RETENTION, or its kind's): finished ones only."""
        until = selectors.operation_kept_until(obj)
        if until is None:
            return "—" if obj.finished_at is None or obj.status not in ("completed", "cancelled", "failed") else "forever"
        return _to_the_second(until)
    created = _to_the_second_of("created_at", "created")
    started = _to_the_second_of("started_at", "started")
    finished = _to_the_second_of("finished_at", "finished")
    updated = _to_the_second_of("updated_at", "updated")

    @admin.display(description="duration")
    def duration(self, obj):
        """From start to finish, or to now while it is not finished."""
        if obj.started_at is None:
            return "—"
        end = obj.finished_at or timezone.now()
        return selectors.human_duration(max(0.0, (end - obj.started_at).total_seconds()))

    @admin.display(description="params")
    def parameters(self, obj):
        """The parameters without those the kind keeps from people (server paths)."""
        return format_html("<pre class='tap-json'>{}</pre>", json.dumps(selectors.shown_params(obj), indent=2, default=str))

    @admin.display(description="lineage")
    def lineage(self, obj):
        """Where it was forked from, and its forks, as links to their pages."""
        origin, forks = selectors.operation_lineage(obj)

        def link(operation, text):
            return format_html('<a href="{}">{}</a>', reverse("admin:operations_operation_change", args=[operation.pk]), text)

        parts = []
        if origin:
            parts.append(format_html("forked from {} at step {}", link(origin, f"#{origin.pk}"), obj.forked_at_step))
        if forks:
            parts.append(format_html("forks: {}", format_html_join(", ", "{} (from step {})",
                                                                   ((link(f, f"#{f.pk}"), f.forked_at_step) for f in forks))))
        return format_html_join("; ", "{}", ((part,) for part in parts)) if parts else "—"

    @admin.display(description="remaining workflow")
    def remaining_workflow(self, obj):
        remaining = selectors.remaining_workflow(obj)
        hidden = len(remaining["steps"]) - MAX_STEPS_SHOWN
        if hidden > 0:
            remaining["steps"] = remaining["steps"][:MAX_STEPS_SHOWN] + [f"… {hidden} more step(s)"]
        return format_html("<pre class='tap-json'>{}</pre>", json.dumps(remaining, indent=2, default=str))

    # --- actions: each is one service call per operation, reported with counts ---------------

    def _apply(self, request, queryset, verb):
        self._report(request, verb, services.operations_apply(verb, queryset, actor=self._actor(request)))

    @staticmethod
    def _actor(request):
        return services.Actor.coerce(request.user, via="admin")

    def _report(self, request, verb, outcome):
        if outcome.changed:
            what = "new operation(s) started" if verb == "fork" else "operation(s) changed"
            self.message_user(request, f"{verb.capitalize()}: {len(outcome.changed)} {what}.",
                              messages.SUCCESS)
        if outcome.refused:
            self.message_user(request, f"{verb.capitalize()}: {len(outcome.refused)} refused — "
                                       + "; ".join(outcome.refused), messages.WARNING)

    @admin.action(description="Pause", permissions=["pause"])
    def pause(self, request, queryset):
        self._apply(request, queryset, "pause")

    @admin.action(description="Resume", permissions=["resume"])
    def resume(self, request, queryset):
        self._apply(request, queryset, "resume")

    @admin.action(description="Retry", permissions=["retry"])
    def retry(self, request, queryset):
        self._apply(request, queryset, "retry")

    @admin.action(description="Fork from where it stopped", permissions=["fork"])
    def fork(self, request, queryset):
        outcome = services.operations_fork(queryset, actor=self._actor(request))
        self._report(request, "fork", outcome)
        for fork in outcome.changed:
            self.message_user(request, format_html('Operation <a href="{}">{}</a> runs operation {} again from step {}.',
                                                   reverse("admin:operations_operation_change", args=[fork.pk]),
                                                   fork.pk, fork.forked_from_id, fork.forked_at_step), messages.INFO)

    @admin.action(description="Cancel", permissions=["cancel"])
    def cancel(self, request, queryset):
        return self._confirmed(request, queryset, "cancel")

    @admin.action(description="Approve", permissions=["approve"])
    def approve(self, request, queryset):
        self._apply(request, queryset, "approve")

    @admin.action(description="Reject", permissions=["reject"])
    def reject(self, request, queryset):
        return self._confirmed(request, queryset, "reject")

    @admin.action(description="Terminate", permissions=["terminate"])
    def terminate(self, request, queryset):
        return self._confirmed(request, queryset, "terminate")

    #: What the confirmation page of each destructive verb says before the list of operations.
    CONFIRM_INTRO = {
        "cancel": "Cancel these operations? Running ones stop at their next pause point; paused, failed and "
                  "interrupted ones are cancelled at once. Each cancel undoes what its operation wrote:",
        "reject": "Reject these waiting operations? Each one ends cancelled, and its compensation undoes what "
                  "it wrote:",
        "terminate": "Terminate these operations? The worker process running each one's step is stopped at once, "
                     "without waiting for a pause point, and what the step had not committed is lost. Each "
                     "terminate undoes what its operation wrote:",
    }

    def _confirmed(self, request, queryset, verb):
        if request.POST.get("post") != "yes":  # ask first, like delete_selected
            return TemplateResponse(request, "admin/operations/cancel_confirmation.html", {
                **self.admin_site.each_context(request), "title": f"{verb.capitalize()} operations?",
                "opts": self.model._meta, "verb": verb, "intro": self.CONFIRM_INTRO[verb],
                "operations": [(op, selectors.operation_cancel_effect(op)) for op in queryset],
                "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
                "back_to_change": request.POST.get("_back_to_change", ""),
            })
        self._apply(request, queryset, verb)

    def has_pause_permission(self, request):
        return request.user.has_perm("operations.pause_operation")

    def has_resume_permission(self, request):
        return request.user.has_perm("operations.resume_operation")

    def has_cancel_permission(self, request):
        return request.user.has_perm("operations.cancel_operation")

    def has_approve_permission(self, request):
        return request.user.has_perm("operations.approve_operation")

    def has_reject_permission(self, request):
        return request.user.has_perm("operations.reject_operation")

    def has_terminate_permission(self, request):
        return request.user.has_perm("operations.terminate_operation")

    def has_edit_permission(self, request):
        return request.user.has_perm("operations.edit_operation")

    def has_fork_permission(self, request):
        return request.user.has_perm("operations.fork_operation")

    def has_retry_permission(self, request):
        return request.user.has_perm("operations.retry_operation")


@admin.register(OperationQuota)
class OperationQuotaAdmin(admin.ModelAdmin):
    """What a user may ask of the workers; a staff member with the permission sets it."""

    list_display = ("user", "max_unfinished", "max_work_seconds")
    search_fields = ("=user__username",)
    raw_id_fields = ("user",)


class ScheduleForm(forms.ModelForm):
    """A new schedule: what it starts and when; saved through ``schedules.schedule_create``."""

    kind = forms.ChoiceField(choices=())
    params = forms.JSONField(required=False, initial=dict, help_text="The kind's parameters, as JSON.")
    crontab = forms.CharField(required=False, help_text='Minute hour day-of-month month day-of-week, e.g. "*/5 * * * *".')
    every = forms.FloatField(required=False, min_value=1, help_text="Or: every this many seconds.")

    class Meta:
        model = Schedule
        fields = ("name", "kind", "params", "owner", "crontab", "every")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["kind"].choices = [(kind.name, f"{kind.name} — {kind.label}") for kind in all_kinds()]

    def _post_clean(self):
        """The service checks the rest (the parameters against the kind, the timing) and creates it."""
        if self.errors:
            return
        data = self.cleaned_data
        try:
            self.instance = schedules.schedule_create(
                name=data["name"], kind=data["kind"], params=data.get("params") or {}, owner=data.get("owner"),
                actor=services.Actor.coerce(self.actor, via="admin"),
                crontab=data.get("crontab") or None, every=data.get("every"))
        except services.InvalidParams as exc:
            for field, messages_ in exc.errors.items():
                self.add_error(None if field not in self.fields else field, messages_)


@admin.register(Schedule)
class ScheduleAdmin(admin.ModelAdmin):
    """Schedules start operations at each firing; Pause / Resume stop and restart the firings."""

    list_display = ("name", "kind", "timing", "state", "fired", "refused", "last_fired_at", "last_outcome")
    list_select_related = ("periodic_task__interval", "periodic_task__crontab")
    search_fields = ("name", "=kind")
    actions = ["pause", "resume"]
    readonly_fields = ("name", "kind", "params", "owner", "timing", "state", "fired", "refused", "last_fired_at",
                       "last_outcome", "started", "history")
    raw_id_fields = ("owner",)

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            return type("ScheduleFormOfRequest", (ScheduleForm,), {"actor": request.user})
        return super().get_form(request, obj, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields if obj else ()

    def get_fields(self, request, obj=None):
        return self.readonly_fields if obj else ScheduleForm.Meta.fields

    def save_model(self, request, obj, form, change):
        pass  # schedules.schedule_create saved it in the form's validation

    def has_change_permission(self, request, obj=None):
        return False

    def delete_model(self, request, obj):
        schedules.schedule_delete(schedule=obj, actor=services.Actor.coerce(request.user, via="admin"))

    def delete_queryset(self, request, queryset):
        for schedule in queryset:
            self.delete_model(request, schedule)

    @admin.display(description="timing")
    def timing(self, obj):
        return schedules.describe_timing(obj)

    @admin.display(description="state", boolean=False)
    def state(self, obj):
        return "Paused" if obj.paused else "On"

    @admin.display(description="operations it started (newest 50)")
    def started(self, obj):
        rows = obj.operations.order_by("-created_at")[:50]
        return format_html_join(", ", '<a href="{}">#{}</a> ({})', (
            (reverse("admin:operations_operation_change", args=[op.pk]), op.pk, label(op.status)) for op in rows)) or "—"

    @admin.display(description="history (newest 50)")
    def history(self, obj):
        rows = obj.events.order_by("-at", "-id")[:50]
        return format_html_join("", "<div>{} {}: {}</div>", (
            (_to_the_second(e.at), e.actor, e.note) for e in rows)) or "—"

    @admin.action(description="Pause", permissions=["pause_schedule"])
    def pause(self, request, queryset):
        self._apply(request, queryset, schedules.schedule_pause, "paused")

    @admin.action(description="Resume", permissions=["pause_schedule"])
    def resume(self, request, queryset):
        self._apply(request, queryset, schedules.schedule_resume, "resumed")

    def _apply(self, request, queryset, service, done):
        actor, changed = services.Actor.coerce(request.user, via="admin"), 0
        for schedule in queryset:
            try:
                service(schedule=schedule, actor=actor)
                changed += 1
            except services.OperationError as exc:
                self.message_user(request, str(exc), messages.WARNING)
        if changed:
            self.message_user(request, f"{changed} schedule(s) {done}.", messages.SUCCESS)

    def has_pause_schedule_permission(self, request):
        return request.user.has_perm("operations.pause_schedule")
