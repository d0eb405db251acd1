"""Evidence before the wipe: what to capture from each machine before its reimage POST, and how the record says it.

A reimage destroys the OS disk and the logs on it. Azure keeps boot diagnostics (the serial console log) outside
the disk, and a managed OS disk that is not ephemeral can be snapshotted first (research notes `arm.md` C10-C12).
Per machine, from its model and instance view (one read, `$expand=instanceView`):
- the instance view is always kept (it is what ARM said of the machine just before);
- the serial console log, when boot diagnostics is enabled on the machine (else skipped: there is none);
- with `snapshot`, an incremental snapshot of the OS disk: skipped for an ephemeral OS disk (Azure cannot
  snapshot one, EPH) and for a machine without a managed OS disk.
Pure: the reads and writes are the caller's (shared/workflow/evidence.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shared.domain.evidence import CAPTURED, FAILED, MODES, SKIPPED

EPHEMERAL = "the OS disk is ephemeral: Azure cannot snapshot an ephemeral OS disk; the rest was captured"


def stronger(a: str | None, b: str | None) -> str:
    """The wider of two modes (off < bootdiagnostics < snapshot); None counts as off."""
    return max(a or "off", b or "off", key=MODES.index)


@dataclass(frozen=True)
class Machine:
    """One VM or scale-set instance as its model and instance view describe it."""

    key: str  # "" for a VM, else the instance id
    instance_view: dict[str, Any] | None
    boot_diagnostics: bool
    os_disk_id: str | None
    ephemeral: bool
    location: str | None

    @classmethod
    def of(cls, key: str, doc: dict[str, Any]) -> Machine:
        """From a VM or scale-set VM document read with `$expand=instanceView`."""
        props = doc.get("properties") or {}
        diagnostics = ((props.get("diagnosticsProfile") or {}).get("bootDiagnostics") or {})
        os_disk = (props.get("storageProfile") or {}).get("osDisk") or {}
        disk_id = (os_disk.get("managedDisk") or {}).get("id")
        view = props.get("instanceView")
        return cls(key, view if isinstance(view, dict) else None, diagnostics.get("enabled") is True,
                   disk_id if isinstance(disk_id, str) and disk_id else None, bool(os_disk.get("diffDiskSettings")),
                   doc.get("location") if isinstance(doc.get("location"), str) else None)

    def serial_log_skipped(self) -> str | None:
        """Why there is no serial log to fetch (None: fetch it)."""
        return None if self.boot_diagnostics else "boot diagnostics is not enabled on this machine"

    def snapshot_skipped(self) -> str | None:
        """Why the OS disk is not snapshotted (None: snapshot it)."""
        if self.ephemeral:
            return EPHEMERAL
        if self.os_disk_id is None:
            return "the machine has no managed OS disk to snapshot"
        if self.location is None:
            return "the machine's location is not known"
        return None


def blob_name(operation_id: str, key: str, leaf: str) -> str:
    return f"{operation_id}/{key or 'vm'}/{leaf}"


_SNAPSHOT_NAME = re.compile(r"[^A-Za-z0-9_.-]")


def snapshot_name(operation_id: str, key: str) -> str:
    """1-80 characters of letters, digits, '_', '.', '-', ending with a letter, digit or '_' (Compute's rule)."""
    return _SNAPSHOT_NAME.sub("-", f"reimager-{operation_id}-{key or 'vm'}")[:80].rstrip(".-") or "reimager"


def retain_until(now: datetime, days: int) -> str:
    return (now + timedelta(days=days)).date().isoformat()


def item(status: str, **facts: Any) -> dict[str, Any]:
    return {"status": status, **{k: v for k, v in facts.items() if v is not None}}


def status_of(items: Iterable[dict[str, Any]]) -> str:
    """captured: everything asked for; partial: some of it; skipped: nothing to capture; failed: nothing captured."""
    seen = [i.get("status") for i in items]
    if seen and all(s == CAPTURED for s in seen if s != SKIPPED) and CAPTURED in seen:
        return CAPTURED
    if CAPTURED in seen:
        return "partial"
    return FAILED if FAILED in seen else SKIPPED
