"""A resumable operation of your own, in a few lines (see docs/extending.md)."""

from celery import chain
from django import forms

from operations import Kind, KindForm, register_kind, step


@step(name="examples.slugify", atomic=False)
def slugify(title):
    return "-".join(title.lower().split())


@step(name="examples.place", atomic=False)
def place(slug, section):
    return f"/{section}/{slug}/"


class PublishForm(KindForm):
    title = forms.CharField(max_length=200)
    section = forms.CharField(max_length=50, required=False, initial="blog")


register_kind(Kind(
    name="publish", label="Publish a post", form=PublishForm,
    build=lambda params: chain(slugify.s(params["title"]), place.s(params["section"])),
))
