"""The JSON API (contract in DESIGN §5): operations and their verbs, and the app's OpenAPI schema.

A refused transition is a 409 with the reason; bad parameters a 400 with field errors. Views are
thin: the services decide, the serializers shape. The views carry their own permission, paging,
throttle and schema classes, so they behave the same in any host, whatever its REST_FRAMEWORK
settings; authentication follows the host's (see ``authentication_classes``).
"""

from __future__ import annotations

import re
from typing import Any

from django import forms
from django.apps import apps
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.utils.module_loading import import_string
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import extend_schema, extend_schema_field
from drf_spectacular.views import SpectacularAPIView
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.authentication import TokenAuthentication
from rest_framework.decorators import action
from rest_framework.exceptions import APIException, ParseError, PermissionDenied, ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.throttling import ScopedRateThrottle

from . import __version__, jsonlimits, paramschema, schedules, selectors, services
from .catalogue import all_kinds, get_kind
from .conf import conf
from .exceptions import UnknownKind, http_status_for
from .models import Operation, Schedule
from .serializers import (
    ErrorSerializer,
    IsoDateTimeField,
    OperationListSerializer,
    OperationSerializer,
)
from .states import Status

#: The throttle scope of every state change (starts and verbs).
CONTROL_SCOPE = "operation_control"


def actor_of(request: Any) -> services.Actor:
    return services.Actor.coerce(request.user, via="api")


def authentication_classes() -> list[type]:
    """TAP_API_AUTHENTICATION_CLASSES, else the host's DRF defaults with token auth in front
    when ``rest_framework.authtoken`` is installed."""
    if conf.API_AUTHENTICATION_CLASSES is not None:
        return [import_string(path) for path in conf.API_AUTHENTICATION_CLASSES]
    classes = list(api_settings.DEFAULT_AUTHENTICATION_CLASSES)
    if apps.is_installed("rest_framework.authtoken") and TokenAuthentication not in classes:
        classes.insert(0, TokenAuthentication)
    return classes


class ControlThrottle(ScopedRateThrottle):
    """The rate of the view's scope in REST_FRAMEWORK's DEFAULT_THROTTLE_RATES, else TAP_CONTROL_THROTTLE."""

    def get_rate(self) -> str | None:
        rates = api_settings.DEFAULT_THROTTLE_RATES or {}
        return rates.get(self.scope) or conf.CONTROL_THROTTLE


class OperationPage(PageNumberPagination):
    """``?page=N``; a page past the last (or 0) is a 404, as in DRF."""

    def get_page_size(self, request: Any) -> int:
        return conf.API_PAGE_SIZE

    def get_page_number(self, request: Any, paginator: Any) -> Any:
        """A page that is not a whole number (``?page=x``, ``?page=``, or ``page`` twice) is a 400
        naming it; DRF would read the last value and answer page 1 for an empty one. A whole
        number that is no page (0, -3, past the last) stays DRF's 404."""
        values = request.query_params.getlist(self.page_query_param)
        if len(values) > 1:
            raise ValidationError({self.page_query_param: ["give one page"]})
        number = values[0].removeprefix("-") if values else ""
        if values and not (number.isascii() and number.isdigit()) and values[0] not in self.last_page_strings:
            raise ValidationError({self.page_query_param: [f"{values[0]!r} is not a page number (1, 2, …)"]})
        return super().get_page_number(request, paginator)


def described(**kwargs: Any) -> Any:
    """drf-spectacular's ``extend_schema``, built on its AutoSchema whatever the host's
    DEFAULT_SCHEMA_CLASS (extend_schema would otherwise derive from that setting's class)."""

    def decorator(view_method: Any) -> Any:
        if not getattr(view_method, "schema", None) and not (getattr(view_method, "kwargs", None) or {}).get("schema"):
            view_method.schema = AutoSchema
        return extend_schema(**kwargs)(view_method)

    return decorator


class BoundedJSONParser(JSONParser):
    """DRF's JSON parser with the depth limit (operations.jsonlimits): a 400, not a RecursionError."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict | None = None) -> Any:
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError(f"JSON parse error - {jsonlimits.too_deep_message()}") from None
        try:
            return jsonlimits.check_depth(data)
        except jsonlimits.TooDeep as exc:
            raise ParseError(f"JSON parse error - {exc}") from None


class BodyTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "body_too_large"

    def __init__(self) -> None:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        super().__init__(f"The request body is over the limit of {limit:,} bytes (DATA_UPLOAD_MAX_MEMORY_SIZE); "
                         "send a big CSV as a file upload (multipart), which has no such limit.")


class AppAPIView:
    """Mixed into every API view of the app (and of its contrib apps)."""

    parser_classes = [BoundedJSONParser, MultiPartParser]  # what the schema documents

    permission_classes = [IsAuthenticated]
    schema = AutoSchema()
    throttle_scope = CONTROL_SCOPE

    def get_authenticators(self) -> list[Any]:
        return [cls() for cls in authentication_classes()]

    def get_throttles(self) -> list[Any]:
        # Reads are not throttled; every state change is.
        return [ControlThrottle()] if self.request.method == "POST" else []

    def handle_exception(self, exc: Exception) -> Any:
        """Every refusal in the one error shape (``ErrorSerializer``): a serializer's field errors
        become ``detail`` + ``errors``, like the services' InvalidParams; Django's RequestDataTooBig,
        an HTML 400 without a reason, becomes a JSON 413 naming the limit."""
        if isinstance(exc, RequestDataTooBig):
            exc = BodyTooLarge()
        if isinstance(exc, ValidationError) and not isinstance(exc.detail, str):
            return error_response(services.InvalidParams(field_errors(exc.detail)))
        return super().handle_exception(exc)  # type: ignore[misc]


def field_errors(detail: Any, where: str = "") -> dict[str, list[str]]:
    """DRF's nested error detail as {"path": [messages]} (``tasks[0].paramA``)."""
    if isinstance(detail, dict):
        found: dict[str, list[str]] = {}
        for key, value in detail.items():
            if key == api_settings.NON_FIELD_ERRORS_KEY:
                path = where
            elif isinstance(key, int) or str(key).isdigit():  # a list's item
                path = f"{where}[{key}]"
            else:
                path = f"{where}.{key}" if where else str(key)
            found.update(field_errors(value, path))
        return found
    if isinstance(detail, list) and detail and all(isinstance(item, str) for item in detail):
        return {where or "__all__": [str(item) for item in detail]}
    if isinstance(detail, list):
        found = {}
        for index, item in enumerate(detail):
            if item:
                found.update(field_errors(item, f"{where}[{index}]"))
        return found
    return {where or "__all__": [str(detail)]}


#: What every endpoint may answer besides its own: not logged in, not allowed, and for state
#: changes the throttle (DRF's {"detail": …} shape).
REFUSALS_READ = {401: ErrorSerializer, 403: ErrorSerializer}
REFUSALS = {**REFUSALS_READ, 429: ErrorSerializer}


def error_response(exc: services.OperationError, **extra: Any) -> Response:
    """A service's refusal as JSON: its message, field errors for bad parameters, the shared status."""
    body = {"detail": str(exc), **extra}
    if isinstance(exc, services.InvalidParams):
        body["errors"] = exc.errors
    return Response(body, status=http_status_for(exc))


class ClosedSerializer(serializers.Serializer):
    """A body whose unknown fields are refused, each named: a misspelt option that is silently
    ignored (``idempotency_keys``, ``resumeat``) does something else than what was asked. Its
    schema says so too (``additionalProperties: false``, in ``typed_starts``)."""

    def allowed_extras(self) -> set[str]:
        """Names a body may carry beside its fields: a multipart start's file fields."""
        return set(self.context.get("extra_fields", ()))

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict) or hasattr(data, "keys"):
            known = set(self.fields)
            unknown = sorted(str(name) for name in data.keys() if name not in known and name not in self.allowed_extras())
            if unknown:
                expected = ", ".join(sorted(known))
                raise ValidationError({name: [f"unknown field; expected one of: {expected}"] for name in unknown})
        return super().to_internal_value(data)


def closed_component_names() -> set[str]:
    """The schema components of the closed bodies, named as drf-spectacular names serializers."""
    names, todo = set(), [ClosedSerializer]
    while todo:
        for subclass in todo.pop().__subclasses__():
            names.add(subclass.__name__.removesuffix("Serializer"))
            todo.append(subclass)
    return names


class StartSerializer(ClosedSerializer):
    """The body of a start. Its schema is typed per kind (``typed_starts``); in JSON the params
    are checked against their kind's schema (operations.paramschema) before the kind's form."""

    kind = serializers.CharField()
    params = serializers.JSONField(required=False, default=dict)
    idempotency_key = serializers.CharField(
        required=False, max_length=services.MAX_IDEMPOTENCY_KEY,
        help_text="Or the Idempotency-Key header: the same key again (same owner) answers 200 with the "
                  "operation it started, a different start with it 409.")
    pause_window = serializers.CharField(required=False, max_length=11, help_text='"HH:MM-HH:MM": never runs then.')
    deadline = serializers.FloatField(required=False, min_value=0.001, max_value=services.MAX_DEADLINE,
                                      help_text="Seconds from the start by which it must end; default: the kind's.")

    def validate_kind(self, value: str) -> str:
        try:
            return get_kind(value).name
        except UnknownKind as exc:  # its message lists the known kinds
            raise serializers.ValidationError(str(exc)) from None

    def validate_params(self, value):
        if isinstance(value, str):  # a multipart request sends params as JSON text
            try:
                value = jsonlimits.loads(value)
            except jsonlimits.TooDeep as exc:
                raise serializers.ValidationError(str(exc)) from None
            except ValueError:
                raise serializers.ValidationError("params must be a JSON object") from None
        if not isinstance(value, dict):
            raise serializers.ValidationError("params must be a JSON object")
        return value


class PauseSerializer(ClosedSerializer):
    """The body of a pause (optional): when beat resumes it by itself."""

    resume_at = serializers.DateTimeField(required=False, help_text="ISO 8601, within a year.")


class ResumeSerializer(ClosedSerializer):
    """The body of a resume (optional): leave a paused operation paused and resume it then."""

    at = serializers.DateTimeField(required=False, help_text="ISO 8601, within a year; left out: now.")


#: The start's own fields besides kind and params, in the typed schema of every kind.
START_OPTIONS = {
    "idempotency_key": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$",
                        "description": "The same key again (same owner) answers 200 with the operation it started."},
    "pause_window": {"type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]-([01][0-9]|2[0-3]):[0-5][0-9]$",
                     "description": 'Never runs between these times of day, e.g. "08:00-18:00" (beat pauses and resumes it).'},
    "deadline": {"type": "number", "minimum": 0.001, "maximum": 366 * 24 * 3600,
                 "description": "Seconds from the start by which it must end; default: the kind's."},
}


class ForkSerializer(ClosedSerializer):
    """The body of a fork: the step (1-based, as the pages number them) the new operation starts at."""

    from_step = serializers.IntegerField(min_value=1, help_text="A step the operation reached "
                                         "(its page lists them); the new operation starts there.")


@extend_schema_field({"type": "string", "pattern": "^[^\\u0000]*$"})
class QueryText(serializers.CharField):
    """A text query parameter: Django refuses NUL characters in text, and the schema says so."""


@extend_schema_field({"type": "string", "pattern": "^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$"})
class NonBlankText(serializers.CharField):
    """A name (a query parameter, a signal's): not blank, no NUL characters, and the schema says so."""


class ApproveSerializer(ClosedSerializer):
    """The body of an approve (optional): what the next step gets as the carried value."""

    payload = serializers.JSONField(required=False, allow_null=True,
                                    help_text="Carried into the next step; left out: the value carried into the wait.")


class SignalSerializer(ApproveSerializer):
    """The body of a signal: the name the operation waits for, and what the next step gets."""

    name = NonBlankText(max_length=100, help_text="The signal's name (what `waiting_for` says).")


class StepEditSerializer(ClosedSerializer):
    """One remaining step's edit: its arguments or task, or leave it out."""

    step = serializers.IntegerField(min_value=1, help_text="The step (1-based) to change; one not run yet.")
    task = NonBlankText(required=False, help_text="Another registered operation step.")
    args = serializers.ListField(required=False, child=serializers.JSONField(allow_null=True))
    kwargs = serializers.DictField(required=False, child=serializers.JSONField(allow_null=True))
    skip = serializers.BooleanField(required=False, help_text="Leave the step out.")


class EditSerializer(ClosedSerializer):
    """The body of an edit of a paused operation (``operations.operation_edit``)."""

    params = serializers.DictField(required=False, child=serializers.JSONField(allow_null=True),
                                   help_text="New values of the kind's editable parameters.")
    steps = StepEditSerializer(many=True, required=False)


class CommaSeparated(serializers.ListField):
    """``?status=running,paused`` (or the parameter repeated): a list of choices."""

    def get_value(self, dictionary: Any) -> Any:
        values = dictionary.getlist(self.field_name) if hasattr(dictionary, "getlist") else []
        items = [item.strip() for value in values for item in value.split(",") if item.strip()]
        return items or serializers.empty


class ListQuery(serializers.Serializer):
    """The filters and order of GET /api/operations/; a bad value is a 400 naming the parameter."""

    status = CommaSeparated(child=serializers.ChoiceField(choices=Status.values), required=False,
                            help_text="One status or several, comma-separated.")
    kind = CommaSeparated(child=QueryText(), required=False, help_text="One kind or several.")
    owner = NonBlankText(required=False, help_text="A username. People other than staff see only "
                                  "their own operations, so another owner's name gives an empty list.")
    created_after = serializers.DateTimeField(required=False, help_text="ISO 8601; inclusive.")
    created_before = serializers.DateTimeField(required=False, help_text="ISO 8601; exclusive.")
    ordering = serializers.ChoiceField(choices=selectors.LIST_ORDERINGS, required=False, default="-created_at")

    def to_internal_value(self, data: Any) -> Any:
        """``?owner=`` is refused, not read as "no filter" (DRF's way with form input): the
        schema says a parameter that is given has a value. A list given empty is an empty list."""
        blank = {name: ["give a value, or leave the parameter out"] for name, field in self.fields.items()
                 if hasattr(data, "getlist") and name in data and not isinstance(field, CommaSeparated)
                 and not any(v.strip() for v in data.getlist(name))}
        if blank:
            raise serializers.ValidationError(blank)
        return super().to_internal_value(data)


class OperationViewSet(AppAPIView, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Operations you own (staff: all). POST starts one; POST …/<verb>/ pauses, resumes, cancels,
    retries, terminates; POST …/edit/ changes a paused one's remaining plan; POST …/fork/ runs one
    again from a step, as a new linked operation."""

    serializer_class = OperationSerializer
    queryset = Operation.objects.none()  # for the schema; requests use get_queryset()
    pagination_class = OperationPage
    lookup_value_regex = "[^/]+"  # a bad id is the API's JSON 404, not the site's HTML one

    def get_queryset(self):
        if self.action != "list":
            return selectors.operation_list(user=self.request.user)
        query = ListQuery(data=self.request.query_params, context={"request": self.request})
        query.is_valid(raise_exception=True)
        return selectors.operation_list(user=self.request.user, **query.validated_data)

    @described(parameters=[ListQuery], responses={200: OperationListSerializer(many=True), **REFUSALS_READ,
                                                  400: ErrorSerializer, 404: ErrorSerializer})
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    def get_serializer_class(self):
        return OperationListSerializer if self.action == "list" else OperationSerializer

    @described(request=StartSerializer, responses={201: OperationSerializer, 200: OperationSerializer, 400: ErrorSerializer,
                                                       409: ErrorSerializer, 413: ErrorSerializer, **REFUSALS})
    def create(self, request):
        start = StartSerializer(data=request.data, context={"extra_fields": request.FILES.keys()})
        start.is_valid(raise_exception=True)
        if not request.FILES:  # a JSON body: the types its schema declares
            schema = paramschema.params_schema(get_kind(start.validated_data["kind"]).form)
            errors = paramschema.errors_against(schema, start.validated_data["params"],
                                                subject=f" for {start.validated_data['kind']}")
            if errors:
                return error_response(services.InvalidParams(errors))
        if not request.FILES:  # JSON: the start's own fields have the types the schema gives them
            wrong = {name: [f"must be {what}"] for name, what, ok in (
                ("idempotency_key", "a string", lambda v: isinstance(v, str)),
                ("pause_window", "a string", lambda v: isinstance(v, str)),
                ("deadline", "a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)))
                if name in request.data and not ok(request.data[name])}
            if wrong:
                return error_response(services.InvalidParams(wrong))
        header = request.headers.get("Idempotency-Key")
        key = start.validated_data.get("idempotency_key")
        if header is not None and key is not None and header != key:
            return error_response(services.InvalidParams({"idempotency_key": [
                "the Idempotency-Key header and the body's idempotency_key differ; give one"]}))
        try:
            operation, created = services.operation_start_once(
                kind=start.validated_data["kind"], params=start.validated_data["params"],
                owner=request.user, actor=actor_of(request), files=request.FILES or None,
                idempotency_key=key if key is not None else header, deadline=start.validated_data.get("deadline"),
                pause_window=start.validated_data.get("pause_window"),
            )
        except services.IdempotencyConflict as exc:
            return error_response(exc, operation=exc.operation_id)
        except services.OperationError as exc:
            return error_response(exc)
        return Response(OperationSerializer(operation).data,
                        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    def _control(self, request, verb):
        operation = self.get_object()
        if not selectors.can_control(request.user, operation, verb):
            raise PermissionDenied(f"You may not {verb} operation {operation.pk}.")
        try:
            changed = services.operation_apply(verb, operation=operation, actor=actor_of(request))
        except services.OperationError as exc:
            return error_response(exc, status=operation.status)
        return Response(OperationSerializer(changed).data, status=status.HTTP_202_ACCEPTED)

    _control_schema = described(request=None, responses={202: OperationSerializer, 409: ErrorSerializer,
                                                         404: ErrorSerializer, **REFUSALS})

    @described(responses={200: OperationSerializer, 404: ErrorSerializer, **REFUSALS_READ})
    def retrieve(self, request, *args, **kwargs):
        return super().retrieve(request, *args, **kwargs)

    @described(request=PauseSerializer, responses={202: OperationSerializer, 400: ErrorSerializer,
                                                   409: ErrorSerializer, 404: ErrorSerializer, **REFUSALS})
    @action(detail=True, methods=["post"])
    def pause(self, request, pk=None):
        """Pause at the next pause point; with ``resume_at``, beat resumes it by itself then."""
        return self._act(request, "pause", PauseSerializer, status.HTTP_202_ACCEPTED,
                         lambda operation, data: services.operation_pause(
                             operation=operation, actor=actor_of(request), resume_at=data.get("resume_at")))

    @described(request=ResumeSerializer, responses={202: OperationSerializer, 400: ErrorSerializer,
                                                    409: ErrorSerializer, 404: ErrorSerializer, **REFUSALS})
    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        """Resume now; with ``at``, a paused operation stays paused and beat resumes it then."""
        return self._act(request, "resume", ResumeSerializer, status.HTTP_202_ACCEPTED,
                         lambda operation, data: services.operation_resume(
                             operation=operation, actor=actor_of(request), at=data.get("at")))

    @_control_schema
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        return self._control(request, "cancel")

    @_control_schema
    @action(detail=True, methods=["post"])
    def retry(self, request, pk=None):
        return self._control(request, "retry")

    @described(request=ApproveSerializer, responses={202: OperationSerializer, 400: ErrorSerializer,
                                                     409: ErrorSerializer, 404: ErrorSerializer, **REFUSALS})
    @action(detail=True, methods=["post"], parser_classes=[BoundedJSONParser])
    def approve(self, request, pk=None):
        """Wake a waiting operation; ``payload`` (optional) is carried into the next step."""
        return self._act(request, "approve", ApproveSerializer, status.HTTP_202_ACCEPTED,
                         lambda operation, data: services.operation_approve(
                             operation=operation, actor=actor_of(request), payload=data.get("payload")))

    @described(request=SignalSerializer, responses={202: OperationSerializer, 400: ErrorSerializer,
                                                    409: ErrorSerializer, 404: ErrorSerializer, **REFUSALS})
    @action(detail=True, methods=["post"], parser_classes=[BoundedJSONParser])
    def signal(self, request, pk=None):
        """Send the signal ``name`` to an operation waiting for it, with an optional ``payload``."""
        return self._act(request, "approve", SignalSerializer, status.HTTP_202_ACCEPTED,
                         lambda operation, data: services.operation_signal(
                             operation=operation, name=data["name"], actor=actor_of(request),
                             payload=data.get("payload")))

    def _act(self, request, permission, body_class, answer_status, call):
        """A verb with a body: the permission (a model permission for staff), the body's fields,
        then the service; its refusal in the one error shape."""
        operation = self.get_object()
        if not selectors.can_control(request.user, operation, permission):
            raise PermissionDenied(f"You may not {permission} operation {operation.pk}.")
        body = body_class(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            changed = call(operation, body.validated_data)
        except services.TransitionRefused as exc:
            return error_response(exc, status=exc.status or operation.status)
        except services.OperationError as exc:
            return error_response(exc)
        return Response(OperationSerializer(changed).data, status=answer_status)

    @_control_schema
    @action(detail=True, methods=["post"])
    def reject(self, request, pk=None):
        """End a waiting operation: cancelled, with its compensation."""
        return self._control(request, "reject")

    @_control_schema
    @action(detail=True, methods=["post"])
    def terminate(self, request, pk=None):
        """Cancel now, stopping the worker process of a step that never reaches a pause point."""
        return self._control(request, "terminate")

    @described(request=EditSerializer, responses={200: OperationSerializer, 400: ErrorSerializer,
                                                   404: ErrorSerializer, 409: ErrorSerializer, **REFUSALS})
    @action(detail=True, methods=["post"], parser_classes=[BoundedJSONParser])
    def edit(self, request, pk=None):
        """Change the remaining plan of a paused operation; a resume runs the edited plan."""
        return self._act(request, "edit", EditSerializer, status.HTTP_200_OK,
                         lambda operation, data: services.operation_edit(
                             operation=operation, actor=actor_of(request), params=data.get("params"),
                             steps=[dict(step) for step in data.get("steps", [])]))

    @described(request=ForkSerializer, responses={201: OperationSerializer, 400: ErrorSerializer,
                                                   404: ErrorSerializer, 409: ErrorSerializer, **REFUSALS})
    @action(detail=True, methods=["post"])
    def fork(self, request, pk=None):
        """A new operation, linked to this one, that runs it again from ``from_step``."""
        return self._act(request, "fork", ForkSerializer, status.HTTP_201_CREATED,
                         lambda operation, data: services.operation_fork(
                             operation=operation, from_step=data["from_step"], actor=actor_of(request)))




def only_this_app(endpoints: list[tuple]) -> list[tuple]:
    """drf-spectacular preprocessing hook: the schema describes the app's API, not the host's."""
    return [endpoint for endpoint in endpoints
            if getattr(endpoint[3], "cls", None) is not None and issubclass(endpoint[3].cls, AppAPIView)]


def _component(prefix: str, kind_name: str) -> str:
    return prefix + "".join(part.title() for part in re.split(r"[^A-Za-z0-9]+", kind_name))


def typed_starts(result: dict, generator: Any, request: Any, public: bool) -> dict:
    """drf-spectacular postprocessing hook: a start's body typed per kind (a oneOf on ``kind``),
    and every closed body (``ClosedSerializer``) without room for other fields.

    In JSON, ``params`` has its kind's schema (operations.paramschema); with an upload (multipart),
    the kinds that take a file, the file, and ``params`` (JSON text) without what the file replaces.
    """
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    json_variants, upload_variants = {}, {}
    for kind in all_kinds():
        params = paramschema.params_schema(kind.form)
        body = {"type": "object", "properties": {"kind": {"type": "string", "enum": [kind.name]}, "params": params,
                                                 **START_OPTIONS},
                "required": ["kind", "params"] if params.get("required") else ["kind"], "additionalProperties": False}
        if kind.label:
            body["description"] = str(kind.label)
        json_variants[kind.name] = _component("Start", kind.name)
        schemas[json_variants[kind.name]] = body
        form = kind.form()
        uploads = [name for name, field in form.fields.items() if isinstance(field, forms.FileField)]
        if uploads:
            replaced = set(getattr(kind.form, "json_required", ()))
            upload_params = {**params, "properties": {name: value for name, value in params["properties"].items()
                                                      if name not in replaced}}
            upload_params.pop("required", None)
            upload_variants[kind.name] = _component("Upload", kind.name)
            schemas[upload_variants[kind.name]] = {
                "type": "object",
                "properties": {"kind": {"type": "string", "enum": [kind.name]},
                               **{name: {"type": "string", "format": "binary", "description": str(form.fields[name].help_text)}
                                  for name in uploads},
                               "params": upload_params, **START_OPTIONS},
                "required": ["kind", *uploads],
                "additionalProperties": False,
            }

    def one_of(variants: dict[str, str]) -> dict:
        refs = {name: f"#/components/schemas/{component}" for name, component in variants.items()}
        return {"oneOf": [{"$ref": ref} for ref in refs.values()],
                "discriminator": {"propertyName": "kind", "mapping": refs}}

    schemas["Start"] = one_of(json_variants)
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/Start"}}}
    if upload_variants:
        schemas["StartUpload"] = one_of(upload_variants)
        content["multipart/form-data"] = {"schema": {"$ref": "#/components/schemas/StartUpload"},
                                          "encoding": {"params": {"contentType": "application/json"}}}
    for name in closed_component_names() & set(schemas):
        if "properties" in schemas[name]:  # not Start, the oneOf of the typed starts (closed above)
            schemas[name]["additionalProperties"] = False
    for methods in result.get("paths", {}).values():
        for operation in methods.values():
            if operation.get("operationId") == "api_operations_create":
                operation["requestBody"] = {"content": content, "required": True}
            _name_inline_body(operation, schemas)
    return result


def _name_inline_body(operation: dict, schemas: dict) -> None:
    """A body given as a raw schema (extend_schema's dict) becomes a named component, required
    when it has required fields: named, clients and docs can refer to it."""
    for media in operation.get("requestBody", {}).get("content", {}).values():
        schema = media.get("schema", {})
        if "$ref" in schema or schema.get("type") != "object":
            continue
        name = _component("", operation["operationId"]) + "Body"
        schemas[name] = schema
        media["schema"] = {"$ref": f"#/components/schemas/{name}"}
        if schema.get("required"):
            operation["requestBody"]["required"] = True


class OperationsSchemaView(SpectacularAPIView):
    """GET /api/schema/: the OpenAPI schema of the app's endpoints, whatever the host's settings."""

    custom_settings = {
        "TITLE": "Operations API",
        "DESCRIPTION": "Start, watch, pause, resume, cancel and retry long-running operations.",
        "VERSION": __version__,
        "PREPROCESSING_HOOKS": ["operations.api.only_this_app"],
        "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "operations.api.typed_starts"],
    }


class ScheduleSerializer(serializers.ModelSerializer):
    """A schedule: what it starts, when, and what its firings did."""

    owner = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)
    timing = serializers.SerializerMethodField()
    paused = serializers.SerializerMethodField()
    operations = serializers.SerializerMethodField()
    created_at = IsoDateTimeField(read_only=True)
    last_fired_at = IsoDateTimeField(read_only=True, allow_null=True)

    class Meta:
        model = Schedule
        fields = ["id", "name", "kind", "params", "owner", "timing", "paused", "fired", "refused", "last_fired_at",
                  "last_outcome", "created_at", "operations"]
        read_only_fields = fields

    def get_timing(self, schedule) -> str:
        return schedules.describe_timing(schedule)

    def get_paused(self, schedule) -> bool:
        return schedule.paused

    def get_operations(self, schedule) -> list[int]:
        """The operations it started, newest first (at most 50)."""
        return list(schedule.operations.order_by("-created_at").values_list("pk", flat=True)[:50])


class ScheduleViewSet(AppAPIView, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Schedules you own (staff: all): POST …/pause/ and …/resume/ stop and restart its firings;
    DELETE removes it. They are created in the admin, with ``operations schedules add`` or
    ``schedules.schedule_create``: a crontab's validity is not something a schema can say, and
    the API answers a schema-valid request with success."""

    serializer_class = ScheduleSerializer
    queryset = Schedule.objects.none()
    lookup_value_regex = "[^/]+"  # a bad id is the API's JSON 404, not the site's HTML one
    parser_classes = [BoundedJSONParser]

    def get_queryset(self):
        return selectors.schedule_list(user=self.request.user)

    @described(responses={200: ScheduleSerializer(many=True), **REFUSALS_READ})
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @described(responses={200: ScheduleSerializer, 404: ErrorSerializer, **REFUSALS_READ})
    def retrieve(self, request, *args, **kwargs):
        return super().retrieve(request, *args, **kwargs)

    @described(responses={204: None, 404: ErrorSerializer, **REFUSALS})
    def destroy(self, request, pk=None):
        schedule = self._mine(request, "delete")
        schedules.schedule_delete(schedule=schedule, actor=actor_of(request))
        return Response(status=status.HTTP_204_NO_CONTENT)

    _verb_schema = described(request=None, responses={202: ScheduleSerializer, 404: ErrorSerializer,
                                                      409: ErrorSerializer, **REFUSALS})

    @_verb_schema
    @action(detail=True, methods=["post"])
    def pause(self, request, pk=None):
        return self._verb(request, schedules.schedule_pause)

    @_verb_schema
    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        return self._verb(request, schedules.schedule_resume)

    def _mine(self, request, permission):
        schedule = self.get_object()
        if not selectors.can_manage_schedule(request.user, schedule, permission):
            raise PermissionDenied(f"You may not {permission} schedule {schedule.pk}.")
        return schedule

    def _verb(self, request, service):
        schedule = self._mine(request, "pause")
        try:
            changed = service(schedule=schedule, actor=actor_of(request))
        except services.OperationError as exc:
            return error_response(exc)
        return Response(ScheduleSerializer(changed).data, status=status.HTTP_202_ACCEPTED)
