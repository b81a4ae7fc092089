"""The built-in operation kinds; each module registers itself with the catalogue on import."""

from . import arithmetic  # noqa: F401
