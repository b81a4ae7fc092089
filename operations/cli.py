"""Verbs that other apps add to ``manage.py operations`` (the demo app adds make-csv, say).

An app registers them when it is ready; the command lists them with its own verbs.
"""

from __future__ import annotations

from argparse import ArgumentParser
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Verb:
    name: str
    help: str
    #: Adds the verb's arguments to its subparser.
    add_arguments: Callable[[ArgumentParser], None]
    #: Called as ``handle(command, **options)``; raise CommandError or ValueError to fail.
    handle: Callable[..., Any]


VERBS: dict[str, Verb] = {}


def register_verb(verb: Verb) -> Verb:
    VERBS[verb.name] = verb
    return verb
