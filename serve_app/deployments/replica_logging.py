"""The project's own log lines (engine, scheduler) reach the replica's Serve log.

Serve configures only the "ray.serve" logger in a replica; the root logger keeps
Python's WARNING level, so an INFO line from `serve_app.*` (the dtype choice at
load, a cancelled request freeing its rows) would vanish. The engine and the
scheduler import no Ray, so they log under their module names and the replica
hands those lines to Serve's handlers here.
"""

from __future__ import annotations

import logging

PROJECT_LOGGER = "serve_app"


def send_project_logs_to_serve(level: int = logging.INFO) -> None:
    """Give the `serve_app` logger the handlers of Serve's replica logger (once per process)."""
    project = logging.getLogger(PROJECT_LOGGER)
    serve_handlers = logging.getLogger("ray.serve").handlers
    if not serve_handlers:  # not inside a Serve replica: leave logging as the host configured it
        return
    project.setLevel(level)
    for handler in serve_handlers:
        if handler not in project.handlers:
            project.addHandler(handler)
    project.propagate = False  # no second copy through the root logger
