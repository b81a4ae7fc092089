"""Uploaded files: kept while their operation may still read them, removed once it cannot.

An operation that failed or was interrupted can be retried or resumed, and reads its file again;
one that completed or was cancelled never will, and neither will one that was deleted.
"""

import uuid
from functools import partial
from pathlib import Path

from django.conf import settings
from django.db import transaction


def store(upload):
    """Write an uploaded file under TAP_UPLOAD_DIR with a unique name; returns its path."""
    folder = Path(settings.TAP_UPLOAD_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{uuid.uuid4().hex}-{Path(upload.name).name}"
    with open(target, "wb") as out:
        for piece in upload.chunks():
            out.write(piece)
    return target


def discard(params):
    """Remove the upload an operation's params name, if any; server-side files are never touched."""
    path = params.get("path") if isinstance(params, dict) else None
    if not path:
        return False
    candidate = Path(path).resolve()
    if candidate.parent != Path(settings.TAP_UPLOAD_DIR).resolve():
        return False
    candidate.unlink(missing_ok=True)
    return True


def discard_for(operation_id):
    from .models import Operation

    params = Operation.objects.filter(pk=operation_id).values_list("params", flat=True).first()
    return discard(params)


def discard_on_delete(sender, instance, **kwargs):
    """post_delete of an Operation: the file goes only if the deletion commits."""
    transaction.on_commit(partial(discard, instance.params), robust=True)
