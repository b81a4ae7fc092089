"""Faults injected inside a worker process (tests only), chosen by TAP_FAULTS=duplicate,….

``duplicate``: every message the process publishes (step, member) is published twice, as a
broker that redelivers or a producer that retries would do.
"""

import os

from tapproject.celery import app

FAULTS = set(filter(None, os.environ.get("TAP_FAULTS", "").split(",")))


def publish_twice(send_task):
    def send_task_twice(*args, **kwargs):
        send_task(*args, **kwargs)
        return send_task(*args, **kwargs)

    send_task_twice.publishes_twice = True
    return send_task_twice


if "duplicate" in FAULTS and not getattr(app.send_task, "publishes_twice", False):
    app.send_task = publish_twice(app.send_task)
