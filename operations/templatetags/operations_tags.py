"""Small display helpers for the operation pages."""

import json

from django import template

from ..states import label

register = template.Library()


@register.filter
def status_label(status):
    return label(status)


@register.filter
def duration(seconds):
    """12 s, 3 min 4 s, 2 h 5 min — for ETAs."""
    if seconds is None:
        return "—"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


@register.filter
def pretty_json(value):
    return json.dumps(value, indent=2, default=str)
