"""``arithmetic``: a chain of add / mult steps — ((4+6)*16)+6… — the hello-world of tappable chains."""

import time

from celery import chain
from django import forms

from operations.catalogue import AUTO_RECOVERY, Kind, KindForm, register_kind
from operations.workflow import step

ADDEND = 6
FACTOR = 16


@step(name="operations.add", atomic=False)
def add(x, y, delay=0.0):
    if delay:
        time.sleep(delay)
    return x + y


@step(name="operations.mult", atomic=False)
def mult(x, y, delay=0.0):
    if delay:
        time.sleep(delay)
    return x * y


class ArithmeticForm(KindForm):
    x = forms.IntegerField(required=False, initial=4, min_value=-10**9, max_value=10**9,
                           help_text="Start value.")
    steps = forms.IntegerField(required=False, initial=10, min_value=1, max_value=1000,
                               help_text="Number of steps: add 6, multiply by 16, add 6, …")
    delay = forms.FloatField(required=False, initial=0.0, min_value=0, max_value=60,
                             help_text="Seconds each step takes.")


def build(params):
    """Step 0 is add(x, 6); then multiply by 16 and add 6 in turn."""
    kwargs = {"delay": params["delay"]} if params["delay"] else {}
    signatures = [add.s(params["x"], ADDEND, **kwargs)]
    for index in range(1, params["steps"]):
        signatures.append(mult.s(FACTOR, **kwargs) if index % 2 else add.s(ADDEND, **kwargs))
    return chain(*signatures)


def expected_result(x=4, steps=10):
    """What an uninterrupted run returns: the reference for pause/resume tests."""
    value = x + ADDEND
    for index in range(1, steps):
        value = value * FACTOR if index % 2 else value + ADDEND
    return value


register_kind(Kind(
    name="arithmetic",
    label="Arithmetic chain",
    description="A chain of add / mult steps, each with an optional delay.",
    form=ArithmeticForm,
    build=build,
    work_seconds=lambda p: p["steps"] * (p["delay"] or 0),
    recovery=AUTO_RECOVERY,  # the demo kinds come back by themselves after a crash
))
