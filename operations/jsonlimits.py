"""JSON that people send is bounded in depth, so deep nesting is a clear 400, never a 500.

Python's JSON decoder recurses: 2 KB of ``[`` raise ``RecursionError``, which no view expects,
and a document just under that limit recurses again in every validator and in the database
adapter. Every face parses JSON through ``loads`` (the API's parser, the form field the kinds use,
``params`` sent as text in a multipart request), which refuses more than ``TAP_MAX_JSON_DEPTH``
levels with a message that names the limit.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.forms.fields import InvalidJSONInput

from .conf import conf


class TooDeep(ValueError):
    """A JSON document nested deeper than the limit."""


def too_deep_message(limit: int | None = None) -> str:
    limit = conf.MAX_JSON_DEPTH if limit is None else limit
    return f"JSON nested deeper than {limit} levels (TAP_MAX_JSON_DEPTH)"


def nesting_depth(value: Any) -> int:
    """How many lists and objects deep ``value`` goes (a scalar: 0), without recursing."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        pending.extend((child, depth + 1) for child in children if isinstance(child, (dict, list, tuple)))
    return deepest


def check_depth(value: Any, limit: int | None = None) -> Any:
    """``value`` itself, or TooDeep when it is nested deeper than the limit."""
    limit = conf.MAX_JSON_DEPTH if limit is None else limit
    if nesting_depth(value) > limit:
        raise TooDeep(too_deep_message(limit))
    return value


def loads(text: str | bytes, **kwargs: Any) -> Any:
    """``json.loads`` that raises TooDeep (a ValueError) for deep documents instead of recursing."""
    try:
        value = json.loads(text, **kwargs)
    except RecursionError:
        raise TooDeep(too_deep_message()) from None
    return check_depth(value)


class BoundedJSONField(forms.JSONField):
    """``forms.JSONField`` with the depth limit: what a kind's form uses for JSON parameters."""

    def to_python(self, value: Any) -> Any:
        try:
            return super().to_python(value)
        except RecursionError:
            raise ValidationError(too_deep_message(), code="too_deep") from None

    def prepare_value(self, value: Any) -> Any:
        """An empty field shows empty, not the text ``null``."""
        return "" if value is None else super().prepare_value(value)

    def bound_data(self, data: Any, initial: Any) -> Any:
        """Shown again as the text that was sent (the form is re-rendered with its errors)."""
        try:
            return super().bound_data(data, initial)
        except RecursionError:
            return InvalidJSONInput(data)

    def clean(self, value: Any) -> Any:
        cleaned = super().clean(value)
        try:
            return check_depth(cleaned)
        except TooDeep as exc:
            raise ValidationError(str(exc), code="too_deep") from None
