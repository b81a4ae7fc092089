"""The original batch service's endpoints, kept for its clients: POST /grouptasks, GET
/grouptasks/<id> and GET /tasks/<id> (contract in DESIGN §5), on top of the batch_sum kind."""

import uuid

from django.http import Http404
from drf_spectacular.utils import inline_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from operations import selectors, services
from operations.api import AppAPIView, actor_of, described
from operations.models import Operation, StepMember
from operations.workflow import member_task_id

from .selectors import group_status, task_status

GroupTaskSerializer = inline_serializer("GroupTask", {
    "groupTaskId": serializers.CharField(), "grouptaskProcessed": serializers.BooleanField(),
    "grouptaskSucceeded": serializers.BooleanField(), "results": serializers.ListField(),
    "tasksCompleted": serializers.IntegerField(), "tasksTotal": serializers.IntegerField(),
})


class BatchTaskSerializer(serializers.Serializer):
    paramA = serializers.FloatField()
    paramB = serializers.FloatField()


class GroupTasksSerializer(serializers.Serializer):
    tasks = BatchTaskSerializer(many=True)


class GroupTaskCreateView(AppAPIView, APIView):
    """POST /grouptasks {"tasks": [{"paramA": 1, "paramB": 5}, …]} → {"groupTaskId", "taskIds"}."""

    @described(request=GroupTasksSerializer, responses={200: inline_serializer("GroupTaskCreated", {
        "groupTaskId": serializers.CharField(), "taskIds": serializers.ListField(child=serializers.CharField())})})
    def post(self, request):
        tasks = request.data.get("tasks") if isinstance(request.data, dict) else None
        try:
            operation = services.operation_start(kind="batch_sum", params={"tasks": tasks}, owner=request.user,
                                                 actor=actor_of(request))
        except services.InvalidParams as exc:
            return Response({"detail": str(exc), "errors": exc.errors}, status=status.HTTP_400_BAD_REQUEST)
        except services.OperationError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return Response({
            "groupTaskId": str(operation.pk),
            "taskIds": [str(member_task_id(operation.pk, 0, i)) for i in range(len(operation.params["tasks"]))],
        })


class GroupTaskDetailView(AppAPIView, APIView):
    @described(responses={200: GroupTaskSerializer})
    def get(self, request, group_id):
        try:
            operation = selectors.operation_get(operation_id=group_id, user=request.user)
        except Operation.DoesNotExist:
            raise Http404 from None
        if operation.kind != "batch_sum":
            raise Http404
        return Response(group_status(operation))


class TaskDetailView(AppAPIView, APIView):
    @described(responses={200: inline_serializer("Task", {
        "taskId": serializers.CharField(), "taskState": serializers.CharField(),
        "taskSucceeded": serializers.BooleanField(), "result": serializers.JSONField(),
        "resultReady": serializers.BooleanField()})})
    def get(self, request, task_id):
        try:
            task_id = uuid.UUID(str(task_id))
        except ValueError:
            raise Http404 from None
        mine = StepMember.objects.filter(operation__in=selectors.operation_list(user=request.user))
        if not mine.filter(task_id=task_id).exists():
            raise Http404  # someone else's, or none: the same answer, so ids cannot be probed
        return Response(task_status(task_id, mine))
