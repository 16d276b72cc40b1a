"""A JSON formatter for ism's structured log lines (and anyone else's), for the stdlib.

ism logs one line per action outcome on ``ism.actions``: a ``key=value`` message for people,
and the same fields as attributes of the record (``extra=``) for machines. This formatter
writes each record as one JSON object holding the message and those fields, so a log shipper
indexes ``request_id`` or ``outcome`` without parsing text. Configure it like any formatter::

    logging.config.dictConfig({
        "version": 1,
        "formatters": {"json": {"()": "statemachine.JsonFormatter"}},
        "handlers": {"stdout": {"class": "logging.StreamHandler", "formatter": "json"}},
        "loggers": {"ism": {"level": "INFO", "handlers": ["stdout"]}},
    })

The message is passed through :func:`~statemachine.redact.scrub` once more on the way out:
ism's own lines are scrubbed when made, this also covers lines of code that forgot to.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from .redact import scrub

__all__ = ["JsonFormatter"]

_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}
"""What every LogRecord carries: anything else on a record came in through ``extra=``."""

# A library leaves handlers to the application (the logging HOWTO, "Configuring Logging for a
# Library"): without this, Python's last-resort handler would print ism's warnings to stderr
# in an application that configured no logging at all.
logging.getLogger("ism").addHandler(logging.NullHandler())


class JsonFormatter(logging.Formatter):
    """Each record as one line of JSON: time, level, logger, message, then the extra fields.

    Args:
        time_field: The key of the record's time (ISO 8601, UTC), or None to leave it out
            (when the collector stamps lines itself: journald, a container runtime).
    """

    def __init__(self, *, time_field: str | None = "time") -> None:
        super().__init__()
        self.time_field = time_field

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON object on one line (non-JSON values as their ``str``)."""
        out: dict[str, Any] = {}
        if self.time_field is not None:
            when = dt.datetime.fromtimestamp(record.created, dt.UTC)
            out[self.time_field] = when.isoformat(timespec="milliseconds")
        out["level"] = record.levelname
        out["logger"] = record.name
        out["message"] = scrub(record.getMessage())
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_") and key not in out:
                out[key] = value
        if record.exc_info:
            out["exception"] = scrub(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False, default=str)
