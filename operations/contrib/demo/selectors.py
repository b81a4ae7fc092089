"""Reads in the shapes of the original batch service (/grouptasks/<id>, /tasks/<id>)."""

from operations.models import StepMember


def group_status(operation):
    """A batch (group step 0) in the shape of the original batch service's /grouptasks/<id>.

    As the original: ``results`` lists the finished tasks only (in task order; a failed task's
    result is null), and ``tasksCompleted`` counts them — both from one read of the members, so
    the two never disagree within a response."""
    members = list(StepMember.objects.filter(operation=operation, step_index=0)
                   .order_by("member_index").values_list("state", "result"))
    first = operation.steps[0] if operation.steps else {}
    total = len(first.get("group", [])) or len(members)
    done = (StepMember.State.SUCCESS, StepMember.State.FAILURE)
    finished = [(state, result) for state, result in members if state in done]
    succeeded = sum(1 for state, _ in finished if state == StepMember.State.SUCCESS)
    return {
        "groupTaskId": str(operation.pk),
        "grouptaskProcessed": bool(total) and len(finished) == total,
        "grouptaskSucceeded": bool(total) and succeeded == total,
        "results": [result if state == StepMember.State.SUCCESS else None for state, result in finished],
        "tasksCompleted": len(finished),
        "tasksTotal": total,
    }


def task_status(task_id, members):
    """One batch task in the shape of the original service's /tasks/<id>: PENDING until it has run."""
    member = members.filter(task_id=task_id).values_list("state", "result").first()
    state, result = member or (StepMember.State.PENDING, None)
    return {
        "taskId": str(task_id),
        "taskState": state,
        "taskSucceeded": state == StepMember.State.SUCCESS,
        "result": result if state == StepMember.State.SUCCESS else None,
        "resultReady": state in (StepMember.State.SUCCESS, StepMember.State.FAILURE),
    }
