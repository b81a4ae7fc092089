"""Server-rendered pages: list, start, watch and control your operations. Thin: services do the work."""

import csv
import json

from django.contrib import messages
from django.contrib.auth.mixins import LoginRequiredMixin
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views import View
from django.views.generic import DetailView, ListView, TemplateView

from . import selectors, services
from .catalogue import InvalidParams, UnknownKind, all_kinds, get_kind
from .exceptions import http_status_for
from .models import Operation
from .states import Status, label

#: What the user is told after a verb, by the status it led to.
OUTCOME = {
    Status.PAUSE_REQUESTED: "pause requested — it pauses at its next pause point.",
    Status.RUNNING: "running.",
    Status.CANCEL_REQUESTED: "cancel requested — it stops at its next pause point, then its writes are undone.",
    Status.CANCELLED: "cancelled, and its writes undone.",
    Status.PAUSED: "paused.",
}


class OperationListView(LoginRequiredMixin, ListView):
    template_name = "operations/list.html"
    context_object_name = "operations"
    paginate_by = 25

    def get_queryset(self):
        return selectors.operation_list(user=self.request.user, mine=True)


class OperationCreateView(LoginRequiredMixin, TemplateView):
    """One tab per kind, each with its own form (the same form every face validates with)."""

    template_name = "operations/new.html"

    def get_context_data(self, form=None, kind=None, **kwargs):
        kinds = all_kinds()
        kind = kind or self._kind(self.request.GET.get("kind") or kinds[0].name)
        if form is None:
            form, template = kind.form(), self._template()
            if template is not None and template.kind == kind.name:  # Start again: its parameters
                form = kind.form(initial=kind.start_again_initial(template.params or {}))
                kwargs["again_from"] = template
        return super().get_context_data(kinds=kinds, kind=kind, form=form, **kwargs)

    def _template(self):
        """The operation named by ?from=, if this user may see it."""
        ident = self.request.GET.get("from", "")
        if not ident.isdigit():
            return None
        try:
            return selectors.operation_get(operation_id=int(ident), user=self.request.user)
        except Operation.DoesNotExist:
            return None

    def post(self, request, *args, **kwargs):
        try:
            kind = get_kind(request.POST.get("kind", ""))
        except UnknownKind as exc:  # a bad request, like any bad parameter: 400 with the reason
            messages.error(request, str(exc))
            return self.render_to_response(self.get_context_data(), status=http_status_for(exc))
        params = {name: value for name, value in request.POST.items()
                  if name in kind.form.base_fields and value != ""}
        try:
            operation = services.operation_start(
                kind=kind.name, params=params, owner=request.user,
                actor=services.Actor.coerce(request.user, via="web"), files=request.FILES or None,
            )
        except InvalidParams as exc:
            form = kind.form(data=request.POST, files=request.FILES)
            form.is_valid()
            for field, errors in exc.errors.items():  # what the form did not find itself, once
                target = field if field in form.fields else None
                shown = form.errors.get(field, []) if target else form.non_field_errors()
                for error in errors:
                    if error not in shown:
                        form.add_error(target, error)
            return self.render_to_response(self.get_context_data(form=form, kind=kind), status=http_status_for(exc))
        except services.OperationError as exc:
            messages.error(request, str(exc))
            return self.render_to_response(self.get_context_data(form=kind.form(data=request.POST), kind=kind),
                                           status=http_status_for(exc))
        messages.success(request, f"Started operation {operation.pk} ({kind.label}).")
        return redirect("operations:detail", pk=operation.pk)

    def _kind(self, name):
        try:
            return get_kind(name)
        except UnknownKind:
            raise Http404(f"unknown operation kind {name!r}") from None


class VisibleOperationMixin(LoginRequiredMixin):
    """An operation the user may see: their own (staff: any). Anyone else's is a 404, not a 403."""

    def get_operation(self):
        try:
            return selectors.operation_get(operation_id=self.kwargs["pk"], user=self.request.user)
        except Operation.DoesNotExist:
            raise Http404("No such operation.") from None


class OperationDetailView(VisibleOperationMixin, DetailView):
    template_name = "operations/detail.html"
    context_object_name = "operation"

    def get_object(self, queryset=None):
        return self.get_operation()

    def get_context_data(self, **kwargs):
        return super().get_context_data(**selectors.operation_page(self.object, self.request.user),
                                        **self.lineage(), **kwargs)

    def lineage(self):
        return selectors.operation_lineage_page(self.object, self.request.user)


class OperationProgressView(OperationDetailView):
    """The live part of the detail page, polled by htmx while the operation moves."""

    template_name = "operations/_live.html"

    def lineage(self):
        return {}  # the lineage card is not part of what is polled


class OperationResultView(VisibleOperationMixin, View):
    """GET /operations/<id>/result.json — the whole result; result.csv — its table, for kinds that lay
    their result out as one (csv_summary). A download, so a long result is never cut."""

    def get(self, request, *args, fmt, **kwargs):
        operation = self.get_operation()
        if operation.result is None:
            raise Http404(f"operation {operation.pk} has no result yet")
        name = f"operation-{operation.pk}-result.{fmt}"
        if fmt == "json":
            response = HttpResponse(json.dumps(operation.result, indent=2, default=str), content_type="application/json")
        elif fmt == "csv" and (table := selectors.result_table(operation)) is not None:
            response = HttpResponse(content_type="text/csv; charset=utf-8")
            writer = csv.writer(response)
            writer.writerow(table[0])
            writer.writerows(table[1])
        else:
            raise Http404(f"no {fmt} download for operation {operation.pk}")
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        return response


class OperationCancelConfirmView(OperationDetailView):
    """What a cancel will undo, before the user confirms it."""

    template_name = "operations/cancel_confirm.html"


class OperationTerminateConfirmView(OperationDetailView):
    """What a terminate stops and undoes, before the user confirms it."""

    template_name = "operations/terminate_confirm.html"


class OperationEditView(VisibleOperationMixin, View):
    """POST /operations/<id>/edit/ with the kind's editable parameters: back to the page, saying
    what changed or why not."""

    http_method_names = ["post"]

    def post(self, request, *args, **kwargs):
        operation = self.get_operation()
        if not selectors.can_control(request.user, operation, "edit"):
            raise PermissionDenied(f"You may not edit operation {operation.pk}.")
        form = selectors.edit_form(operation, request.user)
        edits = {name: request.POST.get(name, "") for name in (form.fields if form else ())}
        try:
            edited = services.operation_edit(operation=operation, params=edits,
                                             actor=services.Actor.coerce(request.user, via="web"))
        except services.OperationError as exc:
            messages.warning(request, str(exc))
        else:
            messages.success(request, f"Operation {operation.pk}: {edited.events.order_by('at', 'id').last().note}.")
        return redirect("operations:detail", pk=operation.pk)


class OperationForkView(VisibleOperationMixin, View):
    """POST /operations/<id>/fork/ with ``from_step``: the new operation's page, or back with why not."""

    http_method_names = ["post"]

    def post(self, request, *args, **kwargs):
        operation = self.get_operation()
        if not selectors.can_control(request.user, operation, "fork"):
            raise PermissionDenied(f"You may not fork operation {operation.pk}.")
        raw = request.POST.get("from_step", "")
        try:
            from_step = int(raw)
            fork = services.operation_fork(operation=operation, from_step=from_step,
                                           actor=services.Actor.coerce(request.user, via="web"))
        except ValueError:
            messages.warning(request, f"from_step: give the number of a step, not {raw!r}")
        except services.OperationError as exc:
            messages.warning(request, str(exc))
        else:
            messages.success(request, f"Operation {fork.pk} runs operation {operation.pk} again from step {from_step}.",
                             extra_tags=f"tap-status-{fork.status}")
            return redirect("operations:detail", pk=fork.pk)
        return redirect("operations:detail", pk=operation.pk)


class OperationControlView(VisibleOperationMixin, View):
    """POST /operations/<id>/<verb>/ — GET is a 405: a link or a crawler must never pause anything."""

    http_method_names = ["post"]
    verb = None

    def post(self, request, *args, **kwargs):
        operation = self.get_operation()
        if not selectors.can_control(request.user, operation, self.verb):
            raise PermissionDenied(f"You may not {self.verb} operation {operation.pk}.")
        actor = services.Actor.coerce(request.user, via="web")
        resume_at, at = request.POST.get("resume_at", "").strip(), request.POST.get("at", "").strip()
        try:
            if self.verb == "pause" and resume_at:  # "Pause until": beat resumes it then
                changed = services.operation_pause(operation=operation, actor=actor, resume_at=resume_at)
            elif self.verb == "resume" and at:  # "Resume at": it stays paused until then
                changed = services.operation_resume(operation=operation, actor=actor, at=at)
            else:
                changed = services.operation_apply(self.verb, operation=operation, actor=actor)
        except services.OperationError as exc:
            messages.warning(request, str(exc))
            return redirect("operations:detail", pk=operation.pk)
        # Tagged with the status it describes: the page drops it once the live part shows another.
        said = OUTCOME.get(changed.status, label(changed.status))
        if changed.resume_at and changed.status in (Status.PAUSED, Status.PAUSE_REQUESTED):
            said += f" Beat resumes it at {timezone.localtime(changed.resume_at):%Y-%m-%d %H:%M:%S}."
        messages.success(request, f"Operation {operation.pk}: {said}",
                         extra_tags=f"tap-status-{changed.status}")
        back = request.POST.get("next", "")
        if not url_has_allowed_host_and_scheme(back, {request.get_host()}, request.is_secure()):
            back = reverse("operations:detail", args=[operation.pk])
        return redirect(back)
