"""In-step checkpoints written by several threads at once (csv_import's ranges side by side)."""

import threading
from functools import partial

import pytest

from operations import engine, services
from operations.exceptions import StopStep
from operations.models import Operation
from operations.states import Status

# Each thread needs a connection of its own, and sees only what the others committed.
pytestmark = [pytest.mark.integration, pytest.mark.backends("pg-redis", "pg-rabbitmq"),
              pytest.mark.django_db(transaction=True)]

PARTS, CHUNKS = 3, 15


def with_part(index, position, last):
    return {**last, "parts": {**last["parts"], str(index): position}}


def done(cursor):
    return sum(cursor["parts"].values())


def write_parts(ctx, stop_after=None):
    """Each part in a thread: CHUNKS chunks of one position each, every one checkpointed."""
    stopped = {}

    def part(index):
        try:
            for position in range(1, CHUNKS + 1):
                with ctx.checkpoint(partial(with_part, index, position), done=done, total=lambda _: PARTS * CHUNKS):
                    Operation.objects.filter(pk=ctx.operation_id).values_list("fence").get()  # a write's round trip
                if stop_after is not None and position == stop_after and index == 0:
                    services.operation_pause(operation=ctx.operation_id, actor="cli")
        except StopStep as stop:
            stopped[index] = stop.status
        finally:
            from django.db import connection
            connection.close()

    threads = [threading.Thread(target=part, args=(index,)) for index in range(PARTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return stopped


def test_chunks_of_parts_side_by_side_commit_in_fence_order_each_merging_its_own_position():
    operation = Operation.objects.create(kind="arithmetic", status=Status.RUNNING, run_token=1)  # no worker runs it
    ctx = engine.StepContext(operation.pk, 1, 0, 0, {"parts": {}}, 0)
    assert write_parts(ctx) == {}
    row = Operation.objects.get(pk=operation.pk)
    assert row.checkpoint == {"parts": {str(index): CHUNKS for index in range(PARTS)}} == ctx.state
    assert row.fence == ctx.fence == PARTS * CHUNKS  # no checkpoint lost its fence to another
    assert (row.progress_done, row.progress_total) == (PARTS * CHUNKS, PARTS * CHUNKS)


def test_a_pause_seen_by_one_part_stops_every_part_at_its_next_checkpoint():
    operation = Operation.objects.create(kind="arithmetic", status=Status.RUNNING, run_token=1)  # no worker runs it
    ctx = engine.StepContext(operation.pk, 1, 0, 0, {"parts": {}}, 0)
    stopped = write_parts(ctx, stop_after=5)
    row = Operation.objects.get(pk=operation.pk)
    assert row.checkpoint == ctx.state and row.progress_done == done(row.checkpoint) == row.fence
    positions = {int(index): position for index, position in row.checkpoint["parts"].items()}
    assert positions[0] == 6 and stopped[0] == Status.PAUSE_REQUESTED  # its next chunk committed, then it stopped
    # Every other part stopped at its first checkpoint after the pause (unless it was done before).
    assert all(stopped.get(index) == Status.PAUSE_REQUESTED for index, position in positions.items()
               if position < CHUNKS), (positions, stopped)
