"""The engine's remote-control command: stop the pool process that runs a step of a given run.

``terminate`` needs to stop a step that never reaches a pause point (a hung call, a lock wait,
``time.sleep(3600)``). Celery's ``revoke(terminate=True)`` finds the process by task id, but a
step's task id is not kept anywhere, and in a sticky slice the step running is not the one its
message named. Every worker knows its active requests and their arguments, which begin with
``(operation_id, run_token)``: this command, broadcast to all workers, kills the pool process of
each request of that run. The worker's main process then replaces the process (the pool does it
for every lost child), and acknowledges the message (Celery's own terminate does), so it is not
delivered again.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker import state as worker_state
from celery.worker.control import control_command

log = logging.getLogger("operations.engine")

TERMINATE_COMMAND = "tap_terminate"
#: The tasks whose arguments begin with (operation_id, run_token).
STEP_TASKS = frozenset({"operations.run_step", "operations.run_member"})


@control_command(
    name=TERMINATE_COMMAND,
    args=[("operation_id", int), ("run_token", int)],
    signature="<operation_id> <run_token>",
)
def tap_terminate(state: Any, operation_id: int, run_token: int, **kwargs: Any) -> dict:
    """Kill the pool process of every step or member of run ``run_token`` of the operation that
    this worker is running; returns how many it stopped (0 when it runs none)."""
    stopped = []
    for request in list(worker_state.active_requests):
        if request.name in STEP_TASKS and list(request.args[:2]) == [operation_id, run_token]:
            worker_state.revoked.add(request.id)  # a redelivery here is dropped too
            request.terminate(state.consumer.pool, signal="SIGKILL")
            stopped.append(request.id)
    if stopped:
        log.warning("operation %s: terminated: stopped the pool process of %s (run %s)",
                    operation_id, ", ".join(stopped), run_token)
    return {"stopped": len(stopped)}
