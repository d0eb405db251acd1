"""shared/surfaces/chat: the chat command grammar (pure) and the replies it makes for Slack and Teams."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.domain.targets import TargetKind
from shared.surfaces.chat.commands import (
    Act,
    CommandError,
    Help,
    ListOperations,
    Reimage,
    Status,
    clean_text,
    parse_command,
)
from shared.surfaces.chat.replies import Reply, slack_message, teams_message

SUB = "7f6e5d4c-3b2a-4190-8f7e-6d5c4b3a2910"
BASE = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute"
OP = "op-" + "0123456789abcdef" * 2


@pytest.mark.parametrize(("text", "kind", "instances", "everything", "reason"), [
    ("reimage rg/web-01", TargetKind.VM, None, False, None),
    ("reimage rg/web-01 -- kernel panic loop", TargetKind.VM, None, False, "kernel panic loop"),
    ("reimage rg/workers 0 3", TargetKind.VMSS, ("0", "3"), False, None),
    ("reimage rg/workers all -- bad image", TargetKind.VMSS, None, True, "bad image"),
    ("reimage rg/workers/7", TargetKind.VMSS_INSTANCE, None, False, None),
    (f"Reimage {BASE}/virtualMachineScaleSets/workers 1 2", TargetKind.VMSS, ("1", "2"), False, None),
    (f"reimage {BASE}/virtualMachineScaleSets/workers/virtualMachines/4", TargetKind.VMSS_INSTANCE, None, False,
     None),
    (f"reimage `{BASE}/virtualMachines/web-01`", TargetKind.VM, None, False, None),
])
def test_reimage_targets(text: str, kind: TargetKind, instances: tuple[str, ...] | None, everything: bool,
                         reason: str | None) -> None:
    command = parse_command(text, SUB)
    assert isinstance(command, Reimage)
    assert command.target.kind is kind and command.target.subscription_id == SUB
    assert (command.instance_ids, command.all_instances, command.reason) == (instances, everything, reason)


def test_reimage_builds_the_request_contract() -> None:
    command = parse_command("reimage rg/workers 0 3 -- why", SUB)
    assert isinstance(command, Reimage)
    assert command.request("slack:T1/U1") == {"target": f"{BASE}/virtualMachineScaleSets/workers",
                                              "instanceIds": ["0", "3"], "reason": "why",
                                              "requestedBy": "slack:T1/U1"}
    command = parse_command("reimage rg/workers all", SUB)
    assert isinstance(command, Reimage) and command.request("x")["allInstances"] is True


@pytest.mark.parametrize(("text", "expected"), [
    ("", Help()), ("help", Help()), ("  HELP  ", Help()),
    (f"status {OP}", Status(OP)), (f"status {OP.upper().replace('OP-', 'op-')}", Status(OP)),
    (f"approve {OP}", Act("approve", OP)), (f"reject {OP} -- not now", Act("reject", OP, "not now")),
    (f"cancel {OP} --", Act("cancel", OP)), ("list", ListOperations()),
])
def test_other_commands(text: str, expected: object) -> None:
    assert parse_command(text, SUB) == expected


def test_list_of_two_parts_names_the_vm_and_the_scale_set() -> None:
    command = parse_command("list rg/web-01", SUB)
    assert isinstance(command, ListOperations)
    assert [t.kind for t in command.targets] == [TargetKind.VM, TargetKind.VMSS]
    command = parse_command("list rg/workers/3", SUB)
    assert isinstance(command, ListOperations) and command.targets[0].kind is TargetKind.VMSS_INSTANCE


@pytest.mark.parametrize(("text", "says"), [
    ("reimage", "needs a target"), (f"reimage {BASE}/virtualMachineScaleSets/workers", "needs instance ids"),
    ("reimage rg/web-01/x", "instance id"), ("reimage rg/workers 01", "not an instance id"),
    ("reimage rg/workers 1 1", "twice"), ("reimage rg/workers/2 3", "instance ids go after a scale set"),
    (f"reimage {BASE}/virtualMachines/web-01 3", "names a VM"), ("reimage just-a-name", "not a target"),
    ("reimage /subscriptions/nope", "target"), ("status", "one operation id"), ("status op-123", "not an operation"),
    ("approve", "one operation id"), (f"status {OP} -- why", "no reason"), ("list a b", "at most one"),
    ("dance", "unknown command"), ("reimage rg/vm -- " + "x" * 300, "longer than 256"), ("x" * 5000, "longer"),
])
def test_refusals_say_why(text: str, says: str) -> None:
    with pytest.raises(CommandError, match=says):
        parse_command(text, SUB)


def test_short_targets_need_a_default_subscription() -> None:
    with pytest.raises(CommandError, match="DEFAULT_SUBSCRIPTION_ID"):
        parse_command("reimage rg/web-01", None)
    assert isinstance(parse_command(f"reimage {BASE}/virtualMachines/web-01", None), Reimage)


def test_clean_text_removes_mentions_and_markup() -> None:
    assert clean_text("<at>reimager</at>&nbsp;reimage rg/vm\n") == "reimage rg/vm"
    assert clean_text("reimage rg/vm -- a &amp; b") == "reimage rg/vm -- a & b"


words = st.sampled_from(["reimage", "status", "list", "approve", "reject", "cancel", "help", "--", "all", "rg/vm",
                         "rg/ss/3", "rg/ss", "0", "07", OP, f"{BASE}/virtualMachines/v", "/", "`", "<at>x</at>"])


texts = st.lists(words | st.text(max_size=20), max_size=8).map(" ".join) | st.text(max_size=300)


@settings(max_examples=600, deadline=None)
@given(text=texts, sub=st.sampled_from([SUB, None]))
def test_parsing_never_raises_anything_but_a_command_error(text: str, sub: str | None) -> None:
    try:
        command = parse_command(clean_text(text), sub)
    except CommandError as exc:
        assert str(exc)
        return
    assert isinstance(command, Reimage | Status | ListOperations | Act | Help)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=4000), public=st.booleans())
def test_replies_are_always_well_formed(text: str, public: bool) -> None:
    slack = slack_message(Reply(text or "x", public))
    assert slack["response_type"] in ("ephemeral", "in_channel") and len(slack["text"]) <= 3000
    assert all(0 < len(b["text"]["text"]) <= 3000 for b in slack["blocks"]) and len(slack["blocks"]) <= 50
    assert "<" not in slack["text"] and "<" not in teams_message(Reply(text)).get("text", "")
    json.dumps(slack)
