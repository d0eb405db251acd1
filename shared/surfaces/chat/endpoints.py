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
import importlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import parse_qs

from shared import runtime
from shared.domain.errors import ReimagerError
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
from shared.surfaces.http import Outcome, answer, submit_request
from shared.surfaces.json_body import MAX_BODY_BYTES, parse_json
from shared.workflow.history import Query, list_page

log = logging.getLogger("reimager.chatops")
SLACK_DEADLINE_SECONDS = 2.5  # Slack: 3 s ("within 3000 ms")
TEAMS_DEADLINE_SECONDS = 4.5  # Teams: 5 s
LIST_TOP = 10
_background: set[asyncio.Task[Any]] = set()  # reimages still running after a reply was sent


class OperatorActions(Protocol):
    """approve / reject / cancel. Each answers like the HTTP route would (an Outcome with a status document or
    an ARM-shaped error)."""

    async def cancel(self, operation_id: str, principal: Principal, reason: str | None) -> Outcome: ...

    async def approve(self, operation_id: str, principal: Principal, reason: str | None) -> Outcome: ...

    async def reject(self, operation_id: str, principal: Principal, reason: str | None) -> Outcome: ...


@dataclass
class ModuleActions:
    """Production wiring: `shared.operator_actions.{cancel,approve,reject}(operation_id, principal, reason,
    client)`, imported when first used."""

    client: Any
    module: str = "shared.operator_actions"

    async def _call(self, name: str, operation_id: str, principal: Principal, reason: str | None) -> Outcome:
        try:
            actions = importlib.import_module(self.module)
        except ModuleNotFoundError as exc:
            if exc.name != self.module:
                raise
            return Outcome(501, {"error": {"code": "NotAvailable", "message": f"`{name}` is not available in this "
                                           "version of reimager."}})
        result: Outcome = await getattr(actions, name)(operation_id, principal, reason, self.client)
        return result

    async def cancel(self, operation_id: str, principal: Principal, reason: str | None) -> Outcome:
        return await self._call("cancel", operation_id, principal, reason)

    async def approve(self, operation_id: str, principal: Principal, reason: str | None) -> Outcome:
        return await self._call("approve", operation_id, principal, reason)

    async def reject(self, operation_id: str, principal: Principal, reason: str | None) -> Outcome:
        return await self._call("reject", operation_id, principal, reason)


def _unauthorized(exc: SignatureError, platform: str) -> Outcome:
    log.warning("refused a %s request: %s", platform, exc)
    return Outcome(401, {"error": {"code": "SignatureInvalid", "message": f"The request is not signed by {platform}: "
                                   f"{exc}."}})


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


def outcome_reply(outcome: Outcome, done: str) -> Reply:
    """An HTTP-style Outcome as a chat reply: a status document is described; an error is said plainly."""
    if outcome.status >= 400:
        return Reply(_error_text(outcome.body))
    if "operationId" in outcome.body:
        return Reply(f"{done}: {describe(outcome.body)}", public=True)
    return Reply(done, public=True)


async def _reimage(command: Reimage, principal: Principal, client: Any, key: str | None, base_url: str,
                   deadline: float) -> Reply:
    async def submit() -> Outcome:
        try:
            result = await submit_request(command.request(principal.name), client, trigger="chatops",
                                          default_key=key, principal=principal)
        except ReimagerError as exc:
            return Outcome.from_error(exc)
        return answer(result, base_url)

    task = asyncio.ensure_future(submit())
    try:
        outcome = await asyncio.wait_for(asyncio.shield(task), deadline)
    except TimeoutError:
        _background.add(task)
        task.add_done_callback(_settled)
        shown = f" `{operation_id(key)}`" if key else ""
        return Reply(f"Still submitting{shown}; ask `status{shown}` in a moment.", public=True)
    # A command delivered twice (same trigger_id / activity id) answers with the operation it already made.
    return outcome_reply(outcome, "Already requested" if outcome.body.get("duplicate") else "Reimage requested")


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
    act: Callable[..., Any] = getattr(actions, command.action)
    outcome: Outcome = await act(command.operation_id, principal, command.reason)
    done = {"approve": "Approved", "reject": "Rejected", "cancel": "Canceled"}[command.action]
    return outcome_reply(outcome, done)


async def handle(text: str, principal: Principal, *, client: Any, actions: OperatorActions | None,
                 idempotency_key: str | None, base_url: str, deadline: float) -> Reply:
    """Parse and run; whatever goes wrong after the signature check becomes a reply, never a 500."""
    try:
        command = parse_command(text, runtime.get().settings.default_subscription_id)
        return await run(command, principal, client=client, actions=actions or ModuleActions(client),
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
        raise ReimagerError(400, "InvalidRequest", "The body is not a form-encoded slash command.") from None
    return {k: v[0] for k, v in fields.items()}


async def post_slack(body: bytes, headers: Mapping[str, str], client: Any, base_url: str,
                     actions: OperatorActions | None = None) -> Outcome:
    """A Slack slash command (application/x-www-form-urlencoded)."""
    rt = runtime.get()
    secret = rt.settings.slack_signing_secret
    if len(body) > MAX_BODY_BYTES:
        return Outcome(413, {"error": {"code": "PayloadTooLarge", "message": "The body is too large."}})
    try:
        verify_slack(secret.get_secret_value() if secret else None, headers, body, rt.now().timestamp())
    except SignatureError as exc:
        return _unauthorized(exc, "Slack")
    try:
        form = _form(body)
    except ReimagerError as exc:
        return Outcome.from_error(exc)
    user, team = form.get("user_id", "").strip(), form.get("team_id", "").strip()
    if not user:
        return Outcome(200, slack_message(Reply("The command carries no user_id; nothing was done.")))
    principal = Principal(f"slack:{team}/{user}" if team else f"slack:{user}", "slack")
    trigger_id = form.get("trigger_id", "").strip()
    reply = await handle(clean_text(form.get("text", "")), principal, client=client, actions=actions,
                         idempotency_key=f"slack:{trigger_id}"[:128] if trigger_id else None, base_url=base_url,
                         deadline=SLACK_DEADLINE_SECONDS)
    return Outcome(200, slack_message(reply))


async def post_teams(body: bytes, headers: Mapping[str, str], client: Any, base_url: str,
                     actions: OperatorActions | None = None) -> Outcome:
    """A Teams outgoing webhook (a Bot Framework message activity, JSON)."""
    rt = runtime.get()
    secret = rt.settings.teams_webhook_secret
    if len(body) > MAX_BODY_BYTES:
        return Outcome(413, {"error": {"code": "PayloadTooLarge", "message": "The body is too large."}})
    try:
        verify_teams(secret.get_secret_value() if secret else None, headers, body)
    except (SignatureError, ValueError) as exc:
        return _unauthorized(SignatureError(str(exc)), "Teams")
    try:
        activity = parse_json(body)
    except ReimagerError as exc:
        return Outcome.from_error(exc)
    if not isinstance(activity, dict):
        return Outcome(400, {"error": {"code": "InvalidRequest", "message": "The body is not an activity."}})
    try:
        check_fresh(activity.get("timestamp"), _aware(rt.now()))
    except SignatureError as exc:
        return _unauthorized(exc, "Teams")
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


def _aware(now: datetime) -> datetime:
    return now if now.tzinfo else now.replace(tzinfo=UTC)
