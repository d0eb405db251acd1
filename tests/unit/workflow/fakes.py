"""In-memory stand-ins for the workflow's ports, for fast unit tests of its decisions (no Azurite, no HTTP).

- `FakeLedger`: the `shared.adapters.ledger.Ledger` methods the workflow uses, with the same semantics:
  records are stored as JSON (a caller never holds the stored object), every write of an operation or a
  target carries an ETag and a stale one raises `RecordChanged` (or retries, in the CAS loops), a claim is an
  insert-if-absent, listing reads an index newest first, and the global budget is `limit` slots of an hour.
  tests/integration/adapters/test_ledger.py pins the real ledger's side of these semantics against Azurite;
  test_fakes.py pins this one's.
- `FakeCompute`: the ARM client. Records every POST; answers 202 unless told otherwise (an answer, or one of
  the typed errors of shared.domain.errors the real client raises: `arm_error`, `uncertain`, `unreachable`),
  per POST; `hold()` keeps the next POSTs in flight until released.
- `RecordingPublisher`: every event it was asked to send, in order; `fail_next` makes sends fail.
- `FakeDurableClient`: `start_new` and `get_status` of the Durable Functions client.
- `Clock`: a settable clock; `make_runtime` builds a real `shared.runtime.Runtime` around all of them.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from azure.durable_functions.models.DurableOrchestrationStatus import DurableOrchestrationStatus
from azure.durable_functions.models.OrchestrationRuntimeStatus import OrchestrationRuntimeStatus

from shared.adapters.arm.quota import QuotaTracker
from shared.adapters.ledger import OPEN, Ledger, LedgerConflict, Page, RecordChanged, target_partition
from shared.adapters.ledger.entities import inverted
from shared.domain.arm_call import ArmCall, Submission, TargetModel
from shared.domain.errors import (
    ComputeError,
    ComputeThrottled,
    ComputeUnavailable,
    ErrorCode,
    SubmissionUncertain,
    TargetNotFound,
)
from shared.domain.events import CloudEvent, EventType
from shared.domain.health import Health, InstanceHealth
from shared.domain.records import OperationRecord, TargetRecord
from shared.domain.targets import Target, TargetKind
from shared.runtime import Runtime
from shared.settings import Settings
from tests.helpers import SUB

T = TypeVar("T")
_CAS_ATTEMPTS = 64
START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


class Clock:
    """The runtime's clock, moved by the test."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


# ---- the ledger ------------------------------------------------------------------------------------
class FakeLedger:
    def __init__(self) -> None:
        self._etags = itertools.count(1)
        self.ops: dict[str, tuple[str, str]] = {}  # operation id -> (JSON, ETag)
        # lease key -> (record, ETag); kept as a copy of the model, queue included (the real ledger stores the
        # queue as rows of the target's partition, outside the target row's JSON)
        self.targets: dict[str, tuple[TargetRecord, str]] = {}
        self.index_rows: dict[str, dict[str, tuple[str, datetime]]] = {}  # partition -> row -> (op, created)
        self.slots: dict[str, tuple[datetime, str]] = {}  # global-budget slot -> (taken at, owner)
        # Called with the operation id just before `replace` compares ETags: a test writes here to be the
        # concurrent writer that makes the caller's copy stale.
        self.before_replace: Callable[[str], None] | None = None

    def _etag(self) -> str:
        return f'W/"{next(self._etags)}"'

    # ---- operations --------------------------------------------------------------------------------
    async def claim(self, record: OperationRecord) -> tuple[bool, OperationRecord]:
        """Insert-if-absent. (True, record) when this caller won; (False, existing) otherwise."""
        if record.operation_id in self.ops:
            existing = await self.get(record.operation_id)
            assert existing is not None
            return False, existing
        record.etag = self._etag()
        self.ops[record.operation_id] = (record.to_json(), record.etag)
        return True, record

    async def get(self, operation_id: str) -> OperationRecord | None:
        stored = self.ops.get(operation_id)
        if stored is None:
            return None
        record = OperationRecord.model_validate_json(stored[0])
        record.etag = stored[1]
        return record

    async def replace(self, record: OperationRecord) -> OperationRecord:
        """CAS: write `record` only if the stored one still has `record.etag`; RecordChanged otherwise."""
        assert record.etag is not None
        if self.before_replace is not None:
            hook, self.before_replace = self.before_replace, None  # once: the concurrent writer writes once
            hook(record.operation_id)
        stored = self.ops.get(record.operation_id)
        if stored is None or stored[1] != record.etag:
            raise RecordChanged(record.operation_id)
        record.etag = self._etag()
        self.ops[record.operation_id] = (record.to_json(), record.etag)
        return record

    # The real read-mutate-CAS loop (retried on RecordChanged, with its jitter), over this ledger's get/replace.
    update = Ledger.update

    async def release_claim(self, record: OperationRecord) -> bool:
        """Free the key (CAS delete): only while the stored record still has `record.etag`."""
        stored = self.ops.get(record.operation_id)
        if stored is None or stored[1] != record.etag:
            return False
        del self.ops[record.operation_id]
        return True

    def _index_row(self, partition: str, row: str, record: OperationRecord) -> None:
        self.index_rows.setdefault(partition, {})[row] = (record.operation_id, record.created_time)

    async def index(self, record: OperationRecord) -> None:
        row = f"{inverted(record.created_time)}-{record.operation_id}"
        self._index_row(target_partition(record.lease_key), row, record)
        self._index_row("all", row, record)
        self._index_row(OPEN, record.operation_id, record)

    async def watch(self, record: OperationRecord) -> None:
        self._index_row(OPEN, record.operation_id, record)

    async def settled(self, operation_id: str) -> None:
        self.index_rows.get(OPEN, {}).pop(operation_id, None)

    async def unsettled(self) -> list[str]:
        return [op for _, (op, _) in sorted(self.index_rows.get(OPEN, {}).items())]

    async def list_operations(self, *, lease_key: str | None = None, status: str | None = None,
                              since: datetime | None = None, top: int = 50,
                              continuation_token: str | None = None) -> Page:
        rows = sorted(self.index_rows.get(target_partition(lease_key) if lease_key else "all", {}).items())
        if since is not None:
            rows = [(row, entry) for row, entry in rows if row < inverted(since) + "~"]
        start = int(continuation_token or 0)
        items: list[OperationRecord] = []
        for _, (op, created) in rows[start:start + top]:
            record = await self.get(op)
            # a freed key may have been claimed again: only the entry written for this claim counts
            if record is None or abs((record.created_time - created).total_seconds()) >= 0.001:
                continue
            if status is None or record.public_status == status:
                items.append(record)
        more = start + top < len(rows)
        return Page(items, str(start + top) if more else None)

    # ---- targets -----------------------------------------------------------------------------------
    async def get_target(self, lease_key: str) -> TargetRecord:
        stored = self.targets.get(lease_key)
        if stored is None:
            return TargetRecord(key=lease_key)
        record = stored[0].model_copy(deep=True)
        record.etag = stored[1]
        return record

    async def change_target(self, lease_key: str, decide: Callable[[TargetRecord], tuple[TargetRecord | None, T]]
                            ) -> T:
        """CAS loop on one target: `decide` gets a fresh copy; only the run whose write lands counts."""
        for _ in range(_CAS_ATTEMPTS):
            current = await self.get_target(lease_key)
            changed, result = decide(current.model_copy(deep=True))
            if changed is None:
                return result
            stored = self.targets.get(lease_key)
            if (stored is None) != (current.etag is None) or (stored is not None and stored[1] != current.etag):
                continue  # insert of an existing one, or a stale ETag: read again and decide again
            self.targets[lease_key] = (changed.model_copy(deep=True), self._etag())
            return result
        raise LedgerConflict(f"could not change target {lease_key}")

    def put_target(self, record: TargetRecord) -> None:
        """A concurrent writer's change (or a test's set-up): a new ETag, like any write."""
        self.targets[record.key] = (record.model_copy(deep=True), self._etag())

    # ---- the global budget: `limit` slots, each serving one POST an hour -------------------------------
    async def take_global_slot(self, owner: str, now: datetime, limit: int) -> tuple[str | None, datetime | None]:
        hour_ago = now - timedelta(hours=1)
        for i in range(limit):
            key = f"{i:07d}"
            taken = self.slots.get(key)
            if taken is None or taken[0] <= hour_ago:
                self.slots[key] = (now, owner)
                return key, None
        busy = [at for key, (at, _) in self.slots.items() if at > hour_ago and int(key) < limit]
        return None, min(busy) + timedelta(hours=1)

    async def global_slots_free(self, now: datetime, limit: int) -> bool:
        hour_ago = now - timedelta(hours=1)
        return sum(1 for key, (at, _) in self.slots.items() if at > hour_ago and int(key) < limit) < limit

    async def give_back_global_slot(self, key: str, owner: str) -> None:
        taken = self.slots.get(key)
        if taken is not None and taken[1] == owner:
            del self.slots[key]

    async def close(self) -> None:
        return None


# ---- ARM --------------------------------------------------------------------------------------------
def accepted_202(retry_after: float | None = None) -> Submission:
    url = f"https://arm.test/subscriptions/{SUB}/providers/Microsoft.Compute/locations/westus/operations/op"
    return Submission(202, url + "?api-version=2024-07-01", url + "?monitor=true", retry_after, "arm-request")


def arm_error(status: int, code: str = "OperationNotAllowed", message: str = "ARM said no") -> ComputeError:
    """What the ARM client raises when ARM answers a POST with `status` (shared/adapters/arm/client.py)."""
    kw: dict[str, Any] = {"arm_status": status, "arm_code": code, "arm_message": message}
    if status == 429:  # past the client's own retries
        return ComputeThrottled(ErrorCode.COMPUTE_UNAVAILABLE, "ARM is throttling", retry_after=30, **kw)
    if status >= 500 or status == 408:
        return ComputeUnavailable(ErrorCode.COMPUTE_UNAVAILABLE, f"ARM answered {status}", **kw)
    return ComputeError(ErrorCode.COMPUTE_ERROR, f"ARM answered {status}", **kw)


def unreachable() -> ComputeUnavailable:
    """The client never connected: nothing was sent."""
    return ComputeUnavailable(ErrorCode.COMPUTE_UNAVAILABLE, "could not connect to ARM", arm_status=0,
                              arm_code="ConnectionFailed", arm_message="ServiceRequestError")


def uncertain() -> SubmissionUncertain:
    """The POST was sent and no answer came back."""
    return SubmissionUncertain(ErrorCode.SUBMISSION_UNCERTAIN, "no answer to the reimage POST", arm_status=0,
                               arm_code=None, arm_message="connection reset after the request was sent")


@dataclass
class FakeCompute:
    models: dict[str, TargetModel] = field(default_factory=dict)  # by lower-cased id; else a default model
    answers: list[Submission | BaseException] = field(default_factory=list)  # per POST, in order; then 202
    posts: list[ArmCall] = field(default_factory=list)
    _held: asyncio.Event | None = None
    posted: asyncio.Event = field(default_factory=asyncio.Event)
    # ARM's remaining counts as the real client keeps them (nothing seen: nothing slows down)
    quota: QuotaTracker = field(default_factory=lambda: QuotaTracker(time.time))

    async def get_model(self, target: Target) -> TargetModel:
        model = self.models.get(target.vm_id.lower())
        if model is None:
            raise TargetNotFound(ErrorCode.TARGET_NOT_FOUND, "no such target", arm_status=404,
                                 arm_code="NotFound", arm_message="not found")
        return model

    def hold(self) -> asyncio.Event:
        """Keep the next POSTs in flight (after they are recorded) until the returned event is set."""
        self._held = asyncio.Event()
        return self._held

    async def submit(self, call: ArmCall) -> Submission:
        self.posts.append(call)
        self.posted.set()
        if self._held is not None:
            await self._held.wait()
        answer = self.answers.pop(0) if self.answers else accepted_202()
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def instance_health(self, target: Target, instance_ids: list[str] | None = None
                              ) -> dict[str, InstanceHealth]:
        keys = [""] if target.kind is TargetKind.VM else list(instance_ids or [])
        return {k: InstanceHealth(Health.HEALTHY, "ok") for k in keys}

    async def instance_health_page(self, target: Target, instance_ids: list[str] | None, page: str | None
                                   ) -> tuple[dict[str, InstanceHealth], str | None]:
        return await self.instance_health(target, instance_ids), None

    def read_delay(self, kind: str, resource: str) -> float:
        return self.quota.delay(resource, kind, resource)

    async def close(self) -> None:
        return None

    def bodies(self) -> list[dict[str, Any] | None]:
        return [call.wire_body() for call in self.posts]


# ---- events and orchestrations -------------------------------------------------------------------------
@dataclass
class RecordingPublisher:
    events: list[CloudEvent] = field(default_factory=list)  # every send asked for, failed ones too
    fail_next: int = 0  # the next sends that raise (after being recorded)

    async def publish(self, event: CloudEvent, *, reply_to: str | None = None,
                      reply_correlation_id: str | None = None) -> None:
        self.events.append(event)
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("Service Bus is unreachable")

    async def close(self) -> None:
        return None

    def of(self, kind: EventType, operation_id: str | None = None) -> list[CloudEvent]:
        return [e for e in self.events if e.type == kind
                and (operation_id is None or e.data.operation_id == operation_id)]


@dataclass
class FakeDurableClient:
    started: list[tuple[str, str, Any]] = field(default_factory=list)  # (orchestrator, instance id, input)
    status: dict[str, OrchestrationRuntimeStatus] = field(default_factory=dict)

    async def start_new(self, orchestration_function_name: str, instance_id: str | None = None,
                        client_input: Any = None) -> str:
        assert instance_id is not None
        self.started.append((orchestration_function_name, instance_id, client_input))
        self.status[instance_id] = OrchestrationRuntimeStatus.Running
        return instance_id

    async def get_status(self, instance_id: str) -> DurableOrchestrationStatus:
        status = self.status.get(instance_id)
        if status is None:  # as the SDK answers a 404: an empty status
            return DurableOrchestrationStatus()
        return DurableOrchestrationStatus(name="reimage_monitor", instanceId=instance_id,
                                          createdTime=START.isoformat(), runtimeStatus=status.value)

    def starts_of(self, instance_id: str) -> list[Any]:
        return [state for _, iid, state in self.started if iid == instance_id]


# ---- the runtime ---------------------------------------------------------------------------------------
RG = f"/subscriptions/{SUB}/resourceGroups/fleet/providers/Microsoft.Compute"
VM = f"{RG}/virtualMachines/web-01"
VMSS = f"{RG}/virtualMachineScaleSets/workers"
VMSS_SIZE = 20


def default_models() -> dict[str, TargetModel]:
    vm = TargetModel(id=VM, os_type="Linux", ephemeral_os_disk=False)
    vmss = TargetModel(id=VMSS, os_type="Linux", ephemeral_os_disk=False, capacity=VMSS_SIZE,
                       instance_ids=tuple(str(i) for i in range(VMSS_SIZE)))
    return {VM.lower(): vm, VMSS.lower(): vmss}


@dataclass
class World:
    runtime: Runtime
    clock: Clock
    ledger: FakeLedger
    compute: FakeCompute
    publisher: RecordingPublisher
    durable: FakeDurableClient


def make_world(**settings: str) -> World:
    """A real Runtime whose clients are the fakes. `settings`: by their environment names."""
    # EVIDENCE off: the fakes have no boot diagnostics or blob storage; evidence before the POST is tested against
    # devhost's simulator and Azurite (tests/integration/test_evidence.py).
    values = {"ALLOWED_SCOPES": f"/subscriptions/{SUB}", "COOLDOWN_MINUTES": "30", "EVIDENCE": "off", **settings}
    clock, ledger, compute = Clock(), FakeLedger(), FakeCompute(models=default_models())
    publisher, durable = RecordingPublisher(), FakeDurableClient()
    runtime = Runtime(Settings(**values), clock=clock, publisher=publisher)  # type: ignore[arg-type]
    runtime.__dict__["compute"] = compute  # `compute` and `ledger` are cached properties: set, never built
    runtime.__dict__["ledger"] = ledger
    return World(runtime, clock, ledger, compute, publisher, durable)
