"""The storage proxy in front of Azurite, driven through azure-data-tables as the ledger drives it: Azure's
entity limits (which Azurite does not enforce), and the failures Azure has and Azurite never produces, each
met by the SDK's own retry policy (docs/fidelity.md, rows L4-L16)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from azure.core import MatchConditions
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ServiceRequestError,
)
from azure.data.tables import TableTransactionError
from azure.data.tables.aio import TableClient, TableServiceClient

from devhost.outputs import table_endpoint
from devhost.serving import Served, serve
from devhost.storage import Chaos, StorageFault, StorageProxy
from devhost.storage.limits import MAX_ENTITY_BYTES, entity_bytes, refusal
from devhost.storage.wire import parse


@dataclass
class Tables:
    proxy: StorageProxy
    table: TableClient  # through the proxy, as the app's ledger
    direct: TableClient  # straight to Azurite, to see what was really written
    name: str

    def fault(self, **doc: Any) -> None:
        self.proxy.faults.append(StorageFault.model_validate(doc))

    def log(self) -> list[tuple[str, str, int | None, str | None]]:
        return [(r["method"], r["operation"], r.get("status"), r.get("effect")) for r in self.proxy.requests]


@pytest.fixture
async def tables(azurite_storage: str) -> AsyncIterator[Tables]:
    upstream = table_endpoint(azurite_storage)
    assert upstream is not None
    proxy = StorageProxy(upstream)
    served = await proxy.serve()
    name = "p" + uuid.uuid4().hex[:16]
    app = TableServiceClient.from_connection_string(proxy.connection_string(azurite_storage))
    direct = TableServiceClient.from_connection_string(azurite_storage)
    await direct.create_table(name)
    yield Tables(proxy, app.get_table_client(name), direct.get_table_client(name), name)
    await app.close()
    await direct.close()
    await proxy.close()
    await served.close()


def big_entity(characters: int, row: str = "big") -> dict[str, Any]:
    """`characters` of ASCII text split into properties of 30,000 characters, as the ledger splits documents."""
    chunks = [30_000] * (characters // 30_000) + ([characters % 30_000] if characters % 30_000 else [])
    return {"PartitionKey": "p", "RowKey": row, **{f"doc{i}": "x" * n for i, n in enumerate(chunks)}}


# ---- writes that happened although the answer said they failed --------------------------------------------
async def test_apply_then_500_on_insert_writes_and_the_sdk_retry_gets_409_for_its_own_write(tables: Tables) -> None:
    tables.fault(match={"method": "POST", "table": tables.name}, effect="applyThen500")
    with pytest.raises(ResourceExistsError):  # the caller that won is told it lost
        await tables.table.create_entity({"PartitionKey": "p", "RowKey": "a", "v": 1})
    assert (await tables.direct.get_entity("p", "a"))["v"] == 1
    assert tables.log() == [("POST", "insert", 500, "applyThen500"), ("POST", "insert", 409, None)]


async def test_apply_then_500_on_a_replace_with_etag_gets_412_for_its_own_write(tables: Tables) -> None:
    await tables.direct.create_entity({"PartitionKey": "p", "RowKey": "a", "v": 1})
    etag = (await tables.direct.get_entity("p", "a")).metadata["etag"]
    tables.fault(match={"method": "PUT"}, effect="applyThen500")
    with pytest.raises(ResourceModifiedError):
        await tables.table.update_entity({"PartitionKey": "p", "RowKey": "a", "v": 2}, mode="replace", etag=etag,
                                         match_condition=MatchConditions.IfNotModified)
    assert (await tables.direct.get_entity("p", "a"))["v"] == 2  # the write the caller was told failed


async def test_apply_then_500_on_a_transaction_fails_its_retry_atomically(tables: Tables) -> None:
    tables.fault(match={"method": "POST"}, effect="applyThen500")
    with pytest.raises(TableTransactionError):
        await tables.table.submit_transaction([("create", {"PartitionKey": "p", "RowKey": "1"}),
                                               ("create", {"PartitionKey": "p", "RowKey": "2"})])
    assert {e["RowKey"] async for e in tables.direct.list_entities()} == {"1", "2"}


async def test_apply_then_drop_on_insert_is_not_retried_and_the_entity_exists(tables: Tables) -> None:
    tables.fault(match={"method": "POST"}, effect="applyThenDrop")
    with pytest.raises(ServiceRequestError):  # azure-core retries no POST without an answer
        await tables.table.create_entity({"PartitionKey": "p", "RowKey": "a"})
    assert (await tables.direct.get_entity("p", "a"))["RowKey"] == "a"
    assert tables.log() == [("POST", "insert", 599, "applyThenDrop")]


async def test_apply_then_drop_on_an_upsert_put_is_resent_by_the_sdk(tables: Tables) -> None:
    tables.fault(match={"method": "PUT"}, effect="applyThenDrop")
    await tables.table.upsert_entity({"PartitionKey": "p", "RowKey": "a", "v": 1}, mode="replace")
    assert [e[:3] for e in tables.log()] == [("PUT", "upsert", 599), ("PUT", "upsert", 204)]


async def test_busy_503_is_not_forwarded_and_the_sdk_retries_it(tables: Tables) -> None:
    tables.fault(effect="busy503")
    await tables.table.upsert_entity({"PartitionKey": "p", "RowKey": "a"})
    assert tables.log() == [("PATCH", "upsertMerge", 503, "busy503"), ("PATCH", "upsertMerge", 204, None)]


async def test_busy_503_in_table_storages_error_shape(tables: Tables) -> None:
    async with aiohttp.ClientSession() as http:
        tables.fault(effect="busy503")
        async with http.get(f"{tables.proxy.url}/{tables.name}()") as r:
            body = await r.json(content_type=None)
            assert r.status == 503 and r.headers["x-ms-error-code"] == "ServerBusy"
    assert set(body["odata.error"]) == {"code", "message"} and body["odata.error"]["code"] == "ServerBusy"
    assert body["odata.error"]["message"]["value"].startswith("The server is currently unable to receive requests")
    async with aiohttp.ClientSession() as http:  # a continuation token the proxy never issued
        async with http.get(f"{tables.proxy.url}/{tables.name}()?NextPartitionKey=dh!W10=&NextRowKey=dh!") as r:
            assert r.status == 400 and r.headers["x-ms-error-code"] == "InvalidInput"


async def test_delay_waits_then_forwards(tables: Tables) -> None:
    tables.fault(match={"method": "GET"}, effect="delay", seconds=0.3)
    await tables.direct.create_entity({"PartitionKey": "p", "RowKey": "a"})
    started = time.monotonic()
    await tables.table.get_entity("p", "a")
    assert time.monotonic() - started >= 0.3
    assert tables.log() == [("GET", "read", 200, "delay")]


async def test_nth_matching_request_and_a_table_glob(tables: Tables) -> None:
    tables.fault(match={"table": tables.name[:5] + "*", "method": "write", "nth": 2}, effect="busy503")
    for row in "abc":
        await tables.table.upsert_entity({"PartitionKey": "p", "RowKey": row})
    assert [e[2] for e in tables.log()] == [204, 503, 204, 204]
    assert tables.proxy.faults == []  # used up


# ---- Azure's entity limits ----------------------------------------------------------------------------------
async def test_600k_characters_are_entity_too_large_although_azurite_accepts_them(tables: Tables) -> None:
    entity = big_entity(600_000)
    with pytest.raises(HttpResponseError) as refused:
        await tables.table.create_entity(entity)
    assert refused.value.status_code == 400
    assert "EntityTooLarge" in str(refused.value)  # the error document's code, as the SDK shows it
    await tables.direct.create_entity(entity)  # Azurite itself takes it (no size check on insert)
    with pytest.raises(HttpResponseError, match="EntityTooLarge"):  # nor as an upsert or a merge
        await tables.table.upsert_entity({**entity, "RowKey": "big2"})


def test_the_size_formula_counts_utf16() -> None:
    # 4 + 2*len(pk+rk) + (8 + 2*len(name) + 4 + 2*units)
    assert entity_bytes({"PartitionKey": "p", "RowKey": "r", "ab": "xyz"}) == 4 + 4 + 8 + 4 + 4 + 6
    assert entity_bytes({"PartitionKey": "", "RowKey": "", "s": "\U0001F600"}) == 4 + 8 + 2 + 4 + 4  # 2 units
    sized = {"PartitionKey": "", "RowKey": "", "n": 1, "n@odata.type": "Edm.Int64", "b": True, "d": 1.5}
    assert entity_bytes(sized) == 4 + (8 + 2 + 8) + (8 + 2 + 1) + (8 + 2 + 8)
    fits = big_entity(524_000)
    assert entity_bytes(fits) <= MAX_ENTITY_BYTES and refusal(fits) is None
    assert refusal(big_entity(524_100)) == "EntityTooLarge"  # 1,048,588 bytes


async def test_property_limits_are_refused_as_azure_refuses_them(tables: Tables) -> None:
    cases: dict[str, dict[str, Any]] = {
        "PropertyValueTooLarge": {"s": "x" * 32_769},
        "TooManyProperties": {f"p{i}": i for i in range(253)},
        "PropertyNameTooLong": {"n" * 256: 1},
    }
    for code, props in cases.items():
        with pytest.raises(HttpResponseError) as refused:
            await tables.table.upsert_entity({"PartitionKey": "p", "RowKey": code, **props})
        assert refused.value.status_code == 400 and refused.value.error_code == code  # type: ignore[attr-defined]
    await tables.table.upsert_entity({"PartitionKey": "p", "RowKey": "ok", "s": "x" * 32_768,
                                      **{f"p{i}": i for i in range(251)}})


async def test_limits_inside_a_transaction_fail_it_at_that_operation(tables: Tables) -> None:
    with pytest.raises(TableTransactionError) as refused:
        await tables.table.submit_transaction([("upsert", {"PartitionKey": "p", "RowKey": "small"}),
                                               ("upsert", big_entity(600_000, "huge"))])
    assert refused.value.error_code == "EntityTooLarge"  # type: ignore[attr-defined]
    assert str(refused.value).startswith("1:")
    assert [e async for e in tables.direct.list_entities()] == []  # nothing of it was written


# ---- query pages Azure may answer ---------------------------------------------------------------------------
async def test_an_empty_page_with_a_continuation_then_the_real_page(tables: Tables) -> None:
    for i in range(3):
        await tables.direct.create_entity({"PartitionKey": "q", "RowKey": f"r{i}"})
    tables.fault(effect="emptyPage")
    pages = tables.table.query_entities("PartitionKey eq 'q'", results_per_page=10).by_page()
    seen = []
    async for page in pages:
        seen.append(([e["RowKey"] async for e in page], pages.continuation_token))  # type: ignore[attr-defined]
    assert seen[0][0] == [] and seen[0][1] is not None  # empty, and yet a token
    assert seen[1] == (["r0", "r1", "r2"], None)


async def test_short_pages_resume_where_they_stopped(tables: Tables) -> None:
    for i in range(7):
        await tables.direct.create_entity({"PartitionKey": "q", "RowKey": f"r{i}", "v": i})
    tables.fault(effect="shortPage", times=2)
    tables.fault(effect="shortPage", keep=0)
    pages = tables.table.query_entities("PartitionKey eq 'q'", results_per_page=4, select=["v"]).by_page()
    sizes, values = [], []
    async for page in pages:
        items = [dict(e) async for e in page]
        sizes.append(len(items))
        values += [e["v"] for e in items]
        assert all(set(e) == {"v"} for e in items)  # the keys the proxy needed stay out of a $select answer
    assert values == list(range(7)) and sizes[:3] == [2, 1, 0]


async def test_item_iteration_follows_empty_pages_without_noticing(tables: Tables) -> None:
    for i in range(5):
        await tables.direct.create_entity({"PartitionKey": "q", "RowKey": f"r{i}"})
    tables.fault(effect="emptyPage", times=3)
    rows = [e["RowKey"] async for e in tables.table.query_entities("PartitionKey eq 'q'", results_per_page=2)]
    assert rows == [f"r{i}" for i in range(5)]


# ---- the proxy's own record and control ----------------------------------------------------------------------
async def test_the_request_log_names_tables_and_keys_never_credentials(tables: Tables,
                                                                       azurite_storage: str) -> None:
    await tables.table.upsert_entity({"PartitionKey": "p'1", "RowKey": "r 2"})
    await tables.table.delete_entity("p'1", "r 2")
    text = json.dumps(list(tables.proxy.requests))
    assert [(r["operation"], r["table"], r["partitionKey"], r["rowKey"]) for r in tables.proxy.requests] == [
        ("upsertMerge", tables.name, "p'1", "r 2"), ("delete", tables.name, "p'1", "r 2")]
    key = azurite_storage.split("AccountKey=")[1].split(";")[0]
    assert key not in text and "SharedKey" not in text and "sig=" not in text


async def test_the_control_routes(tables: Tables) -> None:
    app = web.Application()
    app.add_routes(tables.proxy.routes())
    served: Served = await serve(app)
    try:
        async with aiohttp.ClientSession() as http:
            fault = {"match": {"table": tables.name, "method": "POST", "nth": 2}, "effect": "applyThen500",
                     "times": 1}
            async with http.post(served.url + "/devhost/storage/faults", json=fault) as r:
                assert r.status == 201 and await r.json() == {"queued": 1}
            async with http.post(served.url + "/devhost/storage/faults", json={"effect": "explode"}) as r:
                assert r.status == 400
            async with http.get(served.url + "/devhost/storage/faults") as r:
                listed = await r.json()
            assert listed["faults"][0]["effect"] == "applyThen500" and listed["faults"][0]["remaining"] == 1
            assert listed["chaos"] is None
            await tables.table.upsert_entity({"PartitionKey": "p", "RowKey": "a"})
            async with http.get(served.url + "/devhost/storage/requests") as r:
                assert [x["status"] for x in await r.json()] == [204]
            async with http.delete(served.url + "/devhost/storage/faults") as r:
                assert await r.json() == {"cleared": 1}
    finally:
        await served.close()


def test_chaos_is_seeded_and_picks_effects_for_the_kind_of_request() -> None:
    write = parse("POST", "/acct/t", "/acct", b'{"PartitionKey": "p", "RowKey": "r"}', {})
    query = parse("GET", "/acct/t()", "/acct", b"", {})

    def picks(seed: int) -> list[str | None]:
        chaos = Chaos(0.5, seed)
        return [(f.effect if (f := chaos.pick(r)) else None) for r in [write, query] * 50]

    assert picks(7) == picks(7) and picks(7) != picks(8)
    effects = picks(7)
    assert {e for e in effects[0::2] if e} <= {"applyThen500", "applyThenDrop", "busy503", "delay"}
    assert {e for e in effects[1::2] if e} <= {"emptyPage", "shortPage", "busy503", "delay"}
    assert Chaos.parse("0.03:42").seed == 42 and Chaos.parse("0.03").seed > 0
    with pytest.raises(ValueError):
        Chaos.parse("lots")
