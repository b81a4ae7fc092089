"""Uploaded files: kept while their operation may still read them, removed once it cannot.

An operation that failed or was interrupted can be retried or resumed, and reads its file again;
one that completed or was cancelled never will, and neither will one that was deleted.
"""

import uuid
from functools import partial
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured
from django.db import transaction

from .conf import conf


def upload_dir():
    """The folder uploads go to (TAP_UPLOAD_DIR, else MEDIA_ROOT/operations/uploads)."""
    folder = conf.UPLOAD_DIR
    if folder is None:
        raise ImproperlyConfigured("a kind takes file uploads, but neither TAP_UPLOAD_DIR nor MEDIA_ROOT is set "
                                   "(manage.py check: operations.E010)")
    return Path(folder)


def store(upload):
    """Write an uploaded file under the upload folder with a unique name; returns its path."""
    folder = upload_dir()
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
    folder = conf.UPLOAD_DIR
    candidate = Path(path).resolve()
    if folder is None or candidate.parent != Path(folder).resolve():
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
