"""django-tappable: long-running work as Celery workflows that people can pause, resume and cancel.

The public Python API is what this module exports (``__all__``)::

    from operations import Kind, KindForm, register_kind, step, operation_start

Everything else in the package is internal and may change between versions. The names are
loaded on first use, so ``import operations`` works before Django's apps are ready (settings,
``INSTALLED_APPS``) and only the services need a configured database.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name → the module that defines it
_EXPORTS = {
    # building operations
    "step": "operations.workflow",
    "checkpoint": "operations.workflow",
    "should_stop": "operations.workflow",
    "StepContext": "operations.engine",
    "Kind": "operations.catalogue",
    "KindForm": "operations.catalogue",
    "register_kind": "operations.catalogue",
    "Recovery": "operations.catalogue",
    "AUTO_RECOVERY": "operations.catalogue",
    "get_kind": "operations.catalogue",
    "BoundedJSONField": "operations.jsonlimits",
    # the user verbs (every face calls these)
    "operation_start": "operations.services",
    "operation_pause": "operations.services",
    "operation_resume": "operations.services",
    "operation_cancel": "operations.services",
    "operation_retry": "operations.services",
    "operation_fork": "operations.services",
    "operation_terminate": "operations.services",
    "operation_edit": "operations.services",
    "operation_approve": "operations.services",
    "operation_reject": "operations.services",
    "operation_signal": "operations.services",
    "wait_for_signal": "operations.waiting",
    "wait_for_approval": "operations.waiting",
    "Actor": "operations.services",
    # the control bus
    "Operation": "operations.models",
    "OperationEvent": "operations.models",
    "Status": "operations.states",
    # errors
    "OperationError": "operations.exceptions",
    "InvalidParams": "operations.exceptions",
    "UnknownKind": "operations.exceptions",
    "OperationNotFound": "operations.exceptions",
    "TransitionRefused": "operations.exceptions",
    "ConcurrencyLimitReached": "operations.exceptions",
    "QuotaExceeded": "operations.exceptions",
    "WorkflowError": "operations.exceptions",
    "DataError": "operations.exceptions",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'operations' has no attribute {name!r}") from None
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # what type checkers and IDEs see (``X as X`` marks a re-export)
    from .catalogue import (
        AUTO_RECOVERY as AUTO_RECOVERY,
        Kind as Kind,
        KindForm as KindForm,
        Recovery as Recovery,
        get_kind as get_kind,
        register_kind as register_kind,
    )
    from .engine import (
        StepContext as StepContext,
    )
    from .exceptions import (
        ConcurrencyLimitReached as ConcurrencyLimitReached,
        DataError as DataError,
        InvalidParams as InvalidParams,
        OperationError as OperationError,
        OperationNotFound as OperationNotFound,
        QuotaExceeded as QuotaExceeded,
        TransitionRefused as TransitionRefused,
        UnknownKind as UnknownKind,
        WorkflowError as WorkflowError,
    )
    from .jsonlimits import (
        BoundedJSONField as BoundedJSONField,
    )
    from .models import (
        Operation as Operation,
        OperationEvent as OperationEvent,
    )
    from .services import (
        Actor as Actor,
        operation_approve as operation_approve,
        operation_cancel as operation_cancel,
        operation_edit as operation_edit,
        operation_fork as operation_fork,
        operation_pause as operation_pause,
        operation_reject as operation_reject,
        operation_resume as operation_resume,
        operation_retry as operation_retry,
        operation_signal as operation_signal,
        operation_start as operation_start,
        operation_terminate as operation_terminate,
    )
    from .states import (
        Status as Status,
    )
    from .waiting import (
        wait_for_approval as wait_for_approval,
        wait_for_signal as wait_for_signal,
    )
    from .workflow import (
        checkpoint as checkpoint,
        should_stop as should_stop,
        step as step,
    )
