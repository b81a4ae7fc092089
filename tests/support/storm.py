"""The control storm's commander: random pause / resume / cancel / retry sent to a few operations.

The same loop runs in threads of the test process and in subprocesses (``PROCESS_COMMAND``), so
a seed replays the same sequence of commands either way; only its interleaving with the worker
varies from run to run.
"""

import random
import time
from collections import Counter

from django.db import connection

from operations import services

VERBS = {
    "pause": services.operation_pause,
    "resume": services.operation_resume,
    "retry": services.operation_retry,
    "cancel": services.operation_cancel,
}
#: Pause and resume dominate so that operations keep moving between running and paused.
WEIGHTS = {"pause": 5, "resume": 4, "retry": 1, "cancel": 1}
#: Cancels come only in the last part of a commander's commands: an early cancel would end the
#: operation before the storm has had a chance at it.
CANCEL_AFTER = 0.5

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
    tally, errors = Counter(), []
    try:
        for n in range(count):
            operation_id = rng.choice(operations)
            verbs = [v for v in WEIGHTS if v != "cancel"
                     or (operation_id in cancellable and n >= CANCEL_AFTER * count)]
            verb = rng.choices(verbs, [WEIGHTS[v] for v in verbs])[0]
            try:
                VERBS[verb](operation=operation_id, actor=actor)
                tally[f"{verb} accepted"] += 1
            except services.TransitionRefused:
                tally[f"{verb} refused"] += 1
            except Exception as exc:  # the storm reports it; the test fails on it
                errors.append(f"{name} command {n}: {verb} {operation_id}: {type(exc).__name__}: {exc}")
            time.sleep(rng.uniform(0, pace))
    finally:
        connection.close()
    return {"name": name, "sent": count, "tally": dict(tally), "errors": errors}
