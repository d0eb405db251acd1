"""The ARM reimage call a request builds, and what ARM says back: the target's model (preflight),
the POST's answer, and one poll's reading of the long-running operation.

Secrets are `SecretStr` in the call's body and are unwrapped only in `ArmCall.wire_body()`, the body
sent to ARM.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from pydantic import (
    SecretStr,
)

from shared.domain.fleet import FleetFacts
from shared.domain.targets import (
    Target,
)

OsType = Literal["Windows", "Linux"]


REDACTED = "***"


class ReimageOperation(StrEnum):
    """The five ARM reimage operations (operationIds in the Compute spec)."""

    VM_REIMAGE = "VirtualMachines_Reimage"
    VMSS_REIMAGE = "VirtualMachineScaleSets_Reimage"
    VMSS_REIMAGE_ALL = "VirtualMachineScaleSets_ReimageAll"
    VMSS_VM_REIMAGE = "VirtualMachineScaleSetVMs_Reimage"
    VMSS_VM_REIMAGE_ALL = "VirtualMachineScaleSetVMs_ReimageAll"


@dataclass(frozen=True)
class ArmCall:
    """One ARM reimage POST: path, api-version and body (secrets still wrapped)."""

    operation: ReimageOperation
    target: Target
    api_version: str
    body: dict[str, Any] | None

    @property
    def method(self) -> str:
        return "POST"

    @property
    def path(self) -> str:
        per_instance = self.operation in (ReimageOperation.VMSS_VM_REIMAGE, ReimageOperation.VMSS_VM_REIMAGE_ALL)
        whole_disks = self.operation in (ReimageOperation.VMSS_REIMAGE_ALL, ReimageOperation.VMSS_VM_REIMAGE_ALL)
        return f"{self.target.id if per_instance else self.target.vm_id}/{'reimageall' if whole_disks else 'reimage'}"

    @property
    def query(self) -> dict[str, str]:
        return {"api-version": self.api_version}

    def wire_body(self) -> dict[str, Any] | None:
        """The body exactly as sent to ARM: the only place secrets are unwrapped."""
        out: dict[str, Any] | None = _unwrap(self.body, reveal=True)
        return out

    def redacted_body(self) -> dict[str, Any] | None:
        out: dict[str, Any] | None = _unwrap(self.body, reveal=False)
        return out

    def options(self) -> dict[str, Any]:
        """What the call asks for besides its target, without secrets (stored in the ledger)."""
        body = self.body or {}
        out: dict[str, Any] = {"operation": self.operation.value}
        out.update({k: body[k] for k in ("tempDisk", "forceUpdateOSDiskForEphemeral", "exactVersion") if k in body})
        if "osProfile" in body:
            out["osProfile"] = sorted(body["osProfile"])  # which fields were given, never their values
        return out

    @classmethod
    def for_batch(cls, target: Target, options: dict[str, Any], keys: list[str], api_version: str) -> ArmCall:
        """One POST for a batch of queued requests with equal `options` (never secrets: requests with
        osProfile never wait). A scale set's POST names exactly the batch's instances, never none."""
        operation = ReimageOperation(options["operation"])
        body: dict[str, Any] = {k: options[k] for k in ("tempDisk", "forceUpdateOSDiskForEphemeral", "exactVersion")
                                if k in options}
        if "osProfile" in options:
            raise AssertionError("a batch never carries osProfile: its secrets were never stored")
        if operation in (ReimageOperation.VMSS_REIMAGE, ReimageOperation.VMSS_REIMAGE_ALL):
            if not keys or "" in keys:
                raise AssertionError("refusing to build a scale-set reimage with no instanceIds")
            body["instanceIds"] = list(keys)
        return cls(operation, target, api_version, body or None)

    def plan(self) -> dict[str, Any]:
        """The planned call for dry runs and logs; secrets redacted."""
        return {
            "operation": self.operation.value,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "body": self.redacted_body(),
        }


def _unwrap(value: Any, *, reveal: bool) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value() if reveal else REDACTED
    if isinstance(value, dict):
        return {k: _unwrap(v, reveal=reveal) for k, v in value.items()}
    if isinstance(value, list):
        return [_unwrap(v, reveal=reveal) for v in value]
    return value


@dataclass(frozen=True)
class TargetModel:
    """What the preflight GET learns about a target."""

    id: str
    os_type: OsType | None
    ephemeral_os_disk: bool
    tags: dict[str, str] = field(default_factory=dict)
    capacity: int | None = None  # scale sets: the number of instances
    instance_ids: tuple[str, ...] | None = None  # scale sets: the instances that exist now (Flexible: member names)
    fleet: FleetFacts = field(default_factory=FleetFacts)  # orchestration mode, members, repairs, protection, locks


@dataclass(frozen=True)
class Submission:
    status_code: int
    async_operation_url: str | None
    location_url: str | None
    retry_after: float | None
    request_id: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"statusCode": self.status_code, "asyncOperationUrl": self.async_operation_url,
                "locationUrl": self.location_url, "retryAfter": self.retry_after, "requestId": self.request_id}


PollMode = Literal["async", "location"]


class OperationState(StrEnum):
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELED = "Canceled"

    @property
    def terminal(self) -> bool:
        return self is not OperationState.RUNNING


@dataclass(frozen=True)
class PollResult:
    """What one status read says. `read_failed` means the read itself failed, not the operation."""

    state: OperationState
    retry_after: float | None = None
    error_code: str | None = None
    error_message: str | None = None
    status_code: int = 200
    read_failed: bool = False
    arm_seconds: float | None = None  # ARM's own startTime -> endTime, once finished (Azure-AsyncOperation)

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state.value, "retryAfter": self.retry_after, "errorCode": self.error_code,
                "errorMessage": self.error_message, "statusCode": self.status_code, "readFailed": self.read_failed,
                "armSeconds": self.arm_seconds}
