"""The original batch service's endpoints, kept for its clients: POST /grouptasks, GET
/grouptasks/<id> and GET /tasks/<id> (contract in DESIGN §5), on top of the batch_sum kind."""

import uuid

from django.http import Http404
from drf_spectacular.utils import inline_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from operations import selectors, services
from operations.api import (
    REFUSALS,
    REFUSALS_READ,
    AppAPIView,
    BoundedJSONParser,
    actor_of,
    described,
    error_response,
)
from operations.models import Operation, StepMember
from operations.paramschema import errors_against, field_schema
from operations.serializers import ErrorSerializer
from operations.workflow import member_task_id

from .kinds.batch_sum import BatchSumForm
from .selectors import group_status, task_status

GroupTaskSerializer = inline_serializer("GroupTask", {
    "groupTaskId": serializers.CharField(), "grouptaskProcessed": serializers.BooleanField(),
    "grouptaskSucceeded": serializers.BooleanField(), "results": serializers.ListField(),
    "tasksCompleted": serializers.IntegerField(), "tasksTotal": serializers.IntegerField(),
})


#: The original service's body, {"tasks": [...]}: the batch_sum kind's own schema of its tasks.
GROUP_TASKS_SCHEMA = {"type": "object", "required": ["tasks"], "additionalProperties": False,
                      "properties": {"tasks": field_schema(BatchSumForm.base_fields["tasks"])}}


class GroupTaskCreateView(AppAPIView, APIView):
    """POST /grouptasks {"tasks": [{"paramA": 1, "paramB": 5}, …]} → {"groupTaskId", "taskIds"}."""

    parser_classes = [BoundedJSONParser]  # the original service's clients send JSON

    @described(request={"application/json": GROUP_TASKS_SCHEMA}, responses={200: inline_serializer("GroupTaskCreated", {
        "groupTaskId": serializers.CharField(), "taskIds": serializers.ListField(child=serializers.CharField())}),
        400: ErrorSerializer, 409: ErrorSerializer, 413: ErrorSerializer, **REFUSALS})
    def post(self, request):
        errors = errors_against(GROUP_TASKS_SCHEMA, request.data, subject=" for /grouptasks")
        if errors:
            return error_response(services.InvalidParams(errors))
        try:
            operation = services.operation_start(kind="batch_sum", params={"tasks": request.data["tasks"]}, owner=request.user,
                                                 actor=actor_of(request))
        except services.OperationError as exc:
            return error_response(exc)
        return Response({
            "groupTaskId": str(operation.pk),
            "taskIds": [str(member_task_id(operation.pk, 0, i)) for i in range(len(operation.params["tasks"]))],
        })


class GroupTaskDetailView(AppAPIView, APIView):
    @described(responses={200: GroupTaskSerializer, 404: ErrorSerializer, **REFUSALS_READ})
    def get(self, request, group_id):
        try:
            operation = selectors.operation_get(operation_id=int(group_id), user=request.user)
        except (ValueError, Operation.DoesNotExist):
            raise Http404 from None
        if operation.kind != "batch_sum":
            raise Http404
        return Response(group_status(operation))


class TaskDetailView(AppAPIView, APIView):
    @described(responses={200: inline_serializer("Task", {
        "taskId": serializers.CharField(), "taskState": serializers.CharField(),
        "taskSucceeded": serializers.BooleanField(), "result": serializers.JSONField(),
        "resultReady": serializers.BooleanField()}), 404: ErrorSerializer, **REFUSALS_READ})
    def get(self, request, task_id):
        try:
            task_id = uuid.UUID(str(task_id))
        except ValueError:
            raise Http404 from None
        mine = StepMember.objects.filter(operation__in=selectors.operation_list(user=request.user))
        if not mine.filter(task_id=task_id).exists():
            raise Http404  # someone else's, or none: the same answer, so ids cannot be probed
        return Response(task_status(task_id, mine))
