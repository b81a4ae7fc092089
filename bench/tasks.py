"""The benchmarks' own Celery task: the bare self-chaining hop (the broker's floor).

In a module of its own so that the benchmark run as a script (``__main__``) and the worker
(which imports ``bench.overhead`` through ``TAP_KIND_MODULES``) register the same task once.
"""

from celery import shared_task


@shared_task(name="bench.hop")
def hop(done, steps, last_id, queue=None):
    """One hop of the bare self-chaining task: it sends itself again until it has run ``steps``
    times. Only the last one (task id ``last_id``) stores its result, so the caller can wait for
    it as it waits for a plain chain's last step; every other hop is ignore_result. ``queue``:
    another worker's (the default queue's when None)."""
    done += 1
    if done < steps:
        send_hop(done, steps, last_id, queue)
    return done


def send_hop(done, steps, last_id, queue=None):
    last = done + 1 == steps
    return hop.apply_async((done, steps, last_id, queue), ignore_result=not last,
                           task_id=last_id if last else None, **({"queue": queue} if queue else {}))
