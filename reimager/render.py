"""What a person sees: operations, the live timeline of a watched operation, a dry run's checklist, the
history table and a target's state, with rich. Text from the server is always `Text`, never markup."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from reimager.client import error_line
from reimager.exits import TERMINAL
from reimager.names import short_target as short

STYLE = {"Succeeded": "bold green", "Failed": "bold red", "TimedOut": "bold red", "Canceled": "bold yellow",
         "AwaitingApproval": "bold magenta", "Queued": "cyan", "Accepted": "cyan", "Running": "blue",
         "Verifying": "blue", "Healthy": "green", "Unhealthy": "red", "Unknown": "yellow",
         "passed": "green", "failed": "bold red", "skipped": "yellow"}
MARK = {"passed": "✓", "failed": "✗", "skipped": "-"}


def styled(value: object) -> Text:
    text = "-" if value in (None, "") else str(value)
    return Text(text, style=STYLE.get(text, ""))


def when(stamp: str | None) -> str:
    """An ISO time as `2026-12-07 00:44:44Z` (the API's times are UTC)."""
    if not stamp:
        return "-"
    try:
        return datetime.fromisoformat(stamp).strftime("%Y-%m-%d %H:%M:%SZ")
    except ValueError:
        return stamp


def instances(doc: Mapping[str, Any]) -> str:
    ids = doc.get("instanceIds") or []
    return ",".join(ids[:8]) + (f",... ({len(ids)})" if len(ids) > 8 else "") if ids else "-"


def failure(doc: Mapping[str, Any]) -> str | None:
    """An operation's error as one `Code: message` line (ARM's code and message in its details)."""
    error = doc.get("error")
    if not isinstance(error, Mapping):
        return None
    return error_line(str(error.get("code")), str(error.get("message") or ""), list(error.get("details") or []))


def detail(doc: Mapping[str, Any]) -> str:
    """What is going on in this status, in a few words."""
    status, op = doc.get("status"), doc.get("operationId")
    if status == "Queued":
        where = f"position {doc['queuePosition']} in the target's queue" if doc.get("queuePosition") else "queued"
        return f"{where} (a scale set runs one reimage at a time; batches gather first)"
    if status == "AwaitingApproval":
        return f"waiting for a second person: reimager approve {op} (or reject)"
    if status == "Accepted":
        batch = doc.get("batchId")
        return f"sent to ARM in batch {batch}" if batch and batch != op else "sent to ARM"
    if status in ("Running", "Verifying"):
        arm = f", ARM {doc['armStatus']}" if doc.get("armStatus") else ""
        what = "ARM is reimaging" if status == "Running" else "reading instance views until healthy"
        return f"{what}; polls {doc.get('polls', 0)}{arm}"
    if status == "Succeeded":
        return f"health {doc.get('health') or 'not checked'}"
    return failure(doc) or ""


def operation(doc: Mapping[str, Any]) -> RenderableType:
    """One operation's status document as a key/value grid."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    rows: list[tuple[str, object]] = [
        ("operation", doc.get("operationId")), ("status", styled(doc.get("status"))),
        ("target", doc.get("target")), ("instances", instances(doc) if doc.get("instanceIds") else None),
        ("request id", doc.get("requestId")), ("trigger", doc.get("trigger")),
        ("requested by", _by(doc.get("requestedBy"), doc.get("requestedByVerified"))),
        ("approved by", _by(doc.get("approvedBy"), doc.get("approvedByVerified"))),
        ("canceled by", doc.get("cancelledBy")), ("reason", doc.get("reason")),
        ("batch", doc.get("batchId") if doc.get("batchId") != doc.get("operationId") else None),
        ("queue position", doc.get("queuePosition")), ("created", when(doc.get("createdTime"))),
        ("submitted", when(doc.get("submittedAt")) if doc.get("submittedAt") else None),
        ("completed", when(doc.get("completedAt")) if doc.get("completedAt") else None),
        ("polls", doc.get("polls") if doc.get("polls") else None), ("ARM status", doc.get("armStatus")),
        ("health", styled(doc.get("health")) if doc.get("health") else None),
        ("error", failure(doc)),
    ]
    for name, value in rows:
        if value not in (None, ""):
            grid.add_row(name, value if isinstance(value, Text) else Text(str(value)))
    for instance, view in (doc.get("healthDetail") or {}).items():
        grid.add_row(f"  health {instance or 'vm'}", Text(str(view)))
    return grid


def _by(name: object, verified: object) -> str | None:
    return f"{name} ({verified})" if name else None


class Timeline:
    """A watched operation, one row per status it went through (the last row's detail moves with the polls)."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.rows: list[tuple[str, str, str]] = []  # (elapsed, status, detail)
        self.doc: Mapping[str, Any] = {}

    def update(self, doc: Mapping[str, Any], now: float) -> str | None:
        """Take the latest status document; a new status returns its row as a line (for a plain output)."""
        self.doc = doc
        status = str(doc.get("status"))
        row = (f"+{now - self.started:.1f}s".rjust(7), status, detail(doc))
        if self.rows and self.rows[-1][1] == status:
            self.rows[-1] = (self.rows[-1][0], status, row[2])
            return None
        self.rows.append(row)
        return "  ".join(row)

    def head(self) -> Text:
        head = Text.assemble((str(self.doc.get("operationId")), "bold"), "  ", short(self.doc.get("target")))
        if self.doc.get("instanceIds"):
            head.append(f" [{instances(self.doc)}]")
        return head

    def renderable(self, waiting: str | None) -> RenderableType:
        head = self.head()
        table = Table.grid(padding=(0, 2))
        for elapsed, status, text in self.rows:
            table.add_row(Text(elapsed, style="dim"), styled(status), Text(text))
        parts: list[RenderableType] = [head, table]
        if waiting and str(self.doc.get("status")) not in TERMINAL:
            parts.append(Spinner("dots", text=Text(waiting, style="dim")))
        return Group(*parts)


def checklist(dry: Mapping[str, Any]) -> RenderableType:
    """A dry run: each check passed, failed (with the refusal the real request gets) or skipped, then the plan."""
    verdict = ("every check passed: the real request would be sent" if dry.get("passed")
               else "a check failed: the real request would be refused")
    head = Text.assemble(("Dry run ", "bold"), short(dry.get("target")), f": {verdict} (nothing was sent)")
    checks = [c for c in dry.get("checks") or [] if isinstance(c, Mapping)]
    width = max((len(str(c.get("name"))) for c in checks), default=0)
    lines: list[RenderableType] = []
    for check in checks:
        result = str(check.get("result"))
        note = ""
        if result == "failed":
            note = error_line(str(check.get("code")), str(check.get("message") or ""), check.get("details"))
        elif result == "skipped":
            note = str(check.get("reason") or check.get("message") or "")
        facts = {k: v for k, v in check.items() if k not in ("name", "result", "code", "message", "details",
                                                             "reason")}
        if facts:
            note = (note + "  " if note else "") + ", ".join(f"{k}={v}" for k, v in facts.items())
        lines.append(Text.assemble((MARK.get(result, "?"), STYLE.get(result, "")), " ",
                                   str(check.get("name")).ljust(width), " ",
                                   (result.ljust(7) if note else result, STYLE.get(result, "")),
                                   f"  {note}" if note else ""))
    plan = dry.get("plan")
    call: RenderableType
    if isinstance(plan, Mapping):
        query = "&".join(f"{k}={v}" for k, v in (plan.get("query") or {}).items())
        call = Group(Text.assemble(("Planned ARM call ", "bold"), f"({plan.get('operation')}):"),
                     unwrapped(f"  {plan.get('method')} {plan.get('path')}" + (f"?{query}" if query else "")),
                     unwrapped("  body " + json.dumps(plan.get("body"), sort_keys=True) if plan.get("body")
                               else "  (no body)"))
    else:
        call = Text("No planned call: the instances could not be known.")
    return Group(head, *lines, call)


def unwrapped(text: str) -> Text:
    """A line that is never wrapped (an ARM path cut in the middle cannot be pasted)."""
    return Text(text, no_wrap=True, overflow="ignore")


def history(items: Iterable[Mapping[str, Any]]) -> Table:
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    for name in ("created", "operation", "status", "target", "instances", "trigger", "requested by", "outcome"):
        table.add_column(name, overflow="fold", no_wrap=name in ("created", "operation", "status"))
    for doc in items:
        outcome = (f"health {doc['health']}" if doc.get("health") else
                   str((doc.get("error") or {}).get("code") or "-"))
        table.add_row(when(doc.get("createdTime")), Text(str(doc.get("operationId"))), styled(doc.get("status")),
                      Text(short(doc.get("target"))), instances(doc), str(doc.get("trigger") or "-"),
                      Text(str(doc.get("requestedBy") or "-")), Text(outcome))
    return table


def target_state(doc: Mapping[str, Any]) -> RenderableType:
    """What holds a target, what waits for it, and what limits it."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    lease, batch, budget, breaker = (doc.get(k) or {} for k in ("lease", "batch", "budget", "breaker"))
    suspended = doc.get("suspended")
    rows: list[tuple[str, object]] = [
        ("target", doc.get("target")), ("capacity", doc.get("capacity")),
        ("lease", f"{lease.get('owner')} until {when(lease.get('until'))}" if lease else "free"),
        ("batch", f"{batch.get('batchId')} instances {','.join(batch.get('instanceIds') or []) or '-'}"
                  f"{' (sealed)' if batch.get('sealed') else ''}" if batch else "none"),
        ("queue", ", ".join(f"{q.get('position')}. {q.get('operationId')}" for q in doc.get("queue") or [])
         or "empty"),
        ("cooldowns", ", ".join(f"{i}: until {when(c.get('until'))}" for i, c in (doc.get("cooldowns") or {}).items())
         or "none"),
        ("budget", f"{budget.get('used')}/{budget.get('limit')} instances in {budget.get('windowMinutes')} min, "
                   f"batch cap {budget.get('batchCap')}" if budget else None),
        ("breaker", f"{breaker.get('consecutiveFailures')}/{breaker.get('breakerFailures')} failures in a row, "
                    f"{breaker.get('distinctInstancesRequested')} instances asked for (trips at "
                    f"{breaker.get('breakerPercent')}%)" if breaker else None),
        ("suspended", styled("SUSPENDED") if suspended and not suspended.get("resumedAt") else "no"),
    ]
    for name, value in rows:
        if value is not None:
            grid.add_row(name, value if isinstance(value, Text) else Text(str(value)))
    if suspended:
        for key, value in suspended.items():
            grid.add_row(f"  {key}", Text(json.dumps(value) if isinstance(value, dict | list) else str(value)))
    return grid
