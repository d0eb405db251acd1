"""GET /api/reimage (history) and the verified caller of POST /api/reimage, through devhost's real HTTP."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from devhost.host import DEMO_GROUP, DEMO_SUBSCRIPTION
from shared.domain.ids import operation_id
from shared.domain.records import OperationRecord
from shared.domain.targets import TargetKind, parse_target
from tests.integration.conftest import LINUX_VM, VMSS, WINDOWS_VM, Host

NewHost = Callable[..., Any]
T0 = datetime(2026, 1, 1, tzinfo=UTC)
STATUSES = ("Succeeded", "Failed", "Canceled", "TimedOut", "Running")


def targets() -> list[str]:
    base = f"/subscriptions/{DEMO_SUBSCRIPTION}/resourceGroups/{DEMO_GROUP}/providers/Microsoft.Compute"
    vms = [f"{base}/virtualMachines/vm-{i:02d}" for i in range(14)]
    sets = [f"{base}/virtualMachineScaleSets/set-{i}" for i in range(6)]
    return vms + sets


async def seed(host: Host, count: int = 300) -> list[OperationRecord]:
    """`count` operations over 20 targets, one second apart, written by the real ledger (claim + index)."""
    ledger = host.dh.runtime.ledger  # type: ignore[union-attr]
    all_targets = targets()
    records = []
    for i in range(count):
        target = parse_target(all_targets[i % len(all_targets)])
        when = T0 + timedelta(seconds=i)
        records.append(OperationRecord(
            operation_id=operation_id(f"seed-{i}"), request_id=f"seed-{i}", target=target.id,
            lease_key=target.lock_key, instance_ids=[str(i % 4)] if target.kind is not TargetKind.VM else None,
            trigger="http",
            requested_by=f"user-{i % 7}", status=STATUSES[i % len(STATUSES)], created_time=when,
            last_updated_time=when))

    async def write(record: OperationRecord) -> None:
        await ledger.claim(record)
        await ledger.index(record)

    for start in range(0, count, 50):
        await asyncio.gather(*(write(r) for r in records[start:start + 50]))
    return records


async def get(host: Host, path: str, **params: str) -> tuple[int, Any]:
    async with host.http.get(host.url + path, params=params, headers=host.key) as r:
        return r.status, await r.json()


async def follow(host: Host, **params: str) -> tuple[list[str], int]:
    """Every page of a listing, by nextLink; returns the operation ids in order and the number of pages."""
    status, body = await get(host, "/api/reimage", **params)
    assert status == 200, body
    ids = [v["operationId"] for v in body["value"]]
    pages = 1
    while "nextLink" in body:
        link = urlsplit(body["nextLink"])
        assert "code" not in parse_qs(link.query)  # the function key never goes into a link
        async with host.http.get(body["nextLink"], headers=host.key) as r:
            assert r.status == 200
            body = await r.json()
        ids += [v["operationId"] for v in body["value"]]
        pages += 1
    return ids, pages


async def test_history_by_target_is_that_targets_newest_first_and_pages_exactly_once(host: Host) -> None:
    records = await seed(host)
    for index in (0, 3, 17):  # a VM, another VM, a scale set
        target = targets()[index]
        expected = [r.operation_id for r in reversed(records) if r.target == parse_target(target).id]
        assert len(expected) == 15
        ids, pages = await follow(host, target=target, top="4")
        assert ids == expected and pages == 4
    # The target is normalised like the request contract: other casing, a trailing slash.
    messy = targets()[3].replace("/virtualMachines/", "/VIRTUALMACHINES/") + "/"
    ids, _ = await follow(host, target=messy, top="500")
    assert len(ids) == 15


async def test_history_of_everything_pages_every_record_exactly_once(host: Host) -> None:
    records = await seed(host)
    ids, pages = await follow(host, top="37")
    assert ids == [r.operation_id for r in reversed(records)] and pages == 9
    status, body = await get(host, "/api/reimage")
    assert status == 200 and len(body["value"]) == 50  # default top
    status, body = await get(host, "/api/reimage", top="500")
    assert len(body["value"]) == 300 and "nextLink" not in body
    item = body["value"][0]
    assert item == records[-1].view()  # each item is the status document


async def test_history_since_and_status_filter(host: Host) -> None:
    records = await seed(host)
    since = (T0 + timedelta(seconds=250)).isoformat()
    ids, _ = await follow(host, since=since, top="500")
    assert ids == [r.operation_id for r in reversed(records) if r.created_time >= T0 + timedelta(seconds=250)]
    target = targets()[2]
    ids, _ = await follow(host, target=target, since="2026-01-01T00:02:00Z", status="canceled", top="2")
    assert ids == [r.operation_id for r in reversed(records) if r.target == parse_target(target).id
                   and r.created_time >= T0 + timedelta(minutes=2) and r.status == "Canceled"]
    assert len(ids) == 9  # targets()[2] gets i = 2, 22, ... whose status is always Canceled; 9 of them after 2 min
    ids, _ = await follow(host, target=target, status="Succeeded", top="3")
    assert ids == []  # the filter read past every empty page and found none
    status, body = await get(host, "/api/reimage", since="2026-01-02")
    assert status == 200 and body == {"value": []}


@pytest.mark.parametrize(("params", "parameter"), [
    ({"top": "0"}, "top"), ({"top": "501"}, "top"), ({"top": "ten"}, "top"), ({"top": "-1"}, "top"),
    ({"since": "yesterday"}, "since"), ({"status": "Exploded"}, "status"),
    ({"target": "/subscriptions/x"}, "target"), ({"target": "rg/vm"}, "target"),
    ({"continuationToken": "garbage"}, "continuationToken"),
    ({"continuationToken": base64.urlsafe_b64encode(json.dumps({"q": "x", "l": "e30"}).encode()).decode()},
     "continuationToken"),
    ({"tpo": "5"}, "tpo"),
])
async def test_history_bad_parameters_are_400_naming_the_parameter(host: Host, params: dict[str, str],
                                                                    parameter: str) -> None:
    status, body = await get(host, "/api/reimage", **params)
    assert status == 400, body
    assert body["error"]["code"] == "InvalidRequest" and body["error"]["target"] == parameter


async def test_a_token_from_another_query_is_refused(host: Host) -> None:
    await seed(host, 40)
    status, body = await get(host, "/api/reimage", target=targets()[0], top="1")
    token = parse_qs(urlsplit(body["nextLink"]).query)["continuationToken"][0]
    status, body = await get(host, "/api/reimage", target=targets()[1], top="1", continuationToken=token)
    assert status == 400 and body["error"]["target"] == "continuationToken"
    status, body = await get(host, "/api/reimage", target=targets()[0], top="1", continuationToken=token)
    assert status == 200 and len(body["value"]) == 1


async def test_a_reimage_shows_in_the_history_of_its_target(host: Host) -> None:
    s, accepted, _ = await host.reimage({"target": VMSS, "instanceIds": ["1"], "requestedBy": "carol"})
    assert s == 202
    await host.until_completed()
    for target in (VMSS, VMSS + "/virtualMachines/1"):
        status, body = await get(host, "/api/reimage", target=target)
        assert [v["operationId"] for v in body["value"]] == [accepted["operationId"]]
        assert body["value"][0]["status"] == "Succeeded" and body["value"][0]["requestedBy"] == "carol"
    status, body = await get(host, "/api/reimage", target=VMSS + "/virtualMachines/2")
    assert body == {"value": []}  # another instance of the set: not this operation


# ---- verified identity ----------------------------------------------------------------------------------
def principal_header(name: str) -> str:
    doc = {"auth_typ": "aad", "name_typ": "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name",
           "role_typ": "http://schemas.microsoft.com/ws/2008/06/identity/claims/role",
           "claims": [{"typ": "name", "val": "Mallory Display"}, {"typ": "preferred_username", "val": name},
                      {"typ": "http://schemas.microsoft.com/identity/claims/objectidentifier",
                       "val": "0b2f6c4e-1111-2222-3333-444455556666"}]}
    return base64.b64encode(json.dumps(doc).encode()).decode()


async def reimage_as(host: Host, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    async with host.http.post(host.url + "/api/reimage", json=body, headers={**host.key, **headers}) as r:
        assert r.status == 202, await r.text()
        accepted: dict[str, Any] = await r.json()
    return accepted


async def test_a_forged_client_principal_is_ignored_without_easy_auth(host: Host) -> None:
    forged = {"X-MS-CLIENT-PRINCIPAL": principal_header("ceo@contoso.com"),
              "X-MS-CLIENT-PRINCIPAL-NAME": "ceo@contoso.com"}
    accepted = await reimage_as(host, {"target": LINUX_VM, "requestedBy": "mallory"}, forged)
    assert accepted["requestedBy"] == "mallory" and accepted["requestedByVerified"] == "unverified"
    events = await host.until_completed()
    assert events[0]["data"]["requestedBy"] == "mallory"
    assert events[0]["data"]["requestedByVerified"] == "unverified"


async def test_the_platforms_principal_is_recorded_with_easy_auth(new_host: NewHost) -> None:
    host: Host = await new_host(settings={"EASY_AUTH_ENABLED": "true"})
    headers = {"X-MS-CLIENT-PRINCIPAL": principal_header("alice@contoso.com"),
               "X-MS-CLIENT-PRINCIPAL-NAME": "alice@contoso.com",
               "X-MS-CLIENT-PRINCIPAL-ID": "0b2f6c4e-1111-2222-3333-444455556666"}
    accepted = await reimage_as(host, {"target": LINUX_VM, "requestedBy": "someone-else"}, headers)
    assert accepted["requestedBy"] == "alice@contoso.com" and accepted["requestedByVerified"] == "easyauth"
    status, view = await host.get(f"/api/reimage/{accepted['operationId']}")
    assert view["requestedBy"] == "alice@contoso.com" and view["requestedByVerified"] == "easyauth"
    events = await host.until_completed()
    assert (events[0]["data"]["requestedBy"], events[0]["data"]["requestedByVerified"]) == \
        ("alice@contoso.com", "easyauth")
    # Without the headers (no sign-in on this call), the body's name is kept and marked unverified.
    accepted = await reimage_as(host, {"target": WINDOWS_VM, "requestedBy": "bob"}, {})
    assert accepted["requestedBy"] == "bob" and accepted["requestedByVerified"] == "unverified"
