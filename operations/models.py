"""The control bus: one ``Operation`` row per operation is the single source of truth.

Its status, progress and remaining workflow live here; the broker only rings the doorbell.
Every status change goes through ``operations.services`` (one conditional UPDATE each).
"""

from django.conf import settings
from django.db import models
from django.db.models import Q, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from .states import Status


class Operation(models.Model):
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE,
        related_name="operations", help_text="Who started it; they may pause, resume and cancel it.",
    )
    kind = models.CharField(max_length=64, help_text="Name of the operation type in the catalogue.")
    params = models.JSONField(default=dict, blank=True, help_text="Validated parameters of the kind.")
    status = models.CharField(max_length=32, choices=Status.choices, default=Status.RUNNING)
    previous_status = models.CharField(
        max_length=32, choices=Status.choices, blank=True,
        help_text="Status before the last transition (set by the same UPDATE).",
    )
    run_token = models.PositiveIntegerField(
        default=1, help_text="Fencing token: +1 at every dispatch; a step carrying an older one does nothing.",
    )
    fence = models.PositiveBigIntegerField(
        default=0, help_text="Write sequence: +1 at every step advance and checkpoint.",
    )
    workflow = models.JSONField(
        default=dict, blank=True,
        help_text="The plan: the steps as signature-style dicts, written once at start.",
    )
    step_index = models.PositiveIntegerField(
        default=0, help_text="Index in the plan of the next step to run (the head of the remaining workflow).",
    )
    hop = models.BigIntegerField(
        default=0, help_text="Token of the last advance that published the next step's message while it ran: "
                             "that message runs its step only if the row carries its token (the advance won).",
    )
    carry = models.JSONField(null=True, blank=True, help_text="The value carried into the next step.")
    checkpoint = models.JSONField(
        null=True, blank=True, help_text="In-step cursor of the step at the head, for long iterative steps.",
    )
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True, help_text="What failed, and where.")
    progress_done = models.BigIntegerField(default=0)
    progress_total = models.BigIntegerField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(
        null=True, blank=True, help_text="Last sign of life from a worker (or of the last dispatch).",
    )
    deaths = models.PositiveIntegerField(
        default=0, help_text="Workers lost while running the head step, since the operation last got further "
                             "(the poison count).",
    )
    death_fence = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="The write sequence when the last worker running it was lost.",
    )
    claimed_run = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="The run (its token) whose message a worker last took: beat counts a run "
                                         "that went silent as a lost worker only once a worker took it.",
    )
    auto_resumes = models.PositiveIntegerField(
        default=0, help_text="Automatic resumes by beat since the operation last got further.",
    )
    recovered_fence = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="The write sequence at the last automatic resume.",
    )
    resume_at = models.DateTimeField(
        null=True, blank=True, help_text="When beat acts on it by itself: resumes it if interrupted, ends "
                                         "its wait (as the wait step says) if waiting.",
    )
    waiting_for = models.CharField(
        max_length=100, blank=True, help_text="While waiting: the signal it waits for (approval, or a name).",
    )
    forked_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="forks",
        help_text="The operation this one was forked from (services.operation_fork).",
    )
    forked_at_step = models.PositiveIntegerField(
        null=True, blank=True, help_text="The step (1-based) of the original this fork started at.",
    )
    idempotency_key = models.CharField(
        max_length=200, blank=True, help_text="The key its start was made with (one start per owner and key).",
    )
    start_fingerprint = models.CharField(
        max_length=64, blank=True, help_text="A hash of what the start asked for: the same key must ask the same.",
    )
    schedule = models.ForeignKey(
        "operations.Schedule", null=True, blank=True, on_delete=models.SET_NULL, related_name="operations",
        help_text="The schedule that started it, if one did.",
    )
    deadline_at = models.DateTimeField(
        null=True, blank=True, help_text="If it has not ended by then, beat ends it as its kind says (failed or cancelled).",
    )
    deadline_seconds = models.FloatField(
        null=True, blank=True, help_text="The deadline's length from the start: a retry after it passed gets as long again.",
    )
    pause_window = models.CharField(
        max_length=11, blank=True, help_text='Never runs between these times of day (TIME_ZONE), "08:00-18:00": '
                                             "beat pauses it when the window opens and resumes it when it closes.",
    )
    step_deadline_at = models.DateTimeField(
        null=True, blank=True, help_text="When the step at step_deadline_index passes its time limit.",
    )
    step_deadline_index = models.PositiveIntegerField(
        null=True, blank=True, help_text="The step (0-based) whose time limit step_deadline_at is.",
    )
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            # One start per owner and key; the CLI's and beat's starts (no owner) share one space.
            models.UniqueConstraint(Coalesce("owner", Value(0)), "idempotency_key",
                                    condition=~Q(idempotency_key=""), name="one_start_per_idempotency_key"),
        ]
        indexes = [
            models.Index(fields=["owner", "-created_at"], name="op_owner_created"),
            # Status only: a step's writes (heartbeat, cursor, progress) touch no indexed column,
            # so PostgreSQL can update the row in place (a HOT update) at every step.
            models.Index(fields=["status"], name="op_status"),
            models.Index(fields=["-created_at"], name="op_created"),
            models.Index(fields=["kind", "status"], name="op_kind_status"),
            # Retention: the oldest finished ones of each status first.
            models.Index(fields=["status", "finished_at"], name="op_status_finished"),
        ]
        permissions = [
            ("pause_operation", "Can pause operations"),
            ("resume_operation", "Can resume operations"),
            ("cancel_operation", "Can cancel operations"),
            ("retry_operation", "Can retry operations"),
            ("terminate_operation", "Can terminate operations"),
            ("fork_operation", "Can fork operations"),
            ("edit_operation", "Can edit paused operations"),
            ("approve_operation", "Can approve or signal waiting operations"),
            ("reject_operation", "Can reject waiting operations"),
            ("purge_operation", "Can purge finished operations"),
        ]

    def __str__(self):
        return f"#{self.pk} {self.kind} ({self.status})"

    @property
    def steps(self):
        return (self.workflow or {}).get("steps", [])

    @property
    def percent(self):
        if not self.progress_total:
            return 100 if self.status == Status.COMPLETED else 0
        return min(100, int(100 * self.progress_done / self.progress_total))


class OperationEvent(models.Model):
    """Append-only history of an operation: every transition, with who did it."""

    operation = models.ForeignKey(Operation, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField(default=timezone.now)
    actor = models.CharField(max_length=150, help_text="A username, or worker / cli / api / beat.")
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
    )
    via = models.CharField(max_length=16, blank=True, help_text="web, admin, api, cli, worker or beat.")
    from_status = models.CharField(max_length=32, blank=True)
    to_status = models.CharField(max_length=32, blank=True)
    note = models.TextField(blank=True)

    class Meta:
        ordering = ["at", "id"]
        indexes = [models.Index(fields=["operation", "at"], name="opevent_op_at")]

    def __str__(self):
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor}: {self.from_status or '—'} → {self.to_status}"


class ConcurrencySlot(models.Model):
    """One row per operation holding a ``max_concurrent`` slot; the unique key is the limit."""

    kind = models.CharField(max_length=64)
    scope = models.CharField(max_length=64, help_text='"global" or "user:<id>".')
    slot = models.PositiveIntegerField()
    operation = models.OneToOneField(Operation, on_delete=models.CASCADE, related_name="slot")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["kind", "scope", "slot"], name="one_operation_per_slot"),
        ]


class StepMember(models.Model):
    """One member of a group step (e.g. one task of a batch): run in parallel, counted on the row."""

    class State(models.TextChoices):
        PENDING = "PENDING", "Pending"
        STARTED = "STARTED", "Started"
        SUCCESS = "SUCCESS", "Succeeded"
        FAILURE = "FAILURE", "Failed"

    operation = models.ForeignKey(Operation, on_delete=models.CASCADE, related_name="members", db_index=False)
    step_index = models.PositiveIntegerField()
    member_index = models.PositiveIntegerField()
    task_id = models.UUIDField(unique=True, help_text="The id clients use at /tasks/<id>.")
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    result = models.JSONField(null=True, blank=True)
    cached = models.BooleanField(default=False, help_text="The result came from the step cache.")
    error = models.TextField(blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["operation", "step_index", "member_index"], name="one_member_per_slot"),
        ]


class StepBoundary(models.Model):
    """The value carried into a step, kept for every step a run reached: what a fork from that
    step starts with. Written by the advance that reaches it, in the same statement on PostgreSQL."""

    # The key is the only index, and no foreign key is checked: each advance adds one row, and
    # every index more (or a sequence) would cost every step. Deleting the operation removes them.
    pk = models.CompositePrimaryKey("operation", "step_index")
    operation = models.ForeignKey(Operation, on_delete=models.CASCADE, related_name="boundaries",
                                  db_index=False, db_constraint=False)
    step_index = models.PositiveIntegerField(help_text="The step (0-based) the value is carried into.")
    carry = models.JSONField(null=True, blank=True)


class StepCache(models.Model):
    """Results of steps registered with ``cache=True``, keyed by the task and its inputs."""

    key = models.CharField(max_length=64, unique=True, help_text="sha256 of the task name and arguments.")
    task = models.CharField(max_length=200)
    arguments = models.JSONField()
    result = models.JSONField(null=True)
    created_at = models.DateTimeField(default=timezone.now)


class OperationQuota(models.Model):
    """What one user may ask of the workers, set by a staff member; an empty field takes the
    setting's default (TAP_USER_MAX_UNFINISHED, TAP_USER_MAX_WORK_SECONDS). Staff have none."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="operation_quota")
    max_unfinished = models.PositiveIntegerField(
        null=True, blank=True, help_text="Operations running, paused or interrupted at once. Empty: the default.")
    max_work_seconds = models.FloatField(
        null=True, blank=True, help_text="Worker-seconds one operation may ask for (steps × delay, tasks × "
                                         "seconds). Empty: the default.")

    class Meta:
        verbose_name = "operation quota"

    def __str__(self):
        return f"quota of {self.user}"


class Schedule(models.Model):
    """Starts an operation of a kind with fixed parameters at each firing of its beat entry.

    The timing is a django-celery-beat ``PeriodicTask`` (crontab or interval) that calls
    ``operations.fire_schedule`` with this row's id; pausing the schedule disables that entry.
    Managed through ``operations.services`` (``schedule_create`` …), like every other write.
    """

    name = models.CharField(max_length=150, unique=True)
    kind = models.CharField(max_length=64, help_text="The kind of operation each firing starts.")
    params = models.JSONField(default=dict, blank=True, help_text="Validated parameters of the kind.")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="operation_schedules",
        help_text="Owns the operations it starts (their quota applies); empty: nobody, as from the CLI.",
    )
    periodic_task = models.OneToOneField(
        "django_celery_beat.PeriodicTask", on_delete=models.CASCADE, related_name="operation_schedule",
        help_text="Beat's entry: when it fires, and whether it is enabled.",
    )
    created_at = models.DateTimeField(default=timezone.now)
    last_fired_at = models.DateTimeField(null=True, blank=True)
    fired = models.PositiveIntegerField(default=0, help_text="Firings that started an operation.")
    refused = models.PositiveIntegerField(default=0, help_text="Firings refused (a concurrency limit, a quota).")
    last_outcome = models.TextField(blank=True, help_text="What the last firing did.")

    class Meta:
        ordering = ["name"]
        permissions = [("pause_schedule", "Can pause and resume operation schedules")]

    def __str__(self):
        return self.name

    @property
    def paused(self) -> bool:
        return not self.periodic_task.enabled


class ScheduleEvent(models.Model):
    """A schedule's history: who created, paused or resumed it, and what each firing did."""

    schedule = models.ForeignKey(Schedule, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField(default=timezone.now)
    actor = models.CharField(max_length=150)
    via = models.CharField(max_length=16, blank=True)
    operation = models.ForeignKey(Operation, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
                                  help_text="The operation a firing started.")
    note = models.TextField(blank=True)

    class Meta:
        ordering = ["at", "id"]
        indexes = [models.Index(fields=["schedule", "at"], name="schedevent_schedule_at")]
