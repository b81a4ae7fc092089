"""The JSON API (contract in DESIGN §5): operations, their verbs, and the batch service's endpoints.

Token or session auth; a refused transition is a 409 with the reason; bad parameters a 400 with
field errors. Views are thin: the services decide, the serializers shape.
"""

import json
import uuid

from django.http import Http404
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from . import selectors, services
from .models import Operation, StepMember
from .serializers import OperationListSerializer, OperationSerializer
from .workflow import member_task_id


def _actor(request):
    return services.Actor.coerce(request.user, via="api")


class StartSerializer(serializers.Serializer):
    kind = serializers.CharField()
    params = serializers.JSONField(required=False, default=dict)

    def validate_params(self, value):
        if isinstance(value, str):  # a multipart request sends params as JSON text
            try:
                value = json.loads(value)
            except ValueError:
                raise serializers.ValidationError("params must be a JSON object") from None
        if not isinstance(value, dict):
            raise serializers.ValidationError("params must be a JSON object")
        return value


class OperationViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Operations you own (staff: all). POST starts one; POST …/<verb>/ pauses, resumes, cancels, retries."""

    serializer_class = OperationSerializer
    queryset = Operation.objects.none()  # for the schema; requests use get_queryset()
    throttle_scope = "operation_control"

    def get_queryset(self):
        return selectors.operation_list(user=self.request.user)

    def get_serializer_class(self):
        return OperationListSerializer if self.action == "list" else OperationSerializer

    def get_throttles(self):
        # Reads are not throttled; every state change is.
        return [ScopedRateThrottle()] if self.request.method == "POST" else []

    @extend_schema(request=StartSerializer, responses={201: OperationSerializer, 400: OpenApiResponse(),
                                                       409: OpenApiResponse()})
    def create(self, request):
        start = StartSerializer(data=request.data)
        start.is_valid(raise_exception=True)
        try:
            operation = services.operation_start(
                kind=start.validated_data["kind"], params=start.validated_data["params"],
                owner=request.user, actor=_actor(request), files=request.FILES or None,
            )
        except services.InvalidParams as exc:
            return Response({"detail": str(exc), "errors": exc.errors}, status=status.HTTP_400_BAD_REQUEST)
        except services.OperationError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return Response(OperationSerializer(operation).data, status=status.HTTP_201_CREATED)

    def _control(self, request, verb):
        operation = self.get_object()
        if not selectors.can_control(request.user, operation, verb):
            raise PermissionDenied(f"You may not {verb} operation {operation.pk}.")
        try:
            changed = getattr(services, f"operation_{verb}")(operation=operation, actor=_actor(request))
        except services.OperationError as exc:
            return Response({"detail": str(exc), "status": operation.status}, status=status.HTTP_409_CONFLICT)
        return Response(OperationSerializer(changed).data, status=status.HTTP_202_ACCEPTED)

    _control_schema = extend_schema(request=None, responses={202: OperationSerializer, 409: OpenApiResponse()})

    @_control_schema
    @action(detail=True, methods=["post"])
    def pause(self, request, pk=None):
        return self._control(request, "pause")

    @_control_schema
    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        return self._control(request, "resume")

    @_control_schema
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        return self._control(request, "cancel")

    @_control_schema
    @action(detail=True, methods=["post"])
    def retry(self, request, pk=None):
        return self._control(request, "retry")


# --- the original batch service's endpoints ----------------------------------------------------

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


class GroupTaskCreateView(APIView):
    """POST /grouptasks {"tasks": [{"paramA": 1, "paramB": 5}, …]} → {"groupTaskId", "taskIds"}."""

    throttle_scope = "operation_control"
    throttle_classes = [ScopedRateThrottle]

    @extend_schema(request=GroupTasksSerializer, responses={200: inline_serializer("GroupTaskCreated", {
        "groupTaskId": serializers.CharField(), "taskIds": serializers.ListField(child=serializers.CharField())})})
    def post(self, request):
        tasks = request.data.get("tasks") if isinstance(request.data, dict) else None
        try:
            operation = services.operation_start(kind="batch_sum", params={"tasks": tasks}, owner=request.user,
                                                 actor=_actor(request))
        except services.InvalidParams as exc:
            return Response({"detail": str(exc), "errors": exc.errors}, status=status.HTTP_400_BAD_REQUEST)
        except services.OperationError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return Response({
            "groupTaskId": str(operation.pk),
            "taskIds": [str(member_task_id(operation.pk, 0, i)) for i in range(len(operation.params["tasks"]))],
        })


class GroupTaskDetailView(APIView):
    @extend_schema(responses={200: GroupTaskSerializer})
    def get(self, request, group_id):
        try:
            operation = selectors.operation_get(operation_id=group_id, user=request.user)
        except Operation.DoesNotExist:
            raise Http404 from None
        if operation.kind != "batch_sum":
            raise Http404
        return Response(selectors.group_status(operation))


class TaskDetailView(APIView):
    @extend_schema(responses={200: inline_serializer("Task", {
        "taskId": serializers.CharField(), "taskState": serializers.CharField(),
        "taskSucceeded": serializers.BooleanField(), "result": serializers.JSONField(),
        "resultReady": serializers.BooleanField()})})
    def get(self, request, task_id):
        try:
            task_id = uuid.UUID(str(task_id))
        except ValueError:
            raise Http404 from None
        mine = StepMember.objects.filter(operation__in=selectors.operation_list(user=request.user))
        if not mine.filter(task_id=task_id).exists() and StepMember.objects.filter(task_id=task_id).exists():
            raise Http404  # someone else's task
        return Response(selectors.task_status(task_id, mine))
