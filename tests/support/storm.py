"""The control storm's commander: random pause / resume / cancel / retry / terminate / edit / fork /
approve / signal / reject sent to a few operations.

The same loop runs in threads of the test process and in subprocesses (``PROCESS_COMMAND``), so
a seed replays the same sequence of commands either way; only its interleaving with the worker
varies from run to run.
"""

import random
import time
from collections import Counter

from django.db import connection

from operations import selectors, services
from operations.models import Operation


def _edit(*, operation, actor, rng):
    """The storm's edit of a paused operation: another delay for its last step, so what it
    computes and writes stays the same (the checker's expectations hold)."""
    steps = Operation.objects.filter(pk=operation).values_list("workflow", flat=True).get()["steps"]
    kwargs = steps[-1].get("kwargs", {})
    delay = 0.02 if kwargs.get("delay") == 0.01 else 0.01
    return services.operation_edit(operation=operation, actor=actor,
                                   steps=[{"step": len(steps), "kwargs": {**kwargs, "delay": delay}}])


def _fork(*, operation, actor, rng):
    """A fork: an arithmetic chain from a random step it reached (its result is the same from
    anywhere); the others from step 1 (so the fork writes what the original does)."""
    original = Operation.objects.get(pk=operation)
    steps = selectors.fork_steps(original) if original.kind == "arithmetic" else [1]
    return services.operation_fork(operation=operation, from_step=rng.choice(steps), actor=actor)


VERBS = {
    "pause": lambda *, operation, actor, rng: services.operation_pause(operation=operation, actor=actor),
    "resume": lambda *, operation, actor, rng: services.operation_resume(operation=operation, actor=actor),
    "retry": lambda *, operation, actor, rng: services.operation_retry(operation=operation, actor=actor),
    "cancel": lambda *, operation, actor, rng: services.operation_cancel(operation=operation, actor=actor),
    "terminate": lambda *, operation, actor, rng: services.operation_terminate(operation=operation, actor=actor),
    "approve": lambda *, operation, actor, rng: services.operation_approve(operation=operation, actor=actor),
    "signal": lambda *, operation, actor, rng: services.operation_signal(operation=operation, name="approval",
                                                                         actor=actor),
    "reject": lambda *, operation, actor, rng: services.operation_reject(operation=operation, actor=actor),
    "edit": _edit,
    "fork": _fork,
}
#: Pause and resume dominate so that operations keep moving between running and paused.
WEIGHTS = {"pause": 5, "resume": 4, "retry": 1, "cancel": 1, "terminate": 2, "edit": 1, "fork": 1,
           "approve": 1, "signal": 1, "reject": 1}
#: Verbs that end an operation: only for the ``cancellable`` ones, and only after this share of a
#: commander's commands (an early one would end the operation before the storm had a chance at
#: it; terminate needs a running one, which the end of the storm has few of).
ENDS_AFTER = {"cancel": 0.5, "terminate": 0.2, "reject": 0.5}
#: Forks each commander may make (each fork is one more operation to settle and check).
MAX_FORKS = 2

#: ``python -c`` script a subprocess commander runs: argv[1] is the JSON of ``command_storm``'s
#: keyword arguments; the outcome is printed as one JSON line.
PROCESS_COMMAND = (
    "import django, json, sys; django.setup(); "
    "from tests.support.storm import command_storm; "
    "print(json.dumps(command_storm(**json.loads(sys.argv[1]))))"
)


def command_storm(*, name, seed, count, operations, cancellable=(), pace=0.05):
    """Send ``count`` random verbs to ``operations`` as actor ``name``; tally what happened.

    Refusals (TransitionRefused) are expected and counted per verb; anything else is an error,
    returned with the command that raised it. ``cancel`` only goes to ``cancellable`` ids.
    """
    rng = random.Random(f"{seed}/{name}")
    actor = services.Actor(name, "cli")
    tally, errors, forks = Counter(), [], {}
    try:
        for n in range(count):
            operation_id = rng.choice(operations)
            verbs = [v for v in WEIGHTS
                     if (v not in ENDS_AFTER or (operation_id in cancellable and n >= ENDS_AFTER[v] * count))
                     and (v != "fork" or len(forks) < MAX_FORKS)]
            verb = rng.choices(verbs, [WEIGHTS[v] for v in verbs])[0]
            try:
                changed = VERBS[verb](operation=operation_id, actor=actor, rng=rng)
                tally[f"{verb} accepted"] += 1
                if verb == "fork":
                    forks[changed.pk] = operation_id
            except services.TransitionRefused:
                tally[f"{verb} refused"] += 1
            except services.InvalidParams:  # an edit that changes nothing (the delay it already has)
                tally[f"{verb} refused"] += 1
            except Exception as exc:  # the storm reports it; the test fails on it
                errors.append(f"{name} command {n}: {verb} {operation_id}: {type(exc).__name__}: {exc}")
            time.sleep(rng.uniform(0, pace))
    finally:
        connection.close()
    return {"name": name, "sent": count, "tally": dict(tally), "errors": errors, "forks": forks}
