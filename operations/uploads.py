"""Uploaded files: kept while their operation may still read them, removed once it cannot.

An operation that failed or was interrupted can be retried or resumed, and reads its file again;
one that completed or was cancelled never will, and neither will one that was deleted.
"""

import os
import re
import shutil
import unicodedata
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


#: Of the name a client sent, at most this many characters are kept (file systems allow 255 bytes).
SAFE_NAME_CHARS = 80


def safe_name(name):
    """A file name made of ASCII letters, digits, ``-``, ``_`` and one ``.``, at most
    ``SAFE_NAME_CHARS`` long, from whatever a client sent: folders, control characters, right-to-left
    marks and 300-byte names must neither fail the write (a 500) nor land outside the folder."""
    base = re.split(r"[/\\]", str(name or ""))[-1]
    ascii_name = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode()
    stem, dot, extension = ascii_name.rpartition(".")
    if not dot:
        stem, extension = ascii_name, ""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_")[:SAFE_NAME_CHARS] or "upload"
    extension = re.sub(r"[^A-Za-z0-9]+", "", extension)[:10]
    return f"{stem}.{extension}" if extension else stem


def store(upload):
    """Write an uploaded file under the upload folder with a unique, safe name; returns its path."""
    folder = upload_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{uuid.uuid4().hex}-{safe_name(upload.name)}"
    with open(target, "wb") as out:
        for piece in upload.chunks():
            out.write(piece)
    return target


def discard(params):
    """Remove the upload an operation's params name, if any; server-side files are never touched."""
    candidate = _upload_path(params)
    if candidate is None:
        return False
    candidate.unlink(missing_ok=True)
    return True


def _upload_path(params):
    """The upload an operation's params name, or None (no path, or a server-side file)."""
    path = params.get("path") if isinstance(params, dict) else None
    folder = conf.UPLOAD_DIR
    if not path or folder is None:
        return None
    candidate = Path(path).resolve()
    return candidate if candidate.parent == Path(folder).resolve() else None


def copy_for(params):
    """A fork's own copy of the upload its original reads (a hard link where it can), so that
    either one ending removes only its own file; params unchanged for a server-side file.
    Raises FileNotFoundError if the original's upload is gone (it completed or was cancelled)."""
    source = _upload_path(params)
    if source is None:
        return params
    if not source.is_file():
        raise FileNotFoundError(source.name)
    target = source.with_name(f"{uuid.uuid4().hex}-{source.name.partition('-')[2] or source.name}")
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    return {**params, "path": str(target)}


def discard_for(operation_id):
    from .models import Operation

    params = Operation.objects.filter(pk=operation_id).values_list("params", flat=True).first()
    return discard(params)


def discard_on_delete(sender, instance, **kwargs):
    """post_delete of an Operation: the file goes only if the deletion commits."""
    transaction.on_commit(partial(discard, instance.params), robust=True)
