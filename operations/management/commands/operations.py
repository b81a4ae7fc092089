"""``manage.py operations VERB …`` — the command-line face (contract in DESIGN §5).

Thin: parse, call a service or selector, print. Errors go to stderr with a non-zero exit code.
"""

import json
import sys
import time
from datetime import timedelta
from functools import partial
from pathlib import Path

from django import forms
from django.contrib.auth import get_user_model
from django.core.files import File
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from rest_framework.utils.encoders import JSONEncoder

from operations import selectors, services
from operations.catalogue import all_kinds
from operations.cli import VERBS
from operations.models import Operation
from operations.serializers import OperationListSerializer, OperationSerializer
from operations.states import ACTIVE, Status, label


class Command(BaseCommand):
    help = "Start, list, show, pause, resume, cancel, retry and fork operations."

    def add_arguments(self, parser):
        verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

        kinds = verbs.add_parser("kinds", help="list the kinds of operation and their parameters")
        kinds.add_argument("--json", action="store_true")

        start = verbs.add_parser("start", help="start an operation; prints its id")
        start.add_argument("kind")
        start.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
        start.add_argument("--file", help="a file for kinds that read one (csv_import, csv_summary)")
        start.add_argument("--owner", metavar="USERNAME")
        start.add_argument("--idempotency-key", metavar="KEY",
                           help="a start made again with the same key (and owner) prints the operation it "
                                "started then instead of starting another")
        start.add_argument("--deadline", type=float, metavar="SECONDS",
                           help="end it (as its kind says: failed or cancelled) if it has not ended this long "
                                "after its start; default: the kind's")
        start.add_argument("--pause-window", metavar="HH:MM-HH:MM",
                           help='never run between these times of day, e.g. "08:00-18:00" (beat pauses and resumes it)')
        start.add_argument("--json", action="store_true")

        listing = verbs.add_parser("list", help="list operations, newest first")
        listing.add_argument("--status", choices=Status.values)
        listing.add_argument("--kind")
        listing.add_argument("--json", action="store_true")

        show = verbs.add_parser("show", help="show one operation")
        show.add_argument("id", type=int)
        show.add_argument("--json", action="store_true")
        show.add_argument("--watch", action="store_true",
                          help="draw a progress bar (rate, time left) until it stops moving; the exit code "
                               "says how: 0 completed, 1 failed, 3 cancelled, 4 paused or interrupted")

        for verb in services.USER_VERBS:
            sub = verbs.add_parser(verb, help=f"{verb} an operation")
            sub.add_argument("id", type=int)
            if verb == "approve":
                sub.add_argument("--payload", metavar="JSON", help="carried into the next step (JSON)")
            if verb == "pause":
                sub.add_argument("--resume-at", metavar="TIME", help="beat resumes it then (ISO 8601)")
                sub.add_argument("--resume-in", type=float, metavar="SECONDS", help="beat resumes it this much later")
            if verb == "resume":
                sub.add_argument("--at", metavar="TIME", help="leave it paused; beat resumes it then (ISO 8601)")
                sub.add_argument("--in", dest="in_seconds", type=float, metavar="SECONDS",
                                 help="leave it paused; beat resumes it this much later")
            if verb in self.SETTLED:
                sub.add_argument("--wait", action="store_true", help=f"wait until the worker obeys the {verb}")
                sub.add_argument("--timeout", type=float, default=120.0)

        fork = verbs.add_parser("fork", help="run an operation again from a step, as a new linked operation; "
                                             "prints the new one's id")
        fork.add_argument("id", type=int)
        fork.add_argument("--from-step", type=int, required=True, metavar="N",
                          help="the step (1-based) to start at; `show` lists those it may start from")
        fork.add_argument("--json", action="store_true")

        signal = verbs.add_parser("signal", help="send a signal to an operation waiting for it")
        signal.add_argument("id", type=int)
        signal.add_argument("name")
        signal.add_argument("--payload", metavar="JSON", help="carried into the next step (JSON)")

        edit = verbs.add_parser("edit", help="change a paused operation's remaining plan; a resume runs it")
        edit.add_argument("id", type=int)
        edit.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                          help="a new value of one of the kind's editable parameters")
        edit.add_argument("--skip-step", action="append", default=[], type=int, metavar="N",
                          help="leave out remaining step N")
        edit.add_argument("--step", action="append", default=[], metavar="JSON",
                          help='one step\'s edit, e.g. \'{"step": 5, "kwargs": {"y": 3}}\'')

        purge = verbs.add_parser("purge", help="delete finished operations older than an age, with their "
                                               "events and stored rows (whatever TAP_RETENTION says)")
        purge.add_argument("--older-than", type=float, required=True, metavar="DAYS",
                           help="ended more than this many days ago (fractions allowed: 0.5 is 12 hours)")
        purge.add_argument("--status", action="append", choices=["completed", "cancelled", "failed"],
                           help="only these (default: all three finished statuses)")
        purge.add_argument("--kind", action="append", help="only these kinds")
        purge.add_argument("--dry-run", action="store_true", help="count what it would delete; delete nothing")

        schedules = verbs.add_parser("schedules", help="operations started on a schedule (beat)")
        what = schedules.add_subparsers(dest="schedule_verb", required=True, metavar="VERB")
        listing_schedules = what.add_parser("list", help="the schedules, their timing and what they did last")
        listing_schedules.add_argument("--json", action="store_true")
        add = what.add_parser("add", help="a schedule that starts KIND at each firing")
        add.add_argument("name")
        add.add_argument("kind")
        timing = add.add_mutually_exclusive_group(required=True)
        timing.add_argument("--crontab", metavar='"M H DOM MON DOW"', help='e.g. "*/5 * * * *" (in TIME_ZONE)')
        timing.add_argument("--every", type=float, metavar="SECONDS")
        add.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
        add.add_argument("--owner", metavar="USERNAME", help="owns what it starts (their quota applies)")
        for schedule_verb in ("show", "pause", "resume", "delete"):
            one = what.add_parser(schedule_verb, help=f"{schedule_verb} one schedule")
            one.add_argument("name", help="its name (or id)")

        count = verbs.add_parser("count", help="how many data rows the operation has stored right now")
        count.add_argument("id", type=int)

        for extra in VERBS.values():  # verbs other apps add (the demo's make-csv, say)
            extra.add_arguments(verbs.add_parser(extra.name, help=extra.help))

    def handle(self, *args, verb, **options):
        if verb in VERBS:
            handler = partial(VERBS[verb].handle, self)
        elif verb in services.USER_VERBS:
            handler = partial(self.do_user_verb, verb)
        else:
            handler = getattr(self, "do_" + verb.replace("-", "_"))
        try:
            handler(**options)
        except (services.OperationError, Operation.DoesNotExist, ValueError) as exc:
            if isinstance(exc, Operation.DoesNotExist):
                exc = f"operation {options.get('id')} does not exist"
            raise CommandError(str(exc)) from None

    # --- verbs --------------------------------------------------------------------------------

    def do_kinds(self, json, **options):
        described = [_kind_description(kind) for kind in all_kinds()]
        if json:
            self._json(described)
            return
        for kind in described:
            self.stdout.write(self.style.SUCCESS(kind["name"]) + f"  {kind['label']}")
            if kind["description"]:
                self.stdout.write(f"    {kind['description']}")
            for param in kind["params"]:
                default = f" (default {param['default']})" if param["default"] not in (None, "") else ""
                required = " (required)" if param["required"] else ""
                option = "--file PATH" if param["type"] == "file" else f"--param {param['name']}=…"
                self.stdout.write(f"    {option}{required}{default}  {param['help']}")

    def do_start(self, kind, param, file, owner, json, idempotency_key=None, deadline=None, pause_window=None,
                 **options):
        params = dict(_name_value(item) for item in param)
        files = None
        if file:
            path = Path(file)
            if not path.is_file():
                raise CommandError(f"--file {file}: no such file")
            files = {"file": File(path.open("rb"), name=path.name)}
        owner_user = None
        if owner:
            owner_user = get_user_model().objects.filter(username=owner).first()
            if owner_user is None:
                raise CommandError(f"--owner {owner}: no such user")
        try:
            operation, created = services.operation_start_once(
                kind=kind, params=params, owner=owner_user, actor=services.CLI, files=files,
                idempotency_key=idempotency_key, deadline=deadline, pause_window=pause_window)
        finally:
            if files:
                files["file"].close()
        if not created:
            self.stderr.write(f"operation {operation.pk} was started before with idempotency key {idempotency_key!r}")
        if json:
            self._json(OperationSerializer(operation).data)
        else:
            self.stdout.write(str(operation.pk))

    def do_list(self, status, kind, json, **options):
        operations = selectors.operation_list(status=status, kind=kind)
        if json:
            self._json(OperationListSerializer(operations, many=True).data)
            return
        self.stdout.write(f"{'ID':>6}  {'KIND':<14} {'STATUS':<17} {'PROGRESS':>14}  {'OWNER':<12} CREATED")
        for op in operations.iterator():
            total = "?" if op.progress_total is None else op.progress_total
            self.stdout.write(
                f"{op.pk:>6}  {op.kind:<14} {label(op.status):<17} {f'{op.progress_done}/{total}':>14}  "
                f"{(op.owner.username if op.owner else '-'):<12} {op.created_at:%Y-%m-%d %H:%M:%S}"
            )

    def do_show(self, id, json, watch, **options):
        if watch:
            status = self._watch(id)
            if status != Status.COMPLETED:
                operation = selectors.operation_get(operation_id=id)
                why = f": {operation.error}" if operation.error else ""
                raise CommandError(f"operation {id} ended {label(status).lower()}{why}",
                                   returncode=WATCH_EXIT_CODES.get(status, 4))
            return
        operation = selectors.operation_get(operation_id=id)
        if json:
            self._json(OperationSerializer(operation).data)
            return
        data = OperationSerializer(operation).data
        self.stdout.write(f"Operation {operation.pk} · {operation.kind} · {data['status_label']}")
        self.stdout.write(f"  owner:    {data['owner'] or '-'}")
        self.stdout.write(f"  params:   {_dumps(data['params'])}")
        self.stdout.write(f"  progress: {_bar(operation)}")
        shown_age = selectors.shown_heartbeat_age(operation)
        if shown_age is not None:
            self.stdout.write(f"  heartbeat: {selectors.human_duration(shown_age)} ago")
        if data["silence"]:
            self.stdout.write(self.style.WARNING(f"  warning:  {data['silence']}"))
        if data["resume_at"]:
            self.stdout.write(f"  resumes:  by itself at {data['resume_at']} (beat)")
        if data["deadline_at"] and operation.status not in (Status.COMPLETED, Status.CANCELLED):
            self.stdout.write(f"  deadline: {data['deadline_at']} (beat ends it then if it has not ended)")
        if operation.result is not None:
            self.stdout.write(f"  result:   {_dumps(operation.result)}")
        if operation.error:
            self.stdout.write(f"  error:    {operation.error}")
        self.stdout.write(f"  run:      {operation.run_token}   actions: {', '.join(data['actions']) or '-'}")
        if data["forked_from"]:
            self.stdout.write(f"  forked:   from operation {data['forked_from']} at step {data['forked_at_step']}")
        if data["forks"]:
            self.stdout.write(f"  forks:    {', '.join(str(pk) for pk in data['forks'])}")
        if data["fork_steps"]:
            self.stdout.write(f"  fork from step: {services.listed_steps(data['fork_steps'])}")
        self.stdout.write("  events:")
        for event in data["events"]:
            self.stdout.write(f"    {event['at']}  {event['actor']:<10} {event['from_status'] or '-':>16} → "
                              f"{event['to_status']:<16} {event['note']}")

    #: What ``--wait`` waits for after each verb that has it.
    SETTLED = {"pause": lambda s: s != Status.PAUSE_REQUESTED, "cancel": lambda s: s not in ACTIVE}

    def do_user_verb(self, verb, id, wait=False, timeout=120.0, payload=None, **options):
        """pause, resume, cancel, retry, …: through the services' one verb table."""
        resume_at = _time_arg(options.get("resume_at"), options.get("resume_in"), "--resume-at", "--resume-in")
        at = _time_arg(options.get("at"), options.get("in_seconds"), "--at", "--in")
        if payload is not None:  # approve with what the next step gets
            operation = services.operation_approve(operation=id, actor=services.CLI, payload=_json_arg(payload))
        elif resume_at is not None:
            operation = services.operation_pause(operation=id, actor=services.CLI, resume_at=resume_at)
        elif at is not None:
            operation = services.operation_resume(operation=id, actor=services.CLI, at=at)
        else:
            operation = services.operation_apply(verb, operation=id, actor=services.CLI)
        self._report(operation, verb)
        if wait:
            self._wait(id, until=self.SETTLED[verb], timeout=timeout, reported=operation.status)

    def do_signal(self, id, name, payload, **options):
        operation = services.operation_signal(operation=id, name=name, actor=services.CLI,
                                              payload=None if payload is None else _json_arg(payload))
        self._report(operation, "signal")

    def do_edit(self, id, param, skip_step, step, **options):
        params = dict(_name_value(item) for item in param)
        steps = [{"step": number, "skip": True} for number in skip_step]
        for text in step:
            try:
                steps.append(json.loads(text))
            except ValueError as exc:
                raise CommandError(f"--step {text!r}: not JSON ({exc})") from None
        edited = services.operation_edit(operation=id, actor=services.CLI, params=params or None, steps=steps or None)
        self.stdout.write(f"operation {edited.pk}: {edited.events.order_by('at', 'id').last().note}")

    def do_fork(self, id, from_step, json, **options):
        fork = services.operation_fork(operation=id, from_step=from_step, actor=services.CLI)
        if json:
            self._json(OperationSerializer(fork).data)
        else:
            self.stdout.write(str(fork.pk))

    def do_purge(self, older_than, status, kind, dry_run, **options):
        outcome = services.operations_purge(older_than=timedelta(days=older_than), statuses=status, kinds=kind,
                                            dry_run=dry_run, actor=services.CLI)
        parts = ", ".join(f"{n} {what}" for what, n in outcome.operations.items() if n) or "none"
        said = "would delete" if dry_run else "deleted"
        self.stdout.write(f"{said} {outcome.total} operation(s) ({parts}) with {outcome.events} event(s)")

    def do_schedules(self, schedule_verb, **options):
        from operations import schedules
        from operations.models import Schedule

        if schedule_verb == "list":
            rows = [{"id": s.pk, "name": s.name, "kind": s.kind, "params": s.params,
                     "owner": s.owner.username if s.owner else None, "timing": schedules.describe_timing(s),
                     "paused": s.paused, "fired": s.fired, "refused": s.refused, "last_outcome": s.last_outcome}
                    for s in Schedule.objects.select_related("owner", "periodic_task__interval", "periodic_task__crontab")]
            if options["json"]:
                self._json(rows)
                return
            for row in rows:
                state = "paused" if row["paused"] else "on"
                self.stdout.write(f"{row['id']:>4}  {row['name']:<24} {row['kind']:<14} {row['timing']:<32} {state:<6} "
                                  f"fired {row['fired']}, refused {row['refused']}  {row['last_outcome']}")
            return
        if schedule_verb == "add":
            owner = None
            if options["owner"]:
                owner = get_user_model().objects.filter(username=options["owner"]).first()
                if owner is None:
                    raise CommandError(f"--owner {options['owner']}: no such user")
            made = schedules.schedule_create(
                name=options["name"], kind=options["kind"], params=dict(_name_value(p) for p in options["param"]),
                owner=owner, actor=services.CLI, crontab=options["crontab"], every=options["every"])
            self.stdout.write(str(made.pk))
            return
        name = options["name"]
        found = Schedule.objects.filter(pk=int(name)).first() if name.isdigit() else None
        found = found or Schedule.objects.filter(name=name).first()
        if found is None:
            raise CommandError(f"no schedule named {name!r}")
        if schedule_verb == "show":
            self.stdout.write(f"Schedule {found.pk} · {found.name} · {found.kind} · {schedules.describe_timing(found)}"
                              f" · {'paused' if found.paused else 'on'}")
            for operation in found.operations.order_by("-created_at")[:20]:
                self.stdout.write(f"  operation {operation.pk}  {label(operation.status):<16} {operation.created_at:%Y-%m-%d %H:%M:%S}")
            for event in found.events.order_by("-at", "-id")[:20]:
                self.stdout.write(f"  {event.at:%Y-%m-%d %H:%M:%S}  {event.actor:<8} {event.note}")
            return
        if schedule_verb == "delete":
            schedules.schedule_delete(schedule=found, actor=services.CLI)
            self.stdout.write(f"schedule {found.name}: deleted")
            return
        changed = getattr(schedules, f"schedule_{schedule_verb}")(schedule=found, actor=services.CLI)
        self.stdout.write(f"schedule {changed.name}: {'paused' if changed.paused else 'on'}")

    def do_count(self, id, **options):
        operation = selectors.operation_get(operation_id=id)
        count = selectors.operation_row_count(operation)
        if count is None:
            raise CommandError(f"operation {id} ({operation.kind}) stores no data rows")
        self.stdout.write(str(count))

    # --- helpers ------------------------------------------------------------------------------

    def _json(self, data):
        self.stdout.write(json.dumps(data, cls=JSONEncoder, indent=2))

    def _report(self, operation, verb):
        self.stdout.write(f"operation {operation.pk}: {label(operation.status)}")

    def _wait(self, id, until, timeout, reported):
        """Until ``until(status)``; prints the status it ends in unless that is the one already
        reported (a cancel of a paused operation is done at once)."""
        deadline = time.monotonic() + timeout
        while True:
            status = Operation.objects.filter(pk=id).values_list("status", flat=True).get()
            if until(status):
                if status != reported:
                    self.stdout.write(f"operation {id}: {label(status)}")
                return
            if time.monotonic() > deadline:
                raise CommandError(f"operation {id} is still {label(status).lower()} after {timeout:g}s")
            time.sleep(0.2)

    def _watch(self, id):
        """Redraw one progress line (rate, time left) until the operation stops moving: it left the
        active statuses, and is not an interrupted one beat will resume. Returns its status."""
        tty = sys.stdout.isatty()
        while True:
            operation = selectors.operation_get(operation_id=id)
            rate, left = selectors.operation_speed(operation, list(selectors.operation_events(operation=operation)))
            speed = f"  {rate:,.1f}/s" if rate else ""
            speed += f"  ~{selectors.human_duration(left)} left" if left is not None else ""
            line = f"#{operation.pk} {operation.kind:<12} {_bar(operation)}{speed}  {label(operation.status)}"
            self.stdout.write(("\r" + line.ljust(100)) if tty else line, ending="" if tty else "\n")
            self.stdout.flush()
            coming_back = operation.status == Status.INTERRUPTED and operation.resume_at is not None
            if operation.status not in ACTIVE and not coming_back:
                if tty:
                    self.stdout.write("")
                return operation.status
            time.sleep(0.5)


#: How ``show --watch`` ends: 0 only when the operation completed.
WATCH_EXIT_CODES = {Status.COMPLETED: 0, Status.FAILED: 1, Status.CANCELLED: 3, Status.PAUSED: 4,
                    Status.INTERRUPTED: 4}


def _time_arg(at, seconds, at_flag, in_flag):
    """A planned time from ``--…-at TIME`` or ``--…-in SECONDS`` (not both); None if neither."""
    if at is not None and seconds is not None:
        raise CommandError(f"give {at_flag} or {in_flag}, not both")
    if seconds is not None:
        if seconds <= 0:
            raise CommandError(f"{in_flag} {seconds:g}: give a number of seconds above 0")
        return timezone.now() + timedelta(seconds=seconds)
    return at


def _json_arg(text):
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CommandError(f"--payload {text!r}: not JSON ({exc})") from None


def _name_value(item):
    name, sep, value = item.partition("=")
    if not sep or not name:
        raise CommandError(f"--param {item!r}: expected NAME=VALUE")
    return name, value


def _kind_description(kind):
    """A kind and its parameters, for people (``kinds``) and scripts (``kinds --json``)."""
    params = []
    for name, field in kind.form().fields.items():
        choices = [value for value, _ in getattr(field, "choices", [])] or None
        params.append({"name": name, "type": _field_type(field), "required": field.required,
                       "default": field.initial if field.initial not in ("",) else None,
                       "help": str(field.help_text), "choices": choices})
    return {"name": kind.name, "label": str(kind.label), "description": str(kind.description),
            "progress_unit": kind.progress_unit, "params": params}


def _field_type(field):
    for form_class, name in ((forms.FileField, "file"), (forms.BooleanField, "boolean"),
                             (forms.IntegerField, "integer"), (forms.FloatField, "number"),
                             (forms.DecimalField, "number"), (forms.JSONField, "json"),
                             (forms.ChoiceField, "choice")):
        if isinstance(field, form_class):
            return name
    return "string"


def _bar(operation, width=30):
    total = operation.progress_total
    if not total:
        return f"{operation.progress_done} done"
    filled = int(width * min(operation.progress_done, total) / total)
    return f"[{'#' * filled}{'.' * (width - filled)}] {operation.progress_done}/{total} ({operation.percent}%)"


def _dumps(value):
    return json.dumps(value, cls=JSONEncoder)
