"""Evidence before the wipe: captured right before the reimage POST, never holding it back for long.

shared/workflow/submission.py calls `before_post` with the operation about to be POSTed (a lead request, or a batch),
already marked Submitting, so no other run POSTs it meanwhile. For each machine the POST will reimage whose request
asks for evidence (`captureEvidence`, else EVIDENCE; a batch takes each instance's widest ask):
1. its model and instance view: one read for the VM, the instance, or the batch's instances (shared/adapters/arm/
   evidence.py); a Flexible set's members are VMs of their own, read and asked for their boot diagnostics on
   their own VM paths (a Flexible batch calls this before its members' single-VM POSTs, shared/workflow/fleet.py);
2. the instance view is stored in the container `reimager-evidence`, under each request's operation id;
3. with boot diagnostics enabled: retrieveBootDiagnosticsData, then the serial console log through its SAS URI
   (no bearer token to that host; the last SERIAL_LOG_MAX_BYTES kept), stored beside it;
4. with `snapshot`, and a managed OS disk that is not ephemeral: an incremental snapshot, tagged with the operation
   id and a retention date (EVIDENCE_RETENTION_DAYS), waited for until it Succeeded.
All of it within EVIDENCE_TIMEOUT_SECONDS: when that runs out the POST goes on, and what was not done is recorded
failed, with why. Nothing here ever raises into the reimage. Each request's record (and so its completion event and
GET /api/reimage/{id}) gets its `evidence`: per instance what was captured (with its link), skipped or failed. An
operation whose record already has evidence (a POST sent again after ARM throttled it) is not captured twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from shared.adapters.arm.evidence import EvidenceCallFailed
from shared.adapters.evidence import EvidenceStore, EvidenceUnavailable, download_log
from shared.domain.evidence import CAPTURED, FAILED, OPERATION_TAG, RETAIN_TAG, SERIAL_LOG_MAX_BYTES, SKIPPED
from shared.domain.fleet import member_target
from shared.domain.records import OperationRecord
from shared.domain.targets import Target, parse_target
from shared.rules.evidence import Machine, blob_name, item, retain_until, snapshot_name, status_of, stronger
from shared.rules.fleet import flexible_set
from shared.runtime import Runtime

log = logging.getLogger("reimager.evidence")
_PARALLEL = 4  # machines captured at once


@dataclass
class _Capture:
    """One capture: who asked for what, and what came of it (filled in as it goes, so a timeout keeps the rest)."""

    runtime: Runtime
    target: Target
    store: EvidenceStore | None
    asked: dict[str, OperationRecord]  # operation id -> the request
    modes: dict[str, dict[str, str]]  # operation id -> instance -> its mode
    deadline: float
    flexible: Target | None = None  # a Flexible set: its members (the keys) are VMs of their own
    found: dict[str, dict[str, dict[str, dict[str, Any]]]] = field(default_factory=dict)  # op -> key -> what -> item

    def machine(self, key: str) -> tuple[Target, str]:
        """Where a machine's ARM paths are: a Flexible member's own VM, else the target (and the instance id)."""
        return (member_target(self.flexible, key), "") if self.flexible is not None else (self.target, key)

    def owners(self, key: str) -> list[OperationRecord]:
        return [r for op, r in self.asked.items() if key in self.modes[op]]

    def put(self, op: str, key: str, what: str, found: dict[str, Any]) -> None:
        self.found.setdefault(op, {}).setdefault(key, {})[what] = found

    def each(self, key: str, what: str, found: dict[str, Any], *, snapshot_only: bool = False) -> None:
        for r in self.owners(key):
            if not snapshot_only or self.modes[r.operation_id][key] == "snapshot":
                self.put(r.operation_id, key, what, found)


async def before_post(runtime: Runtime, record: OperationRecord) -> OperationRecord:
    """Capture the evidence of `record`'s machines (a lead or a batch), bounded; never raises. Returns `record` as
    stored now (with the ETag of the evidence's write, if it made one), for the caller's next compare-and-swap."""
    try:
        return await _before_post(runtime, record) or record
    except Exception:  # evidence never stops a reimage
        log.warning("evidence capture for %s failed; the reimage goes on", record.operation_id, exc_info=True)
        return record


async def _requests(runtime: Runtime, record: OperationRecord) -> list[OperationRecord]:
    if not record.is_batch:
        return [record]
    found = []
    for member_id in record.members or []:
        member = await runtime.ledger.get(member_id)
        if member is not None and not member.terminal:
            found.append(member)
    return found


async def _before_post(runtime: Runtime, record: OperationRecord) -> OperationRecord | None:
    if record.evidence is not None:
        return None  # captured before this POST was sent again
    posted = set(record.cooldown_keys)
    asked: dict[str, OperationRecord] = {}
    modes: dict[str, dict[str, str]] = {}
    for r in await _requests(runtime, record):
        mode = r.evidence_mode or "off"
        done = (r.evidence or {}).get("instances") or {}  # a request the canary took in part has some already
        keys = [k for k in r.cooldown_keys if k in posted and k not in done]
        if mode != "off" and keys:
            asked[r.operation_id], modes[r.operation_id] = r, dict.fromkeys(keys, mode)
    wanted: dict[str, str] = {}
    for per in modes.values():
        for key, mode in per.items():
            wanted[key] = stronger(wanted.get(key), mode)
    if not wanted:
        return None
    settings = runtime.settings
    loop = asyncio.get_running_loop()
    started, began = runtime.now(), loop.time()
    flexible = flexible_set(record)
    capture = _Capture(runtime, flexible or parse_target(record.target), runtime.evidence, asked, modes,
                       started.timestamp() + settings.evidence_timeout_seconds, flexible)
    timed_out = False
    try:
        async with asyncio.timeout(settings.evidence_timeout_seconds):
            await _capture(capture, wanted)
    except TimeoutError:
        timed_out = True
    seconds = round(loop.time() - began, 3)
    ran_out = item(FAILED, reason=f"not done: EVIDENCE_TIMEOUT_SECONDS ({settings.evidence_timeout_seconds}) ran "
                   "out and the reimage went on")
    docs: dict[str, dict[str, Any]] = {}
    for op, per in modes.items():
        instances: dict[str, dict[str, Any]] = {}
        for key, mode in per.items():
            wants = ["serialLog", "instanceView", *(["snapshot"] if mode == "snapshot" else [])]  # the view's order
            got = capture.found.get(op, {}).get(key, {})
            instances[key] = {what: got.get(what, ran_out) for what in wants}
        docs[op] = {"mode": stronger(None, asked[op].evidence_mode), "status": status_of(
            i for inst in instances.values() for i in inst.values()),
            "container": capture.store.container_url if capture.store is not None else None,
            "startedAt": started.isoformat(), "seconds": seconds, "timedOut": timed_out, "instances": instances}
    stored = await _record(runtime, record, docs)
    log.info("evidence for %s: %s in %.2f s%s", record.operation_id,
             ", ".join(f"{op} {d['status']}" for op, d in docs.items()), seconds, " (timed out)" if timed_out else "")
    return stored


async def _record(runtime: Runtime, record: OperationRecord, docs: dict[str, dict[str, Any]]
                  ) -> OperationRecord | None:
    """Each request's evidence on its record (added to what an earlier POST of its other instances captured); a
    batch's own record gets all of its instances (first found). `record` as stored after that."""
    stored = None
    for op, doc in docs.items():
        def add(r: OperationRecord, doc: dict[str, Any] = doc) -> OperationRecord | None:
            old = r.evidence or {}
            had = old.get("instances") or {}
            if set(doc["instances"]) <= set(had):
                return None  # recorded already (a retried write)
            instances = {**doc["instances"], **had}
            r.evidence = doc if not old else {**old, "instances": instances, "status": status_of(
                i for items in instances.values() for i in items.values()),
                "seconds": round(float(old.get("seconds") or 0) + doc["seconds"], 3),
                "timedOut": bool(old.get("timedOut")) or doc["timedOut"]}
            return r

        # `record` is as its caller just wrote it: its ETag saves the read before the CAS (a lead's one write)
        written = await runtime.ledger.update(op, add, known=record if op == record.operation_id else None)
        stored = written if op == record.operation_id else stored
    if record.is_batch:
        merged: dict[str, Any] = {}
        for doc in docs.values():
            for key, items in doc["instances"].items():
                merged.setdefault(key, items)
        first = next(iter(docs.values()))
        summary = {**first, "mode": "snapshot" if any(d["mode"] == "snapshot" for d in docs.values()) else first[
            "mode"], "status": status_of(i for items in merged.values() for i in items.values()), "instances": merged}

        def add_summary(r: OperationRecord) -> OperationRecord | None:
            if r.evidence is not None:
                return None
            r.evidence = summary
            return r

        stored = await runtime.ledger.update(record.operation_id, add_summary, known=record)
    return stored


async def _capture(capture: _Capture, wanted: dict[str, str]) -> None:
    try:
        keys = sorted(wanted, key=lambda k: (len(k), k))
        arm = capture.runtime.compute.evidence
        docs = await (arm.members(capture.flexible, keys) if capture.flexible is not None
                      else arm.machines(capture.target, keys))
    except EvidenceCallFailed as exc:
        for key in wanted:
            for what in ("instanceView", "serialLog"):
                capture.each(key, what, item(FAILED, reason=str(exc)))
            capture.each(key, "snapshot", item(FAILED, reason=str(exc)), snapshot_only=True)
        return
    gate = asyncio.Semaphore(_PARALLEL)

    async def one(key: str, mode: str) -> None:
        async with gate:
            doc = docs.get(key)
            if doc is None:
                gone = item(FAILED, reason="the machine was not found when its evidence was read")
                for what in ("instanceView", "serialLog"):
                    capture.each(key, what, gone)
                capture.each(key, "snapshot", gone, snapshot_only=True)
                return
            machine = Machine.of(key, doc)
            jobs = [_view(capture, machine), _serial_log(capture, machine)]
            if mode == "snapshot":
                jobs.append(_snapshot(capture, machine))
            await asyncio.gather(*jobs)

    await asyncio.gather(*(one(key, mode) for key, mode in wanted.items()))


async def _store(capture: _Capture, key: str, what: str, leaf: str, data: bytes, content_type: str,
                 **facts: Any) -> None:
    """Store `data` under each request's operation id that asked for this machine."""
    store = capture.store
    for r in capture.owners(key):
        if store is None:
            capture.put(r.operation_id, key, what, item(FAILED, reason="no blob service is configured for evidence "
                                                        "(AzureWebJobsStorage__blobServiceUri)"))
            continue
        try:
            url = await store.put(blob_name(r.operation_id, key, leaf), data, content_type)
        except EvidenceUnavailable as exc:
            capture.put(r.operation_id, key, what, item(FAILED, reason=str(exc)))
            continue
        capture.put(r.operation_id, key, what, item(CAPTURED, url=url, **facts))


async def _view(capture: _Capture, machine: Machine) -> None:
    data = json.dumps(machine.instance_view or {}, indent=1, sort_keys=True).encode()
    await _store(capture, machine.key, "instanceView", "instance-view.json", data, "application/json")


async def _serial_log(capture: _Capture, machine: Machine) -> None:
    skipped = machine.serial_log_skipped()
    if skipped is None and capture.store is None:
        skipped = "no blob service is configured for evidence (AzureWebJobsStorage__blobServiceUri): not fetched"
    if skipped is not None:
        capture.each(machine.key, "serialLog", item(SKIPPED, reason=skipped))
        return
    try:
        uri = await capture.runtime.compute.evidence.serial_log_uri(*capture.machine(machine.key))
        # a second past the capture's own bound, which ends it first (and says so): this only stops a stray read
        left = max(1.0, capture.deadline - capture.runtime.now().timestamp()) + 1.0
        data, total, truncated = await download_log(uri, SERIAL_LOG_MAX_BYTES, left)
    except (EvidenceCallFailed, EvidenceUnavailable) as exc:
        capture.each(machine.key, "serialLog", item(FAILED, reason=str(exc)))
        return
    await _store(capture, machine.key, "serialLog", "serial-console.log", data, "text/plain; charset=utf-8",
                 bytes=len(data), truncated=truncated, totalBytes=total if truncated else None)


async def _snapshot(capture: _Capture, machine: Machine) -> None:
    skipped = machine.snapshot_skipped()
    if skipped is not None:
        capture.each(machine.key, "snapshot", item(SKIPPED, reason=skipped), snapshot_only=True)
        return
    assert machine.os_disk_id is not None and machine.location is not None
    first = next(r for r in capture.owners(machine.key)
                 if capture.modes[r.operation_id][machine.key] == "snapshot")
    until = retain_until(capture.runtime.now(), capture.runtime.settings.evidence_retention_days)
    try:
        doc = await capture.runtime.compute.evidence.snapshot(
            resource_group_id=capture.target.resource_group_id, name=snapshot_name(first.operation_id, machine.key),
            disk_id=machine.os_disk_id, location=machine.location,
            tags={OPERATION_TAG: first.operation_id, RETAIN_TAG: until}, deadline=capture.deadline)
    except EvidenceCallFailed as exc:
        capture.each(machine.key, "snapshot", item(FAILED, reason=str(exc)), snapshot_only=True)
        return
    snapshot_id = doc.get("id") or (f"{capture.target.resource_group_id}/providers/Microsoft.Compute/snapshots/"
                                    f"{snapshot_name(first.operation_id, machine.key)}")
    capture.each(machine.key, "snapshot", item(CAPTURED, url=snapshot_id, retainUntil=until), snapshot_only=True)
