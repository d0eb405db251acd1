"""Exit codes: 0 only when it all worked (for a reimage that was waited for: Succeeded and Healthy), and one
code for each other ending, so a script can tell them apart (docs/cli.md)."""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class Exit(IntEnum):
    OK = 0
    FAILED = 1  # the operation ended Failed (ARM's code is in the last line)
    USAGE = 2  # a mistake on the command line, or no API to talk to
    CANCELED = 3  # the operation ended Canceled (rejected, canceled, expired in the queue...)
    TIMED_OUT = 4  # the operation ended TimedOut (ARM may still finish it)
    NOT_HEALTHY = 5  # Succeeded, but the machines' health is Unhealthy or Unknown (or was not checked)
    REFUSED = 6  # the API answered with an error (4xx/5xx), or a dry run failed a check
    UNREACHABLE = 7  # no answer from the API, an answer that is not the API's, or no token
    INTERRUPTED = 130  # Ctrl-C while watching: the operation goes on


TERMINAL = ("Succeeded", "Failed", "Canceled", "TimedOut")


def ending(operation: dict[str, Any]) -> Exit:
    """The exit code for an operation that ended (OK for one that has not: nothing went wrong yet)."""
    status = operation.get("status")
    if status == "Succeeded":
        return Exit.OK if operation.get("health") == "Healthy" else Exit.NOT_HEALTHY
    return {"Failed": Exit.FAILED, "Canceled": Exit.CANCELED, "TimedOut": Exit.TIMED_OUT}.get(str(status), Exit.OK)
