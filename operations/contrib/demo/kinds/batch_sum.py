"""``batch_sum``: a group of N small tasks (paramA + paramB) with live progress and a result cache.

The tasks run in parallel as the members of one group step: progress comes from a counter on the
operation row, a pause holds the members not yet started, and a task whose inputs were computed
before takes its result from the step cache at once, without running. A running task stops at
its next checkpoint (every 0.2 s) once a pause or cancel is requested, and runs again on resume.
"""

import math
import random
import time

from celery import group
from django import forms

from operations import BoundedJSONField
from operations.catalogue import AUTO_RECOVERY, Kind, KindForm, register_kind
from operations.workflow import checkpoint, step

from ..conf import conf

MAX_TASKS = 1000


#: A task sleeps in slices this long and checks between them, so a cancel frees its worker at once.
SLICE_SECONDS = 0.2


@step(name="operations.batch_add", atomic=False, cache=True, cache_exclude=("seconds",))
def batch_add(param_a, param_b, seconds=(0, 0)):
    """paramA + paramB, taking a random time within ``seconds`` (the original service's 3–10 s)."""
    if seconds[1] > 0:
        deadline = time.monotonic() + random.uniform(*seconds)
        while (left := deadline - time.monotonic()) > 0:
            checkpoint()  # a pause or cancel stops the task here; it runs again on resume
            time.sleep(min(left, SLICE_SECONDS))
    return param_a + param_b


def _number(value):
    """A JSON number: not a boolean, and finite (NaN and 1e400 parse, but no JSON column stores them)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or isinstance(value, float) and math.isfinite(value)


class BatchSumForm(KindForm):
    tasks = BoundedJSONField(help_text='A list of {"paramA": number, "paramB": number}.')
    tasks.json_schema = {"type": "array", "minItems": 1, "maxItems": MAX_TASKS, "items": {
        "type": "object", "required": ["paramA", "paramB"], "additionalProperties": False,
        "properties": {"paramA": {"type": "number"}, "paramB": {"type": "number"}}}}
    min_seconds = forms.FloatField(required=False, min_value=0, max_value=600,
                                   help_text="Each task takes at least this long.")
    max_seconds = forms.FloatField(required=False, min_value=0, max_value=600,
                                   help_text="… and at most this long.")

    setting_defaults = {"min_seconds": lambda: conf.BATCH_MIN_SECONDS, "max_seconds": lambda: conf.BATCH_MAX_SECONDS}

    def clean(self):
        cleaned = super().clean()
        low, high = cleaned.get("min_seconds"), cleaned.get("max_seconds")
        if low is not None and high is not None and low > high:  # a range given high to low
            cleaned["min_seconds"], cleaned["max_seconds"] = high, low
        return cleaned

    def clean_tasks(self):
        tasks = self.cleaned_data["tasks"]
        if not isinstance(tasks, list) or not tasks:
            raise forms.ValidationError('Give a non-empty list of {"paramA": …, "paramB": …} objects.')
        if len(tasks) > MAX_TASKS:
            raise forms.ValidationError(f"{len(tasks)} tasks; a batch holds at most {MAX_TASKS}.")
        for index, task in enumerate(tasks):
            if not isinstance(task, dict) or set(task) != {"paramA", "paramB"}:
                raise forms.ValidationError(f'tasks[{index}]: expected {{"paramA": …, "paramB": …}}, got {task!r}')
            for name in ("paramA", "paramB"):
                if not _number(task[name]):
                    raise forms.ValidationError(f"tasks[{index}].{name}: must be a number, got {task[name]!r}")
        return tasks


register_kind(Kind(
    name="batch_sum",
    label="Batch of sums",
    description="A group of paramA + paramB tasks run in parallel, with live progress and cached results.",
    form=BatchSumForm,
    build=lambda p: group(batch_add.s(t["paramA"], t["paramB"], seconds=[p["min_seconds"], p["max_seconds"]])
                          for t in p["tasks"]),
    progress="custom",
    progress_unit="tasks",
    work_seconds=lambda p: len(p["tasks"]) * (p["max_seconds"] or 0),
    recovery=AUTO_RECOVERY,  # the demo kinds come back by themselves after a crash
))
