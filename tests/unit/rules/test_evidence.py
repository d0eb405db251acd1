"""shared/rules/evidence.py: what a machine's model says can be captured, and how the record sums it up."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from shared.rules.evidence import EPHEMERAL, Machine, blob_name, item, retain_until, snapshot_name, status_of, stronger

DISK = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/disks/vm_OsDisk_1_abc"


def doc(*, boot: bool | None = True, disk: str | None = DISK, ephemeral: bool = False,
        location: str | None = "westus") -> dict[str, object]:
    os_disk: dict[str, object] = {"osType": "Linux"}
    if disk is not None:
        os_disk["managedDisk"] = {"id": disk}
    if ephemeral:
        os_disk["diffDiskSettings"] = {"option": "Local"}
    props: dict[str, object] = {"storageProfile": {"osDisk": os_disk}, "instanceView": {"statuses": []}}
    if boot is not None:
        props["diagnosticsProfile"] = {"bootDiagnostics": {"enabled": boot}}
    out: dict[str, object] = {"properties": props}
    if location is not None:
        out["location"] = location
    return out


def test_what_a_model_allows() -> None:
    m = Machine.of("", doc())
    assert m.boot_diagnostics and m.serial_log_skipped() is None and m.snapshot_skipped() is None
    assert m.instance_view == {"statuses": []} and m.os_disk_id == DISK
    assert "not enabled" in str(Machine.of("", doc(boot=False)).serial_log_skipped())
    assert Machine.of("", doc(boot=None)).serial_log_skipped() is not None  # no diagnosticsProfile: off
    assert Machine.of("3", doc(ephemeral=True)).snapshot_skipped() == EPHEMERAL  # even with a disk id
    assert "no managed OS disk" in str(Machine.of("", doc(disk=None)).snapshot_skipped())
    assert "location" in str(Machine.of("", doc(location=None)).snapshot_skipped())
    assert Machine.of("", {"properties": None}).snapshot_skipped() is not None  # a body ARM mangled


def test_modes_names_and_dates() -> None:
    assert stronger("off", "snapshot") == "snapshot" and stronger(None, "bootdiagnostics") == "bootdiagnostics"
    assert stronger(None, None) == "off"
    assert blob_name("op-1", "", "serial-console.log") == "op-1/vm/serial-console.log"
    assert blob_name("op-1", "7", "instance-view.json") == "op-1/7/instance-view.json"
    assert retain_until(datetime(2026, 12, 30, 23, 0, tzinfo=UTC), 3) == "2027-01-02"


@given(st.text(min_size=1, max_size=70), st.text(max_size=12))
def test_snapshot_names_follow_computes_rule(operation_id: str, key: str) -> None:
    name = snapshot_name(operation_id, key)
    assert 1 <= len(name) <= 80 and re.fullmatch(r"[A-Za-z0-9_.-]+", name) and name[0].isalnum()
    assert name[-1].isalnum() or name[-1] == "_"


def test_the_record_sums_up_what_happened() -> None:
    captured, skipped, failed = item("captured", url="u"), item("skipped", reason="r"), item("failed", reason="x")
    assert status_of([captured, skipped]) == "captured"  # nothing there to capture is not a failure
    assert status_of([captured, failed]) == "partial"
    assert status_of([skipped, failed]) == "failed" and status_of([skipped]) == "skipped"
    assert item("captured", url="u", bytes=None) == {"status": "captured", "url": "u"}
