"""`python -m devhost --demo`: a scripted scenario against a devhost it starts itself.

HTTP, alert and queue reimages, a dry run, an injected Failed operation, a policy refusal and a signed
Slack command.
Exits 0 only when every expected outcome arrived in time.

A state dir may hold earlier runs (events.jsonl is appended to, never cleared), so every run is a `Run`
of its own: each idempotency key it sends carries the run's id (new operation ids), and it reads only the
events published after it started.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from devhost.compute import Fault
from devhost.host import DEMO_GROUP, DEMO_SUBSCRIPTION, DevHost

BASE = f"/subscriptions/{DEMO_SUBSCRIPTION}/resourceGroups/{DEMO_GROUP}/providers/Microsoft.Compute"
SAMPLE = Path(__file__).parent / "samples/activity-log-alert.json"


@dataclass(frozen=True)
class Run:
    """One demo run: `id` goes into every key it sends (and its ledger tables' prefix); `first_event` is
    the number of events the state dir held before it started, which are not its own."""

    id: str
    first_event: int = 0

    @classmethod
    def begin(cls, state_dir: Path) -> Run:
        events = state_dir / "events.jsonl"
        count = sum(1 for line in events.read_text().splitlines() if line.strip()) if events.exists() else 0
        return cls(time.strftime("%m%d%H%M%S") + secrets.token_hex(2), count)

    def key(self, name: str) -> str:
        """An idempotency key (requestId, MessageId, alertId, Slack trigger_id) of this run only."""
        return f"demo-{self.id}-{name}"

    def events(self, host: DevHost, event_type: str | None = None) -> list[dict[str, Any]]:
        return [e for e in host.events()[self.first_event:] if event_type is None or e["type"] == event_type]


@dataclass
class Step:
    name: str
    trigger: str
    target: str
    expected: str
    operation_id: str | None = None
    status: str = "-"
    polls: int | None = None
    duration: float | None = None
    note: str = ""
    request_id: str | None = None
    batch_id: str | None = None
    answer: str = "-"  # the HTTP status the entry surface answered

    @property
    def ok(self) -> bool:
        return self.status == self.expected


async def run_demo(host: DevHost, run: Run, time_limit: float = 60.0) -> tuple[bool, list[Step]]:
    url, key = host.functions_url, {"x-functions-key": host.function_key}
    steps: list[Step] = []
    async with aiohttp.ClientSession(headers=key) as http:

        async def post(path: str, body: Any) -> tuple[int, Any]:
            async with http.post(url + path, json=body) as r:
                return r.status, await r.json()

        # 1. A chatops bot reimages a Linux VM over HTTP; its serial log, instance view and an OS disk snapshot are
        #    kept first (evidence before the wipe).
        vm = Step("HTTP reimage of a VM", "http", f"{BASE}/virtualMachines/web-linux-01", "Succeeded")
        s, body = await post("/api/reimage", {"target": vm.target, "requestedBy": "chatops:alice",
                                              "reason": "demo", "requestId": run.key("http-1"),
                                              "captureEvidence": "snapshot"})
        vm.operation_id, vm.answer = body.get("operationId"), str(s)
        steps.append(vm)

        # 2. An Azure Monitor activity-log alert (the docs' sample) fires on scale set instance 2.
        alert = json.loads(SAMPLE.read_text())
        inst = f"{BASE}/virtualMachineScaleSets/workers/virtualMachines/2"
        alert["data"]["essentials"]["alertTargetIDs"] = [inst.lower()]
        alert["data"]["essentials"]["alertId"] = run.key("alert-1")
        al = Step("alert on an instance", "alert", inst, "Succeeded")
        s, body = await post("/api/alerts", alert)
        accepted = body.get("accepted") or [{}]
        al.operation_id, al.answer = accepted[0].get("operationId"), str(s)
        steps.append(al)

        # 4. A dry run shows the plan and calls nothing.
        dry = Step("dry run (-WhatIf)", "http", f"{BASE}/virtualMachines/app-win-01", "Planned")
        posts_before = len(host.sim.reimage_posts())
        s, body = await post("/api/reimage", {"target": dry.target, "dryRun": True,
                                              "osProfile": {"adminPassword": "Demo-Passw0rd!"}})
        planned = s == 200 and body.get("plan", {}).get("body", {}).get("osProfile", {}).get("adminPassword") == "***"
        dry.status = "Planned" if planned and len(host.sim.reimage_posts()) == posts_before else f"HTTP {s}"
        dry.answer = str(s)
        dry.note = "no ARM POST, password redacted" if dry.ok else json.dumps(body)[:80]
        steps.append(dry)

        # 5. ARM fails an operation (injected): the failure arrives as the completion event.
        fail = Step("ARM fails (injected)", "http", f"{BASE}/virtualMachines/app-win-01", "Failed")
        host.sim.faults.append(Fault(match="app-win-01/reimage", outcome="Failed", code="OperationPreempted",
                                     message="Operation execution has been preempted by a more recent operation."))
        s, body = await post("/api/reimage", {"target": fail.target, "requestId": run.key("fail-1")})
        fail.operation_id, fail.answer = body.get("operationId"), str(s)
        steps.append(fail)

        # 6. Policy refuses a protected VM.
        ref = Step("policy refusal", "http", f"{BASE}/virtualMachines/db-linux-01", "TargetProtected")
        s, body = await post("/api/reimage", {"target": ref.target})
        ref.status = body.get("error", {}).get("code", f"HTTP {s}")
        ref.answer = str(s)
        steps.append(ref)

        deadline = time.monotonic() + time_limit
        await wait_for(host, run, steps, deadline)
        # 3. Then (the scale set is free again) another service drops a message on the queue, asking for a reply.
        q = Step("queue msg + ReplyTo", "queue", f"{BASE}/virtualMachineScaleSets/workers", "Succeeded",
                 request_id=run.key("msg-1"))
        await post("/devhost/servicebus/queues", {"name": "patcher-replies"})  # a ReplyTo must name a real queue
        s, body = await post("/admin/functions/reimage_queue", {
            "input": json.dumps({"target": q.target, "instanceIds": ["0", "1"], "requestedBy": "svc:patcher"}),
            "messageId": q.request_id, "correlationId": "patch-run-7", "replyTo": "patcher-replies"})
        q.answer = str(s)  # the admin API's answer: the message was handed to the trigger
        steps.append(q)

        await wait_for(host, run, steps, deadline)

        # 7. Someone asks from Slack what happened to the VM: a slash command signed as Slack signs it.
        steps.append(await slack_list(host, http, run, vm))

        # 8. Alice asks for a whole scale set: it waits for a second person. Bob approves it from Slack
        #    (a signed request: a verified identity), and only then is it sent.
        steps.append(await approval(host, http, run, post))
        await wait_for(host, run, steps, deadline)
    return all(st.ok for st in steps), steps


async def approval(host: DevHost, http: aiohttp.ClientSession, run: Run, post: Any) -> Step:
    target = f"{BASE}/virtualMachineScaleSets/batch"
    host.sim.seed_scale_set(target, 6)
    step = Step("allInstances: approved by bob", "http", target, "Succeeded")
    s, body = await post("/api/reimage", {"target": target, "allInstances": True, "requestedBy": "alice",
                                          "requestId": run.key("approval-1")})
    step.operation_id = body.get("operationId")
    if s != 202 or body.get("status") != "AwaitingApproval":
        step.status, step.note = f"HTTP {s}", json.dumps(body)[:80]
        return step
    waited = any(e["data"]["operationId"] == step.operation_id
                 for e in run.events(host, "reimager.operation.awaiting-approval"))
    status, reply = await slack_command(host, http, f"approve {step.operation_id}", run.key("slack-2"))
    step.note = (f"waited for approval ({'event sent' if waited else 'no event'}); Slack: "
                 f"{reply.get('text', '')[:60]}") if status == 200 else f"Slack HTTP {status}"
    return step


async def slack_command(host: DevHost, http: aiohttp.ClientSession, text: str, trigger_id: str
                        ) -> tuple[int, dict[str, Any]]:
    """A `/reimager` slash command from bob, signed with SLACK_SIGNING_SECRET (v0 HMAC-SHA256)."""
    import hashlib
    import hmac
    from urllib.parse import urlencode

    secret = host.settings.slack_signing_secret if host.settings else None
    if secret is None:
        return 0, {"text": "SLACK_SIGNING_SECRET not set"}
    body = urlencode({"team_id": "T0DEMO", "user_id": "U0BOB", "user_name": "bob", "command": "/reimager",
                      "text": text, "trigger_id": trigger_id}).encode()
    ts = str(int(host.clock.now()))
    signature = "v0=" + hmac.new(secret.get_secret_value().encode(), f"v0:{ts}:".encode() + body,
                                 hashlib.sha256).hexdigest()
    async with http.post(host.functions_url + "/api/chatops/slack", data=body, headers={
            "X-Slack-Request-Timestamp": ts, "X-Slack-Signature": signature,
            "Content-Type": "application/x-www-form-urlencoded"}) as r:
        reply: dict[str, Any] = await r.json()
        return r.status, reply


async def slack_list(host: DevHost, http: aiohttp.ClientSession, run: Run, vm: Step) -> Step:
    """`/reimager list reimager-demo/web-linux-01`, signed as Slack signs it."""
    step = Step("Slack /reimager list", "chatops", vm.target, "Replied")
    status, reply = await slack_command(host, http, f"list {DEMO_GROUP}/web-linux-01", run.key("slack-1"))
    if status == 0:
        step.status, step.note = "skipped", reply["text"]
        return step
    listed = status == 200 and bool(vm.operation_id) and str(vm.operation_id) in reply.get("text", "")
    step.status = "Replied" if listed else f"HTTP {status}"
    step.note = f"{reply.get('response_type')}: lists {vm.operation_id}" if listed else json.dumps(reply)[:80]
    return step


async def wait_for(host: DevHost, run: Run, steps: list[Step], deadline: float) -> None:
    """Fill in each awaited step from its completion event of this run (once), until all arrived or time is up."""
    while time.monotonic() < deadline:
        pending = [st for st in steps if st.expected in ("Succeeded", "Failed") and st.status == "-"]
        for e in run.events(host, "reimager.operation.completed"):
            d = e["data"]
            for st in pending:
                if d["operationId"] == st.operation_id or (st.request_id and d["requestId"] == st.request_id):
                    st.operation_id = d["operationId"]
                    st.status, st.polls, st.duration = d["status"], d["polls"], d["durationSeconds"]
                    st.batch_id = d.get("batchId")
                    if d.get("error"):
                        st.note = f"ARM error {d['error']['code']}"
                    if d.get("evidence"):
                        st.note = "; ".join(filter(None, [st.note, evidence_note(d["evidence"])]))
                    broker = host.broker
                    replies = [m.entity for m in broker.replies() if m.message_id == e["id"]] if broker else []
                    if replies:
                        st.note = f"completion event also sent to the ReplyTo queue {replies[0]}"
        if all(st.status != "-" for st in steps if st.expected in ("Succeeded", "Failed")):
            return
        await asyncio.sleep(0.25)


def evidence_note(evidence: dict[str, Any]) -> str:
    """What was kept before the wipe, with its links (the first instance's; the event has every one)."""
    instances = evidence.get("instances", {})
    parts = []
    for key, items in list(instances.items())[:1]:
        for what, item in items.items():
            label = {"serialLog": "serial log", "instanceView": "instance view", "snapshot": "snapshot"}[what]
            if item.get("status") == "captured":
                where = str(item.get("url", ""))
                where = where.split("/providers/Microsoft.Compute/")[-1] if what == "snapshot" else where
                size = f" ({item['bytes']} bytes)" if "bytes" in item else ""
                parts.append(f"{label}{f' of {key}' if key else ''} {where}{size}")
            else:
                parts.append(f"{label} {item.get('status')}: {item.get('reason', '')}")
    more = f" (and {len(instances) - 1} more instances)" if len(instances) > 1 else ""
    return f"evidence {evidence.get('status')}: " + ", ".join(parts) + more


WIDTH = 100  # the table fits a 100-column terminal


def short_target(target: str) -> str:
    """`workers/2` for a scale-set instance, `web-linux-01` for a VM: the resource group is the demo's."""
    parts = target.split("/providers/Microsoft.Compute/")[-1].split("/")
    return "/".join(parts[1::2])


def short_id(value: str | None, keep: int = 11) -> str:
    """Ids are long hashes; their first characters find them in the events and the ledger."""
    return "-" if not value else value[:keep]


def render(headers: tuple[str, ...], rows: Sequence[tuple[str, ...]], width: int = WIDTH) -> str:
    """A plain-text table that fits `width`: the widest columns are cut (marked ~) until it does.
    Any scenario (the storm too) can use it."""
    widths = [max(len(r[i]) for r in (headers, *rows)) for i in range(len(headers))]
    while sum(widths) + 2 * (len(widths) - 1) > width:
        widest = max(range(len(widths)), key=lambda i: (widths[i] - len(headers[i]), i))
        if widths[widest] <= len(headers[widest]):
            break  # the headers alone do not fit: nothing sensible left to cut
        widths[widest] -= 1

    def line(cells: tuple[str, ...]) -> str:
        cut = [c if len(c) <= w else c[: w - 1] + "~" for c, w in zip(cells, widths, strict=True)]
        return "  ".join(c.ljust(w) for c, w in zip(cut, widths, strict=True)).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def table(steps: list[Step], width: int = WIDTH) -> str:
    """The steps as a table, then each step's note on a line of its own (notes are long, the table is not)."""
    import textwrap

    headers = ("step", "answer", "target", "operation", "batch", "status", "polls", "time")
    rows = [(st.name, st.answer, short_target(st.target), short_id(st.operation_id), short_id(st.batch_id, 8),
             st.status if st.ok else f"{st.status} (expected {st.expected})",
             "-" if st.polls is None else str(st.polls),
             "-" if st.duration is None else f"{st.duration:.1f}s") for st in steps]
    notes = [textwrap.fill(f"{st.name}: {st.note}", width, subsequent_indent="    ", break_on_hyphens=False)
             for st in steps if st.note]
    return render(headers, rows, width) + ("\n\n" + "\n".join(notes) if notes else "")


def where_to_look(host: DevHost, width: int = WIDTH) -> str:
    """The closing lines: where this run's events and ledger are, and how to read them again."""
    import textwrap

    settings = host.settings
    prefix = settings.ledger_table_prefix if settings is not None else "reimager"
    lines = [
        f"events: {host.events_file} (CloudEvents, one JSON line each; appended, never cleared)",
        f"ledger: Azurite Table Storage in {host.state_dir / 'azurite'}, tables {prefix}ops (one row per "
        f"operation), {prefix}targets (leases, cooldowns), {prefix}index",
        f"read them again: python -m devhost --state-dir {host.state_dir} --settings LEDGER_TABLE_PREFIX={prefix}, "
        "then GET /api/reimage/<operation> or GET /devhost/events",
        "evidence: Azurite's blob container reimager-evidence (each completion event's evidence links its blobs); "
        "snapshots: GET /devhost/compute/snapshots",
    ]
    return "\n".join(textwrap.fill(line, width, subsequent_indent="    ", break_long_words=False,
                                   break_on_hyphens=False) for line in lines)
