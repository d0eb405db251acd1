"""Evidence before the wipe, end to end on devhost: real Azurite blob storage for the container, the ARM simulator's
boot diagnostics (its storage on another host than ARM's) and snapshots.

Before the reimage POST: the machine's model and instance view, retrieveBootDiagnosticsData, the serial console log
through its SAS URI (never with a bearer token), stored in `reimager-evidence` under the operation id; with
`snapshot`, an incremental snapshot of a managed OS disk, tagged. Bounded by EVIDENCE_TIMEOUT_SECONDS: a hanging
endpoint delays the POST by at most that. The completion event and GET /api/reimage/{id} link it all.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from azure.storage.blob.aio import BlobServiceClient

from devhost.compute import Fault
from shared.domain.evidence import CONTAINER
from tests.integration.conftest import BASE, LINUX_VM, VMSS, WINDOWS_VM, Host

NewHost = Any
EPHEMERAL_INSTANCE = f"{VMSS}/virtualMachines/1"


def requests(h: Host) -> list[dict[str, Any]]:
    return h.dh.sim.requests


def index_of(h: Host, method: str, pattern: str, **query: str) -> int:
    for i, r in enumerate(requests(h)):
        if r["method"] == method and re.search(pattern, r["path"], re.IGNORECASE) and all(
                r["query"].get(k) == v for k, v in query.items()):
            return i
    raise AssertionError(f"no {method} {pattern} in the request log")


async def blobs(h: Host) -> dict[str, bytes]:
    """What the evidence container holds now (real Azurite)."""
    assert h.dh.settings is not None and h.dh.settings.storage_connection_string is not None
    conn = h.dh.settings.storage_connection_string.get_secret_value()
    async with BlobServiceClient.from_connection_string(conn) as service:
        container = service.get_container_client(CONTAINER)
        if not await container.exists():
            return {}
        found = {}
        async for blob in container.list_blobs():
            found[blob.name] = await (await container.download_blob(blob.name)).readall()
        return found


def watch_posts(h: Host, seen: Callable[[], Awaitable[Any]]) -> list[Any]:
    """Right before the app sends each reimage POST, record what `seen()` says (the app's real POST follows)."""
    runtime = h.dh.runtime
    assert runtime is not None
    compute = runtime.compute
    real = compute.submit
    observed: list[Any] = []

    async def submit(call: Any) -> Any:
        observed.append(await seen())
        return await real(call)

    compute.submit = submit  # type: ignore[method-assign]
    return observed


async def test_a_vms_serial_log_is_in_the_container_before_its_post_and_the_event_links_it(
        new_host: NewHost) -> None:
    h: Host = await new_host()
    at_post = watch_posts(h, lambda: blobs(h))
    s, body, _ = await h.reimage({"target": LINUX_VM, "requestId": "evidence-vm"})
    assert s == 202, body
    op = body["operationId"]
    [event] = await h.until_completed(1)
    # request-log order: the machine read, then the boot diagnostics, then the reimage POST
    view = index_of(h, "GET", r"/virtualMachines/web-linux-01$", **{"$expand": "instanceView"})
    boot = index_of(h, "POST", r"/web-linux-01/retrieveBootDiagnosticsData$")
    post = index_of(h, "POST", r"/web-linux-01/reimage$")
    assert view < boot < post
    # the log was fetched from the boot diagnostics storage, with no bearer token, before the POST was sent
    [fetched] = [r for r in h.dh.sim.boot_diagnostics.requests if r["path"].endswith(".serialconsole.log")]
    assert fetched["status"] == 200 and fetched["authorization"] is False
    [seen] = at_post
    before = {name: data for name, data in seen.items() if name.startswith(f"{op}/")}  # (the container is shared)
    log_name, view_name = f"{op}/vm/serial-console.log", f"{op}/vm/instance-view.json"
    assert set(before) == {log_name, view_name}  # in the container when the POST went out
    assert b"Linux version" in before[log_name] and b"web-linux-01" in before[log_name]
    assert b"PowerState/running" in before[view_name]
    evidence = event["data"]["evidence"]
    assert evidence["mode"] == "bootdiagnostics" and evidence["status"] == "captured"
    assert evidence["timedOut"] is False and evidence["container"].endswith(f"/{CONTAINER}")
    got = evidence["instances"][""]
    assert got["serialLog"]["status"] == "captured" and got["serialLog"]["url"].endswith(log_name)
    assert got["serialLog"]["bytes"] == len(before[log_name]) and got["serialLog"]["truncated"] is False
    assert got["instanceView"]["url"].endswith(view_name) and "snapshot" not in got
    s, status = await h.get(f"/api/reimage/{op}")
    assert status["evidence"] == evidence
    assert "sig=" not in str(evidence) and "se=" not in str(status)  # no SAS is ever kept


async def test_with_snapshot_a_managed_os_disk_is_snapshotted_and_tagged_before_the_post(new_host: NewHost) -> None:
    h: Host = await new_host(settings={"EVIDENCE_RETENTION_DAYS": "14"})
    s, body, _ = await h.reimage({"target": WINDOWS_VM, "requestId": "evidence-snap", "captureEvidence": "snapshot"})
    assert s == 202, body
    op = body["operationId"]
    [event] = await h.until_completed(1)
    [snap] = h.dh.sim.snapshots.values()
    disk = h.dh.sim.resources[WINDOWS_VM.lower()]["properties"]["storageProfile"]["osDisk"]["managedDisk"]["id"]
    assert snap.source == disk and snap.incremental and snap.tags["reimager-operation"] == op
    assert snap.tags["reimager-retain-until"] == "2026-01-15"  # the virtual clock's day + 14
    put = index_of(h, "PUT", r"/snapshots/")
    post = index_of(h, "POST", r"/app-win-01/reimage$")
    polled = [i for i, r in enumerate(requests(h)) if "/diskoperations/" in r["path"].lower()]
    assert put < post and polled and max(polled) < post  # it had Succeeded before the POST
    got = event["data"]["evidence"]["instances"][""]
    assert got["snapshot"] == {"status": "captured", "url": snap.id, "retainUntil": "2026-01-15"}
    assert event["data"]["evidence"]["mode"] == "snapshot" and event["data"]["evidence"]["status"] == "captured"


async def test_an_ephemeral_os_disk_is_not_snapshotted_and_the_record_says_why(new_host: NewHost) -> None:
    h: Host = await new_host()
    s, body, _ = await h.reimage({"target": EPHEMERAL_INSTANCE, "requestId": "evidence-eph",
                                  "captureEvidence": "snapshot"})
    assert s == 202, body
    [event] = await h.until_completed(1)
    assert h.dh.sim.snapshots == {} and not [r for r in requests(h) if r["method"] == "PUT"]
    got = event["data"]["evidence"]["instances"]["1"]
    assert got["snapshot"]["status"] == "skipped" and "ephemeral" in got["snapshot"]["reason"]
    assert got["serialLog"]["status"] == "captured" and got["instanceView"]["status"] == "captured"
    assert event["data"]["evidence"]["status"] == "captured"  # everything that can be captured was


@pytest.mark.parametrize("where", ["arm", "storage"])
async def test_a_hanging_evidence_endpoint_delays_the_post_by_at_most_the_timeout(new_host: NewHost,
                                                                               where: str) -> None:
    h: Host = await new_host(settings={"EVIDENCE_TIMEOUT_SECONDS": "2"})
    if where == "arm":
        h.dh.sim.faults.append(Fault.model_validate({"match": "retrieveBootDiagnosticsData", "delaySeconds": 30}))
    else:
        h.dh.sim.boot_diagnostics.delay_seconds = 30
    started = time.monotonic()
    s, body, _ = await h.reimage({"target": LINUX_VM, "requestId": f"evidence-hang-{where}"})
    waited = time.monotonic() - started
    assert s == 202 and body["status"] == "Accepted", body
    assert 2 <= waited < 2 + 3  # the timeout, plus the rest of the request (never the endpoint's 30 s)
    assert len(h.reimage_posts()) == 1
    [event] = await h.until_completed(1)
    evidence = event["data"]["evidence"]
    assert evidence["timedOut"] is True and evidence["status"] == "partial"
    got = evidence["instances"][""]
    assert got["instanceView"]["status"] == "captured"
    assert got["serialLog"]["status"] == "failed" and "EVIDENCE_TIMEOUT_SECONDS" in got["serialLog"]["reason"]


async def test_a_long_serial_log_keeps_its_end(new_host: NewHost, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shared.workflow.evidence.SERIAL_LOG_MAX_BYTES", 4096)
    h: Host = await new_host()
    h.dh.sim.serial_log_bytes = 50_000
    s, body, _ = await h.reimage({"target": LINUX_VM, "requestId": "evidence-long"})
    [event] = await h.until_completed(1)
    log = event["data"]["evidence"]["instances"][""]["serialLog"]
    assert log["truncated"] is True and log["bytes"] == 4096 and log["totalBytes"] >= 50_000
    stored = (await blobs(h))[f"{body['operationId']}/vm/serial-console.log"]
    whole = h.dh.sim.boot_diagnostics.serial_log(LINUX_VM.lower(), "").encode()
    assert stored == whole[-4096:]  # the end: what led up to the failure
    ranged = [r for r in h.dh.sim.boot_diagnostics.requests if r["range"]]
    assert len(ranged) == 1 and all(r["authorization"] is False for r in h.dh.sim.boot_diagnostics.requests)


async def test_evidence_off_reads_nothing_before_the_post(new_host: NewHost) -> None:
    h: Host = await new_host(settings={"EVIDENCE": "off"})
    s, body, _ = await h.reimage({"target": LINUX_VM, "requestId": "evidence-off"})
    s2, body2, _ = await h.reimage({"target": WINDOWS_VM, "requestId": "evidence-asked",
                                    "captureEvidence": "bootdiagnostics"})  # a request may still ask
    events = await h.until_completed(2)
    by_op = {e["data"]["operationId"]: e["data"] for e in events}
    assert by_op[body["operationId"]]["evidence"] is None
    assert by_op[body2["operationId"]]["evidence"]["status"] == "captured"
    assert not [r for r in requests(h) if "web-linux-01/retrievebootdiagnosticsdata" in r["path"].lower()]
    assert [r["path"].rsplit("/", 2)[-2] for r in requests(h) if r["path"].lower().endswith(
        "/retrievebootdiagnosticsdata")] == ["app-win-01"]


async def test_boot_diagnostics_not_enabled_is_skipped_without_asking_arm(new_host: NewHost) -> None:
    h: Host = await new_host()
    plain = f"{BASE}/virtualMachines/plain-01"
    h.dh.sim.upsert(plain, {"location": "westus", "properties": {"storageProfile": {"osDisk": {"osType": "Linux"}}}})
    s, body, _ = await h.reimage({"target": plain, "requestId": "evidence-plain"})
    [event] = await h.until_completed(1)
    got = event["data"]["evidence"]["instances"][""]
    assert got["serialLog"]["status"] == "skipped" and "not enabled" in got["serialLog"]["reason"]
    assert got["instanceView"]["status"] == "captured"
    assert not [r for r in requests(h) if "retrievebootdiagnosticsdata" in r["path"].lower()]


async def test_a_batch_reads_its_instances_once_and_links_each_requests_own_evidence(new_host: NewHost) -> None:
    h: Host = await new_host(settings={"BREAKER_PERCENT": "100", "FLEET_BUDGET_PERCENT": "100",
                                       "CANARY_INSTANCES": "0"})
    sset = f"{BASE}/virtualMachineScaleSets/diag"
    h.dh.sim.seed_scale_set(sset, 10, boot_diagnostics=True)
    ops = []
    for i in ("2", "3"):
        s, body, _ = await h.reimage({"target": f"{sset}/virtualMachines/{i}", "requestId": f"evidence-b{i}"})
        ops.append(body["operationId"])
    events = await h.until_completed(2)
    [post] = [r for r in h.reimage_posts() if "/diag/" in r["path"]]
    before = [r for r in requests(h)[:requests(h).index(post)]
              if "/diag/" in r["path"] and r["query"].get("$expand") == "instanceView"]
    assert len(before) == 1 and before[0]["path"].endswith("/diag/virtualMachines")  # one list read for both
    for e in events:
        d = e["data"]
        [key] = d["instanceIds"]
        got = d["evidence"]["instances"][key]
        assert list(d["evidence"]["instances"]) == [key]  # its own instance only
        assert got["serialLog"]["url"].endswith(f"{d['operationId']}/{key}/serial-console.log")
    assert len([r for r in h.dh.sim.boot_diagnostics.requests if r["path"].endswith(".log")]) == 2


async def test_a_flexible_sets_members_evidence_is_read_on_their_own_vm_paths(new_host: NewHost) -> None:
    """A Flexible set's members are VMs of their own: their models, boot diagnostics and OS disks are the VMs',
    never the set's Uniform instance paths (which a Flexible set does not have). One request naming three members:
    the canary takes the first (its evidence: that VM's GET), the rest follow in a batch (one filtered VM list read
    for both); each member's serial log, view and snapshot are captured before its own single-VM POST."""
    h: Host = await new_host(settings={"BREAKER_PERCENT": "100", "FLEET_BUDGET_PERCENT": "100"})
    flex = f"{BASE}/virtualMachineScaleSets/flexdiag"
    h.dh.sim.flex_reimage_any_os_disk = True  # a managed OS disk (a Flexible member's reimage: the spec's reading)
    h.dh.sim.seed_scale_set(flex, 6, flexible=True, ephemeral=False, boot_diagnostics=True)
    members = h.dh.sim.members(flex)[:3]
    names = sorted((m["name"] for m in members), key=lambda n: (len(n), n))
    s, body, _ = await h.reimage({"target": flex, "instanceIds": names, "requestId": "evidence-flex",
                                  "captureEvidence": "snapshot"})
    assert s == 202, body
    op = body["operationId"]
    [event] = await h.until_completed(1)
    d = event["data"]
    assert d["status"] == "Succeeded" and d["canary"]["instanceIds"] == [names[0]]
    log = requests(h)
    assert not [r for r in log if "/virtualmachinescalesets/flexdiag/" in r["path"].lower()]  # no instance path
    for name in names:
        vm = f"/virtualMachines/{name}"
        boot = index_of(h, "POST", rf"{vm}/retrieveBootDiagnosticsData$")
        assert "virtualMachineScaleSets" not in log[boot]["path"] and boot < index_of(h, "POST", rf"{vm}/reimage$")
        got = d["evidence"]["instances"][name]
        assert {what: item["status"] for what, item in got.items()} == {
            "serialLog": "captured", "instanceView": "captured", "snapshot": "captured"}, got
        assert got["serialLog"]["url"].endswith(f"{op}/{name}/serial-console.log")
    # the canary's member: its own GET; the two after it: one read of the group's VM list filtered on the set
    single = index_of(h, "GET", rf"/virtualMachines/{names[0]}$", **{"$expand": "instanceView"})
    listed = index_of(h, "GET", r"/resourceGroups/[^/]+/providers/Microsoft.Compute/virtualMachines$",
                      **{"$expand": "instanceView"})
    assert single < index_of(h, "POST", rf"/virtualMachines/{names[0]}/reimage$") < listed
    assert "flexdiag" in log[listed]["query"]["$filter"]
    disks = {m["name"]: h.dh.sim.resources[m["id"].lower()]["properties"]["storageProfile"]["osDisk"]["managedDisk"][
        "id"] for m in members}
    assert sorted(s.source for s in h.dh.sim.snapshots.values()) == sorted(disks.values())  # each member's own disk
    stored = await blobs(h)
    for m in members:
        text = stored[f"{op}/{m['name']}/serial-console.log"]
        assert b"Linux version" in text and m["id"].encode() in text
