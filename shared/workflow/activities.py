"""The durable activities of the reimage monitor: poll, submit a batch, read health, finish.

Each takes the JSON payload the orchestrator sent (shared/workflow/orchestrator.py) and answers JSON.
Activities run at least once; each step is guarded by the ledger (see completion and batches).
"""

from __future__ import annotations

from typing import Any

from shared.domain.arm_call import OperationState
from shared.domain.errors import UntrustedOperationUrl
from shared.domain.records import OperationRecord
from shared.domain.redaction import scrub_poll
from shared.domain.status import OperationStatus
from shared.runtime import Runtime
from shared.workflow import batches, fleet, throttling, verify
from shared.workflow.completion import finish


class TransientReadError(RuntimeError):
    """The status read failed; the orchestrator's retry will try again."""


async def poll_operation(runtime: Runtime, payload: dict[str, Any]) -> dict[str, Any]:
    """One read of the ARM operation's status; the record counts the poll and says Running.

    Not sent while a bucket it draws on runs low (`held`), and a 429 is not a failed read (`throttled`): either
    way the monitor waits `retryAfter` on a timer, then polls again (shared/workflow/throttling.py)."""
    target = payload.get("target")
    if payload.get("mode") == "members":  # a Flexible set's batch: each member's own operation, read at once
        return await fleet.poll(runtime, payload["operationId"], int(payload.get("polls") or 0))
    held = throttling.hold("poll", runtime, target)
    if held is not None:
        return held
    try:
        result = await runtime.compute.poll(payload["url"], payload["mode"], target)
    except UntrustedOperationUrl as exc:
        return {"state": OperationState.FAILED, "untrusted": True, "errorCode": exc.code,
                "errorMessage": exc.error.message}
    if result.read_failed and result.status_code == 429:
        return throttling.throttled("poll", target, result.retry_after)
    if result.read_failed:
        raise TransientReadError(f"operation status read failed: HTTP {result.status_code} {result.error_code or ''}")
    polls, arm_status, now = int(payload.get("polls") or 0), result.state.value, runtime.now()

    def progress(r: OperationRecord) -> OperationRecord | None:
        if r.terminal:
            return None
        r.polls, r.arm_status, r.last_updated_time = max(r.polls, polls), arm_status, now
        r.arm_seconds = result.arm_seconds if result.arm_seconds is not None else r.arm_seconds
        if r.status == OperationStatus.ACCEPTED:
            r.status = OperationStatus.RUNNING
        return r

    stored = await runtime.ledger.update(payload["operationId"], progress)
    # ARM may echo the request's secrets, which are not in memory here: redact them by the record's fingerprint.
    fp = stored.secret_fingerprint if stored is not None else None
    return scrub_poll(result.to_dict(), fp, settled=stored is None or stored.terminal)


async def finish_operation(runtime: Runtime, payload: dict[str, Any], client: Any = None) -> dict[str, Any]:
    """The operation's end, as the orchestrator saw it (shared/workflow/completion.py finish)."""
    record = await finish(runtime, payload["operationId"], OperationStatus(payload["status"]), payload.get("error"),
                          applied=True, polls=payload.get("polls"), arm_status=payload.get("armStatus"),
                          health=payload.get("health"), health_detail=payload.get("healthDetail"), client=client)
    return record.view() if record is not None else {}


async def submit_batch(runtime: Runtime, payload: dict[str, Any], client: Any = None) -> dict[str, Any]:
    return await batches.submit(runtime, client, payload["operationId"])


async def read_health(runtime: Runtime, payload: dict[str, Any]) -> dict[str, Any]:
    """One health read; the same read asked twice at once (the activity run twice side by side) is read once."""
    seen = payload.get("seen") or {}
    key = f"health|{payload['operationId']}|{bool(payload.get('final'))}|{payload.get('page')}|{','.join(sorted(seen))}"
    answer: dict[str, Any] = await runtime.once.get(key, lambda: verify.read_health(
        runtime, payload["operationId"], final=bool(payload.get("final")), page=payload.get("page"),
        seen=payload.get("seen")))
    return answer
