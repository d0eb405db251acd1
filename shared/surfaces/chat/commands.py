"""Chat commands: the grammar (pure parsing into typed commands) and the replies, for Slack and Teams alike.

    reimage <target> [instance …] [-- reason]
    status <operationId>
    list [target]
    approve <operationId> [-- reason]
    reject <operationId> [-- reason]
    cancel <operationId> [-- reason]
    help

`<target>` is a full ARM id, or a short form under DEFAULT_SUBSCRIPTION_ID:
- `rg/name` with no instances: the VM `name`;
- `rg/name 0 3` (instances after it): instances 0 and 3 of the scale set `name`;
- `rg/name all`: every instance of the scale set `name` (allInstances; needs approval);
- `rg/name/7`: instance 7 of the scale set `name`.
Two parts cannot tell a VM from a scale set by themselves; instance ids after the target say
"scale set", none says "VM". A full ARM id is never ambiguous.

Parsing never raises anything but `CommandError`, whose message is fit to show the user.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Any, Literal

from shared.domain.targets import (
    INSTANCE_ID_RULE,
    Target,
    TargetError,
    TargetKind,
    build_target,
    parse_target,
    valid_instance_id,
)

MAX_TEXT = 4000  # a chat message longer than this is not a command
MAX_REASON = 256  # as `reason` in the request contract
_OPERATION_ID = re.compile(r"op-[0-9a-f]{32}")
_REASON_SPLIT = re.compile(r"(?:^|\s)--(?:\s|$)")
_MENTION = re.compile(r"<at>.*?</at>", re.S | re.I)
_TAG = re.compile(r"<[^>]{0,200}>")

USAGE = """Commands:
• `reimage <target> [instance …] [-- reason]` — target: an ARM id, `rg/vm`, `rg/vmss <instance …>`, \
`rg/vmss all` or `rg/vmss/<instance>`
• `status <operationId>`
• `list [target]` — the latest operations, newest first
• `approve <operationId> [-- reason]`
• `reject <operationId> [-- reason]`
• `cancel <operationId> [-- reason]`
• `help`"""


class CommandError(ValueError):
    """The text is not a command. The message says why, for the user."""


@dataclass(frozen=True)
class Reimage:
    target: Target
    instance_ids: tuple[str, ...] | None = None
    all_instances: bool = False
    reason: str | None = None

    def request(self, requested_by: str) -> dict[str, Any]:
        """The request contract's JSON for this command (it goes through the same intake as POST /api/reimage)."""
        body: dict[str, Any] = {"target": self.target.id, "requestedBy": requested_by[:256]}
        if self.instance_ids is not None:
            body["instanceIds"] = list(self.instance_ids)
        if self.all_instances:
            body["allInstances"] = True
        if self.reason:
            body["reason"] = self.reason
        return body


@dataclass(frozen=True)
class Status:
    operation_id: str


@dataclass(frozen=True)
class ListOperations:
    """The latest operations; on `targets` only when given (`rg/name` alone names both the VM and the scale set
    of that name: both are listed)."""

    targets: tuple[Target, ...] = ()


@dataclass(frozen=True)
class Act:
    """approve / reject / cancel: carried out by the operator actions (shared.workflow.operators)."""

    action: Literal["approve", "reject", "cancel"]
    operation_id: str
    reason: str | None = None


@dataclass(frozen=True)
class Help:
    pass


Command = Reimage | Status | ListOperations | Act | Help


def clean_text(text: str) -> str:
    """A chat message as plain command text: Teams' `<at>bot</at>` mention, HTML tags and entities, and
    non-breaking spaces removed."""
    text = _MENTION.sub(" ", text)
    text = html.unescape(_TAG.sub(" ", text))
    return " ".join(text.replace("\u00a0", " ").split())


def _operation_id(words: list[str], verb: str) -> str:
    if len(words) != 1:
        raise CommandError(f"`{verb}` takes one operation id, for example `{verb} op-3f1c0a9e5b7d4c2e8f6a1b3c5d7e9f01`")
    value = words[0].strip("`").lower()
    if not _OPERATION_ID.fullmatch(value):
        raise CommandError(f"`{_shown(words[0])}` is not an operation id (op- and 32 hexadecimal digits)")
    return value


def _shown(text: str, limit: int = 80) -> str:
    text = text.replace("`", "'")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _short_target(text: str, default_subscription_id: str | None, scale_set: bool) -> Target:
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise CommandError(f"`{_shown(text)}` is not a target: give an ARM id, `rg/vm`, `rg/vmss <instance …>` or "
                           "`rg/vmss/<instance>`")
    if default_subscription_id is None:
        raise CommandError("short targets (`rg/vm`) need DEFAULT_SUBSCRIPTION_ID to be set; give the full ARM id")
    group, name = parts[0], parts[1]
    if len(parts) == 3:
        return build_target(default_subscription_id, group, vm_scale_set_name=name, instance_id=parts[2])
    if scale_set:
        return build_target(default_subscription_id, group, vm_scale_set_name=name)
    return build_target(default_subscription_id, group, vm_name=name)


def _list_targets(text: str, default_subscription_id: str | None) -> tuple[Target, ...]:
    try:
        if text.startswith("/"):
            return (parse_target(text),)
        if text.count("/") == 1:
            return (_short_target(text, default_subscription_id, scale_set=False),
                    _short_target(text, default_subscription_id, scale_set=True))
        return (_short_target(text, default_subscription_id, scale_set=True),)
    except TargetError as exc:
        raise CommandError(f"`{_shown(text)}`: {exc}") from None


def _reimage(words: list[str], reason: str | None, default_subscription_id: str | None) -> Reimage:
    if not words:
        raise CommandError("`reimage` needs a target, for example `reimage my-rg/my-vm -- stuck after patching`")
    target_text, rest = words[0].strip("`"), words[1:]
    everything = [w.lower() for w in rest] == ["all"]
    if not everything:
        for word in rest:
            if not valid_instance_id(word):
                raise CommandError(f"`{_shown(word)}` is not an instance id: {INSTANCE_ID_RULE}")
        if len(set(rest)) != len(rest):
            raise CommandError("an instance id is given twice")
    try:
        if target_text.startswith("/"):
            target = parse_target(target_text)
        else:
            target = _short_target(target_text, default_subscription_id, scale_set=bool(rest))
    except TargetError as exc:
        raise CommandError(f"`{_shown(target_text)}`: {exc}") from None
    if rest and target.kind is not TargetKind.VMSS:
        what = "a VM" if target.kind is TargetKind.VM else "one scale set instance"
        raise CommandError(f"instance ids go after a scale set; `{_shown(target_text)}` names {what}")
    if target.kind is TargetKind.VMSS and not rest:
        raise CommandError("a scale set needs instance ids (`rg/vmss 0 3`) or `all` for every instance")
    if everything:
        return Reimage(target, None, True, reason)
    return Reimage(target, tuple(rest) if rest else None, False, reason)


def parse_command(text: str, default_subscription_id: str | None = None) -> Command:
    """The command in a chat message (already cleaned of mentions). Empty text asks for help."""
    if not isinstance(text, str):
        raise CommandError("the command must be text")
    if len(text) > MAX_TEXT:
        raise CommandError(f"the message is longer than {MAX_TEXT} characters")
    pieces = _REASON_SPLIT.split(text, maxsplit=1)
    head = pieces[0]
    reason = " ".join(pieces[1].split()) if len(pieces) > 1 else None
    if reason is not None and len(reason) > MAX_REASON:
        raise CommandError(f"the reason is longer than {MAX_REASON} characters")
    words = head.split()
    if not words:
        return Help()
    verb, args = words[0].lower().lstrip("/"), words[1:]
    if verb == "help":
        return Help()
    if verb == "reimage":
        return _reimage(args, reason or None, default_subscription_id)
    if reason is not None and verb in ("status", "list"):
        raise CommandError(f"`{verb}` takes no reason")
    if verb == "status":
        return Status(_operation_id(args, verb))
    if verb == "list":
        if len(args) > 1:
            raise CommandError("`list` takes at most one target")
        return ListOperations(_list_targets(args[0].strip("`"), default_subscription_id) if args else ())
    if verb in ("approve", "reject", "cancel"):
        return Act(verb, _operation_id(args, verb), reason or None)  # type: ignore[arg-type]
    raise CommandError(f"unknown command `{_shown(verb, 30)}`")
