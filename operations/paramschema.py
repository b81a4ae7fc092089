"""A kind's parameters as JSON Schema, derived from its form — and the API's check against it.

One description serves two places: the OpenAPI schema (``POST /api/operations/`` documents a
typed ``params`` per kind) and the JSON API, which refuses a body the schema would refuse before
the form sees it. So the schema is exact by construction: what it admits, the types at least,
the API accepts, and what it refuses, the API refuses with the path of the bad value.

A form field may carry ``json_schema`` (a dict, or a callable returning one, for a value known
only at request time such as the files on the server; it is given the form); a form may list in ``json_required`` the
fields a JSON request must give although the form does not require them (an upload cannot come
in JSON, so the CSV kinds' server-side ``path`` is required there). File fields are left out:
a file comes as a multipart upload.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from django import forms
from django.core import validators
from django.core.exceptions import ValidationError

Schema = dict[str, Any]
JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool))
    or (isinstance(v, float) and math.isfinite(v) and v.is_integer()),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}
TYPE_NAMES = {"integer": "a whole number", "number": "a number", "string": "a string", "boolean": "true/false",
              "null": "null", "array": "a list", "object": "an object"}


def field_schema(field: forms.Field, form: forms.Form | None = None) -> Schema:
    """The JSON Schema of one form field's value (``form``: the form it is on, for a callable)."""
    declared = getattr(field, "json_schema", None)
    if declared is not None:
        schema = dict(declared(form) if callable(declared) else declared)
    elif isinstance(field, forms.BooleanField):
        schema = {"type": "boolean"}
    elif isinstance(field, forms.ChoiceField):
        schema = {"enum": [value for value, _ in field.choices if value != ""]}
    elif isinstance(field, forms.IntegerField | forms.FloatField | forms.DecimalField):
        schema = {"type": "integer" if type(field) is forms.IntegerField else "number"}
        for validator in field.validators:
            code = getattr(validator, "code", None)
            if code in ("min_value", "max_value"):
                schema["minimum" if code == "min_value" else "maximum"] = validator.limit_value
    elif isinstance(field, forms.JSONField):
        schema = {}
    elif isinstance(field, forms.CharField):
        schema = {"type": "string"}
        if field.max_length is not None:
            schema["maxLength"] = field.max_length
        if field.min_length is not None:
            schema["minLength"] = field.min_length
        # Django refuses NUL characters, and strips the value: blank is empty, so not given.
        if field.required and field.strip:
            schema["pattern"] = "^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$"
            schema["x-pattern-message"] = "This field is required (not blank), and may not hold NUL characters."
        else:
            schema["pattern"] = "^[^\\u0000]*$"
            schema["x-pattern-message"] = "Null characters are not allowed."
    else:
        schema = {}
    if field.help_text:
        schema.setdefault("description", str(field.help_text))
    return schema


def params_schema(form_class: type[forms.Form]) -> Schema:
    """The JSON Schema of a kind's ``params`` object in a JSON request."""
    form = form_class()
    fields = {name: field for name, field in form.fields.items() if not isinstance(field, forms.FileField)}
    defaults = set(getattr(form, "setting_defaults", {}))
    required = [name for name, field in fields.items() if field.required and name not in defaults]
    required += [name for name in getattr(form, "json_required", ()) if name in fields and name not in required]
    schema: Schema = {
        "type": "object",
        "properties": {name: field_schema(field, form) for name, field in fields.items()},
        "additionalProperties": False,
    }
    if required:
        schema["required"] = required
    return schema


def errors_against(schema: Schema, value: Any, where: str = "", *, subject: str = "") -> dict[str, list[str]]:
    """What in ``value`` the schema refuses, by path (``tasks[3].paramA``); empty when it fits.

    Covers the subset ``field_schema`` writes: type, enum, pattern, minimum/maximum,
    minLength/maxLength, minItems/maxItems, items, properties, required, additionalProperties.
    Limits are worded by Django's own validators, as the forms on the other faces word them;
    ``subject`` names what the top-level object's unknown fields are unknown for.
    """
    name = where or "body"
    expected = schema.get("type")
    if expected is not None and not JSON_TYPES[expected](value):
        return {name: [f"must be {TYPE_NAMES[expected]}, not {_described(value)}"]}
    if "enum" in schema and value not in schema["enum"]:
        choices = ", ".join(map(str, schema["enum"])) or "none here"
        return {name: [f"{value!r} is not one of the choices ({choices})"]}
    if "pattern" in schema and isinstance(value, str) and not re.search(schema["pattern"], value):
        return {name: [schema.get("x-pattern-message", f"must match {schema['pattern']}")]}
    checks = [("minimum", validators.MinValueValidator), ("maximum", validators.MaxValueValidator),
              ("minLength", validators.MinLengthValidator), ("maxLength", validators.MaxLengthValidator)]
    problems = []
    for keyword, validator in checks:
        if keyword in schema:
            try:
                validator(schema[keyword])(value)
            except ValidationError as exc:
                problems.extend(exc.messages)
    if "minItems" in schema and len(value) < schema["minItems"]:
        problems.append(f"must hold at least {schema['minItems']} item(s)")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        problems.append(f"must hold at most {schema['maxItems']} items, not {len(value)}")
    found: dict[str, list[str]] = {name: problems} if problems else {}
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            found.update(errors_against(schema["items"], item, f"{where}[{index}]"))
            if len(found) >= 10:  # enough to act on; a 1000-item list need not list every error
                break
    if isinstance(value, dict) and expected == "object":
        properties = schema.get("properties", {})
        if schema.get("additionalProperties") is False:
            unknown = sorted(set(value) - set(properties))
            if unknown:
                found.setdefault(where or "__all__", []).append(
                    f"unknown parameter(s){subject}: {', '.join(unknown)}; expected: {', '.join(properties) or 'none'}"
                    if not where else f"unknown field(s): {', '.join(unknown)}; expected: {', '.join(properties)}")
        for key in schema.get("required", []):
            if key not in value:
                found.setdefault(_join(where, key), []).append("This field is required.")
        for key, item in value.items():
            if key in properties:
                found.update(errors_against(properties[key], item, _join(where, key)))
    return found


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _described(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return str(value)  # 1.5 where a whole number was expected
    for name, check in JSON_TYPES.items():
        if name != "integer" and check(value):
            return TYPE_NAMES[name]
    return "null" if value is None else str(value)
