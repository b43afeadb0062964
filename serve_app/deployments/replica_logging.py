"""What a replica's Serve log shows: the project's own lines, and refusals in one line each.

Serve configures only the "ray.serve" logger in a replica; the root logger keeps
Python's WARNING level, so an INFO line from `serve_app.*` (the dtype choice at
load, a cancelled request freeing its rows) would vanish. The engine and the
scheduler import no Ray, so they log under their module names and the replica
hands those lines to Serve's handlers here.

Serve also logs every exception a deployment method raises as "Request failed."
with its traceback, about 50 lines. A refusal the client is answered for (a full
queue, a request that could not start in time: 503; a bad input: 422) is routine
under load, so it is logged as one WARNING line instead: a burst of refusals must
not flood the log, nor spend the CPU of a box that is already overloaded on
formatting tracebacks.
"""

from __future__ import annotations

import logging

from serve_app.deployments.failures import is_refusal

PROJECT_LOGGER = "serve_app"
SERVE_LOGGER = "ray.serve"


def send_project_logs_to_serve(level: int = logging.INFO) -> None:
    """Give the `serve_app` logger the handlers of Serve's replica logger (once per process)."""
    project = logging.getLogger(PROJECT_LOGGER)
    serve_handlers = logging.getLogger(SERVE_LOGGER).handlers
    if not serve_handlers:  # not inside a Serve replica: leave logging as the host configured it
        return
    project.setLevel(level)
    for handler in serve_handlers:
        if handler not in project.handlers:
            project.addHandler(handler)
    project.propagate = False  # no second copy through the root logger


class RefusalsInOneLine(logging.Filter):
    """Turns Serve's "Request failed." record of a refusal into one WARNING line without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and record.msg == "Request failed." and is_refusal(error):
            record.msg, record.args = "Request refused: %s: %s", (type(error).__name__, error)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def log_refusals_in_one_line() -> None:
    """Install RefusalsInOneLine on Serve's replica logger (once per process)."""
    serve = logging.getLogger(SERVE_LOGGER)
    if not any(isinstance(existing, RefusalsInOneLine) for existing in serve.filters):
        serve.addFilter(RefusalsInOneLine())
