"""The JSON shape of an operation (contract): one serializer for the API and ``operations show --json``."""

import datetime

from rest_framework import serializers

from . import selectors
from .models import Operation, OperationEvent
from .states import label


class IsoDateTimeField(serializers.DateTimeField):
    """ISO 8601 in UTC, always with microseconds (the contract), e.g. 2026-11-22T05:00:00.123456+00:00."""

    def to_representation(self, value):
        if value is None:
            return None
        return value.astimezone(datetime.timezone.utc).isoformat(timespec="microseconds")


class EventSerializer(serializers.ModelSerializer):
    at = IsoDateTimeField()

    class Meta:
        model = OperationEvent
        fields = ["at", "actor", "via", "from_status", "to_status", "note"]


class ProgressSerializer(serializers.Serializer):
    done = serializers.IntegerField(source="progress_done")
    total = serializers.IntegerField(source="progress_total", allow_null=True)
    percent = serializers.IntegerField()


class OperationSerializer(serializers.ModelSerializer):
    owner = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)
    status_label = serializers.SerializerMethodField()
    params = serializers.SerializerMethodField()
    progress = ProgressSerializer(source="*", read_only=True)
    created_at = IsoDateTimeField(read_only=True)
    started_at = IsoDateTimeField(read_only=True, allow_null=True)
    finished_at = IsoDateTimeField(read_only=True, allow_null=True)
    updated_at = IsoDateTimeField(read_only=True)
    heartbeat_at = IsoDateTimeField(read_only=True, allow_null=True)
    actions = serializers.SerializerMethodField()
    heartbeat_age = serializers.SerializerMethodField()
    silence = serializers.SerializerMethodField()
    resume_at = IsoDateTimeField(read_only=True, allow_null=True)
    deadline_at = IsoDateTimeField(read_only=True, allow_null=True,
                                   help_text="If it has not ended by then, beat ends it as its kind says.")
    pause_window = serializers.CharField(read_only=True, help_text='"HH:MM-HH:MM" it never runs in ("" if none).')
    idempotency_key = serializers.CharField(read_only=True, help_text="The key it was started with ('' if none).")
    schedule = serializers.SlugRelatedField(slug_field="name", read_only=True, allow_null=True,
                                            help_text="The schedule that started it, if one did.")
    rows_stored = serializers.SerializerMethodField()
    remaining_workflow = serializers.SerializerMethodField()
    forked_from = serializers.PrimaryKeyRelatedField(read_only=True, allow_null=True,
                                                     help_text="The operation this one was forked from.")
    forked_at_step = serializers.IntegerField(read_only=True, allow_null=True,
                                              help_text="The step (1-based) of the original it started at.")
    forks = serializers.SerializerMethodField()
    fork_steps = serializers.SerializerMethodField()
    events = serializers.SerializerMethodField()

    class Meta:
        model = Operation
        fields = [
            "id", "kind", "status", "status_label", "owner", "params", "progress", "result", "error",
            "run_token", "created_at", "started_at", "finished_at", "updated_at", "heartbeat_at",
            "heartbeat_age", "silence", "resume_at", "deadline_at", "pause_window", "idempotency_key", "schedule", "actions", "rows_stored", "remaining_workflow",
            "forked_from", "forked_at_step", "forks", "fork_steps", "events",
        ]
        read_only_fields = fields

    def get_status_label(self, operation) -> str:
        return label(operation.status)

    def get_params(self, operation) -> dict:
        """The parameters, without those the kind keeps from people (server paths)."""
        return selectors.shown_params(operation)

    def get_actions(self, operation) -> list[str]:
        return selectors.operation_actions(operation)

    def get_forks(self, operation) -> list[int]:
        """The operations forked from this one (ids, oldest first)."""
        return [fork.pk for fork in selectors.operation_lineage(operation)[1]]

    def get_fork_steps(self, operation) -> list[int]:
        """The steps (1-based) a fork may start from (POST …/fork/ with ``from_step``)."""
        return selectors.fork_steps(operation)

    def get_heartbeat_age(self, operation) -> float | None:
        """Seconds since a worker last showed signs of life for it (or since its last dispatch)."""
        age = selectors.heartbeat_age(operation)
        return None if age is None else round(age, 3)

    def get_silence(self, operation) -> str | None:
        """A warning when an active operation has been silent too long; null otherwise."""
        return selectors.silence(operation)

    def get_rows_stored(self, operation) -> int | None:
        """Data rows the operation has stored right now (csv_import, bulk_insert); null for others."""
        return selectors.operation_row_count(operation)

    def get_remaining_workflow(self, operation) -> dict:
        return selectors.remaining_workflow(operation)

    def get_events(self, operation) -> list[dict]:
        return EventSerializer(selectors.operation_events(operation=operation), many=True).data


class ErrorSerializer(serializers.Serializer):
    """Every refusal of the API: what was wrong (and, for bad parameters, per field)."""

    detail = serializers.CharField()
    errors = serializers.DictField(child=serializers.ListField(child=serializers.CharField()), required=False)
    status = serializers.CharField(required=False, help_text="The operation's status, when a verb was refused.")
    operation = serializers.IntegerField(required=False, help_text="The operation an idempotency key started, "
                                                                   "when a start with it asked for something else.")


class OperationListSerializer(OperationSerializer):
    """The list shows each operation without its history, plan and forks (one query per page)."""

    class Meta(OperationSerializer.Meta):
        fields = [f for f in OperationSerializer.Meta.fields
                  if f not in {"events", "remaining_workflow", "rows_stored", "forks", "fork_steps"}]
        read_only_fields = fields
