"""The demo kinds; each module registers itself with the catalogue on import (operation_kinds.py)."""
