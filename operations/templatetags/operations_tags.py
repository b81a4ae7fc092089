"""Small display helpers for the operation pages."""

import json

from django import template

from ..selectors import human_duration
from ..states import label

register = template.Library()


@register.filter
def status_label(status):
    return label(status)


@register.filter
def duration(seconds):
    """12 s, 3 min 4 s, 2 h 5 min — for ETAs."""
    return human_duration(seconds)


@register.filter
def pretty_json(value):
    return json.dumps(value, indent=2, default=str)
