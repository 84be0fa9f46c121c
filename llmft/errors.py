"""Errors caused by the user's input or setup: reported as one line, without a traceback."""

from __future__ import annotations

import logging


class UserFacingError(Exception):
    """Bad input or setup; the message alone tells the user what to fix."""


class _DropUserErrorTracebacks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], UserFacingError):
            record.exc_info, record.exc_text = None, None
        return True


def hide_user_error_tracebacks() -> None:
    """ZenML logs every step failure with its traceback; ours carry their own clear message."""
    for name in ("zenml.orchestrators.local.local_orchestrator", "zenml.orchestrators.step_launcher",
                 "zenml.orchestrators.step_runner"):
        logging.getLogger(name).addFilter(_DropUserErrorTracebacks())
