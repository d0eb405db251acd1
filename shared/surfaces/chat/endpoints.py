"""POST /api/chatops/slack and POST /api/chatops/teams: verify the signature, parse the command, run it, reply.

Nothing runs before the signature holds: a missing, wrong or stale one is a 401 with no ledger read and no
ARM call. After that every answer is a 200 in the platform's own format (Slack shows a non-200 as a bare
failure, with no text), errors included. `reimage` goes through the same intake as POST /api/reimage
(trigger `chatops`, requestedBy the verified chat user); approve/reject/cancel go to the operator actions.
Slack wants an answer within 3 s and Teams within 5 s: a reimage still running at the deadline keeps
running, and the reply names the operation so `status` can follow it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import parse_qs

from shared import runtime
from shared.domain.errors import ErrorCode, ReimagerError
from shared.domain.ids import operation_id
from shared.domain.principal import Principal
from shared.surfaces.chat.commands import (
    USAGE,
    Command,
    CommandError,
    Help,
    ListOperations,
    Reimage,
    Status,
    clean_text,
    parse_command,
)
from shared.surfaces.chat.replies import Reply, describe, slack_message, teams_message
from shared.surfaces.chat.signatures import SignatureError, check_fresh, verify_slack, verify_teams
from shared.surfaces.http import Outcome, answer, guarded
from shared.surfaces.json_body import MAX_BODY_BYTES, parse_json
from shared.surfaces.requests import submit_request
from shared.workflow import operators
from shared.workflow.history import Query, list_page
from shared.workflow.operators import Acted

log = logging.getLogger("reimager.chatops")
SLACK_DEADLINE_SECONDS = 2.5  # Slack: 3 s ("within 3000 ms")
TEAMS_DEADLINE_SECONDS = 4.5  # Teams: 5 s
LIST_TOP = 10
_background: set[asyncio.Task[Any]] = set()  # reimages still running after a reply was sent


class OperatorActions(Protocol):
    """approve / reject / cancel for a verified chat user (the seam tests record calls through)."""

    async def cancel(self, operation_id: str, principal: Principal, reason: str | None) -> Acted: ...

    async def approve(self, operation_id: str, principal: Principal, reason: str | None) -> Acted: ...

    async def reject(self, operation_id: str, principal: Principal, reason: str | None) -> Acted: ...


@dataclass
class WorkflowActions:
    """Production wiring: the operator use cases (shared/workflow/operators.py), as HTTP calls them."""

    client: Any

    async def cancel(self, operation_id: str, principal: Principal, reason: str | None) -> Acted:
        return await operators.cancel(runtime.get(), operation_id, principal, reason)

    async def approve(self, operation_id: str, principal: Principal, reason: str | None) -> Acted:
        return await operators.approve(runtime.get(), self.client, operation_id, principal, reason)

    async def reject(self, operation_id: str, principal: Principal, reason: str | None) -> Acted:
        return await operators.reject(runtime.get(), operation_id, principal, reason)


def _unauthorized(exc: SignatureError, platform: str) -> ReimagerError:
    log.warning("refused a %s request: %s", platform, exc)
    return ReimagerError(ErrorCode.SIGNATURE_INVALID, f"The request is not signed by {platform}: {exc}.")


def _error_text(body: dict[str, Any]) -> str:
    found = body.get("error")
    error: dict[str, Any] = found if isinstance(found, dict) else {}
    text = f"{error.get('code', 'Error')}: {error.get('message', '')}"
    for detail in error.get("details") or []:
        if isinstance(detail, dict):
            text += f"\n• {detail.get('target') or ''} {detail.get('message', '')}".rstrip()
    if body.get("operationId"):
        text += f"\n(operation `{body['operationId']}`)"
    return text


def error_reply(exc: ReimagerError) -> Reply:
    """A refusal, said plainly (only the caller sees it)."""
    return Reply(_error_text(exc.body()))


def done_reply(view: dict[str, Any], done: str) -> Reply:
    """An action that happened, with the operation it acted on (the channel sees it)."""
    return Reply(f"{done}: {describe(view)}", public=True)


async def _reimage(command: Reimage, principal: Principal, client: Any, key: str | None, base_url: str,
                   deadline: float) -> Reply:
    async def submit() -> Reply:
        try:
            result = await submit_request(command.request(principal.name), client, trigger="chatops",
                                          default_key=key, principal=principal)
        except ReimagerError as exc:
            return error_reply(exc)
        body = answer(result, base_url).body
        # A command delivered twice (same trigger_id / activity id) answers with the operation it already made.
        return done_reply(body, "Already requested" if body.get("duplicate") else "Reimage requested")

    task = asyncio.ensure_future(submit())
    try:
        return await asyncio.wait_for(asyncio.shield(task), deadline)
    except TimeoutError:
        _background.add(task)
        task.add_done_callback(_settled)
        shown = f" `{operation_id(key)}`" if key else ""
        return Reply(f"Still submitting{shown}; ask `status{shown}` in a moment.", public=True)


def _settled(task: asyncio.Task[Any]) -> None:
    """A submission that outlived its reply: forget it, and log what it raised (nobody else will see it)."""
    _background.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("a chat reimage failed after its reply was sent", exc_info=task.exception())


async def _list(command: ListOperations) -> Reply:
    views: list[dict[str, Any]] = []
    for target in command.targets or (None,):
        page = await list_page(Query(target=target, top=LIST_TOP))
        views += [r.view() for r in page.items]
    views.sort(key=lambda v: v["createdTime"], reverse=True)
    if not views:
        return Reply("No operations found.")
    return Reply("\n".join(describe(v) for v in views[:LIST_TOP]))


async def run(command: Command, principal: Principal, *, client: Any, actions: OperatorActions,
              idempotency_key: str | None, base_url: str, deadline: float) -> Reply:
    """Carry out one parsed command for a verified principal."""
    if isinstance(command, Help):
        return Reply(USAGE)
    if isinstance(command, Reimage):
        return await _reimage(command, principal, client, idempotency_key, base_url, deadline)
    if isinstance(command, Status):
        record = await runtime.get().ledger.get(command.operation_id)
        return Reply(describe(record.view()) if record else f"No operation `{command.operation_id}`.")
    if isinstance(command, ListOperations):
        return await _list(command)
    act: Callable[[str, Principal, str | None], Awaitable[Acted]] = getattr(actions, command.action)
    try:
        acted = await act(command.operation_id, principal, command.reason)
    except ReimagerError as exc:
        return error_reply(exc)
    done = {"approve": "Approved", "reject": "Rejected", "cancel": "Canceled"}[command.action]
    return done_reply(acted.record.view(), done)


async def handle(text: str, principal: Principal, *, client: Any, actions: OperatorActions | None,
                 idempotency_key: str | None, base_url: str, deadline: float) -> Reply:
    """Parse and run; whatever goes wrong after the signature check becomes a reply, never a 500."""
    try:
        command = parse_command(text, runtime.get().settings.default_subscription_id)
        return await run(command, principal, client=client, actions=actions or WorkflowActions(client),
                         idempotency_key=idempotency_key, base_url=base_url, deadline=deadline)
    except CommandError as exc:
        return Reply(f"{exc}\n\n{USAGE}")
    except ReimagerError as exc:
        return Reply(_error_text(exc.body()))
    except Exception:
        log.exception("chat command failed")
        return Reply("Something went wrong on reimager's side; the command may not have run. Try `status` or "
                     "`list` before repeating it.")


def _form(body: bytes) -> dict[str, str]:
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=100, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise ReimagerError(ErrorCode.INVALID_REQUEST, "The body is not a form-encoded slash command.") from None
    return {k: v[0] for k, v in fields.items()}


async def post_slack(body: bytes, headers: Mapping[str, str], client: Any, base_url: str,
                     actions: OperatorActions | None = None) -> Outcome:
    """A Slack slash command (application/x-www-form-urlencoded)."""
    async def work() -> Outcome:
        rt = runtime.get()
        secret = rt.settings.slack_signing_secret
        if len(body) > MAX_BODY_BYTES:
            raise ReimagerError(ErrorCode.PAYLOAD_TOO_LARGE, "The body is too large.")
        try:
            verify_slack(secret.get_secret_value() if secret else None, headers, body, rt.now().timestamp())
        except SignatureError as exc:
            raise _unauthorized(exc, "Slack") from None
        form = _form(body)
        user, team = form.get("user_id", "").strip(), form.get("team_id", "").strip()
        if not user:
            return Outcome(200, slack_message(Reply("The command carries no user_id; nothing was done.")))
        principal = Principal(f"slack:{team}/{user}" if team else f"slack:{user}", "slack")
        trigger_id = form.get("trigger_id", "").strip()
        reply = await handle(clean_text(form.get("text", "")), principal, client=client, actions=actions,
                             idempotency_key=f"slack:{trigger_id}"[:128] if trigger_id else None, base_url=base_url,
                             deadline=SLACK_DEADLINE_SECONDS)
        return Outcome(200, slack_message(reply))

    return await guarded(work())


async def post_teams(body: bytes, headers: Mapping[str, str], client: Any, base_url: str,
                     actions: OperatorActions | None = None) -> Outcome:
    """A Teams outgoing webhook (a Bot Framework message activity, JSON)."""
    async def work() -> Outcome:
        rt = runtime.get()
        secret = rt.settings.teams_webhook_secret
        if len(body) > MAX_BODY_BYTES:
            raise ReimagerError(ErrorCode.PAYLOAD_TOO_LARGE, "The body is too large.")
        try:
            verify_teams(secret.get_secret_value() if secret else None, headers, body)
        except (SignatureError, ValueError) as exc:
            raise _unauthorized(SignatureError(str(exc)), "Teams") from None
        activity = parse_json(body)
        if not isinstance(activity, dict):
            raise ReimagerError(ErrorCode.INVALID_REQUEST, "The body is not an activity.")
        try:
            check_fresh(activity.get("timestamp"), _aware(rt.now()))
        except SignatureError as exc:
            raise _unauthorized(exc, "Teams") from None
        found = activity.get("from")
        sender: dict[str, Any] = found if isinstance(found, dict) else {}
        who = sender.get("aadObjectId") or sender.get("id")
        if not isinstance(who, str) or not who.strip():
            return Outcome(200, teams_message(Reply("The message carries no sender; nothing was done.")))
        principal = Principal(f"teams:{who.strip()}"[:256], "teams")
        given = activity.get("text")
        text = given if isinstance(given, str) else ""
        activity_id = activity.get("id")
        key = f"teams:{activity_id}"[:128] if isinstance(activity_id, str) and activity_id else None
        reply = await handle(clean_text(text), principal, client=client, actions=actions, idempotency_key=key,
                             base_url=base_url, deadline=TEAMS_DEADLINE_SECONDS)
        return Outcome(200, teams_message(reply))

    return await guarded(work())


def _aware(now: datetime) -> datetime:
    return now if now.tzinfo else now.replace(tzinfo=UTC)
