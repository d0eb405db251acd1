"""The storage proxy: devhost puts it between the app and Azurite's table endpoint (the app's
`AzureWebJobsStorage` names the proxy), so the ledger meets Table Storage's failures that Azurite never
produces. With no fault queued and no chaos it forwards every request unchanged, apart from Azure's entity
limits (devhost/storage/limits.py), which it always enforces.

Effects (a queued `StorageFault` or the random mode):
- `applyThen500`: forward, then answer 500 `OperationTimedOut` (the write happened; azure-core retries a
  POST/PUT/PATCH/DELETE answered 500, and the retry meets the first attempt's write: 409 or 412);
- `applyThenDrop`: forward, then close the connection without an answer;
- `busy503`: answer 503 `ServerBusy` without forwarding;
- `delay`: wait `seconds`, then forward (past the 30 s server timeout: `applyThen500` at 30 s);
- `emptyPage` / `shortPage` (queries): an empty page, or a short one, with a continuation token.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections import deque
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from aiohttp import web
from multidict import MultiDict, MultiDictProxy
from pydantic import TypeAdapter
from yarl import URL

from devhost.serving import Served, append_posted, serve
from devhost.storage import errors, limits, paging
from devhost.storage.faults import SERVER_TIMEOUT, Chaos, StorageFault
from devhost.storage.wire import TableRequest, parse

log = logging.getLogger("devhost.storage")
_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "accept-encoding"}
_HOP_BACK = {"content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding", "server"}
_FAULTS = TypeAdapter(list[StorageFault])
MAX_BODY = 8 * 1024 * 1024  # past Azurite's 4 MiB body limit, so its own 413 answers a larger one


class StorageProxy:
    def __init__(self, upstream: str, *, chaos: Chaos | None = None, log_size: int = 10_000) -> None:
        """`upstream`: the table endpoint, e.g. `http://127.0.0.1:10002/devstoreaccount1`."""
        parts = urlsplit(upstream.rstrip("/"))
        self.origin = urlunsplit((parts.scheme, parts.netloc, "", "", ""))
        self.base_path = parts.path
        self.chaos = chaos
        self.faults: list[StorageFault] = []
        self.requests: deque[dict[str, Any]] = deque(maxlen=log_size)
        self._seq = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    # ---- lifecycle ------------------------------------------------------------------------
    async def serve(self, host: str = "127.0.0.1") -> Served:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        served = await serve(app, host)
        self.url = served.url + self.base_path
        return served

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def connection_string(self, original: str) -> str:
        """`original` with its TableEndpoint pointed at the proxy (the account and key unchanged)."""
        parts = [p for p in original.split(";") if p and not p.lower().startswith("tableendpoint=")]
        return ";".join([*parts, f"TableEndpoint={self.url}"]) + ";"

    # ---- control (devhost's /devhost/storage/* routes) ------------------------------------
    def routes(self) -> list[web.RouteDef]:
        return [web.get("/devhost/storage/faults", self._list_faults),
                web.post("/devhost/storage/faults", self._add_faults),
                web.delete("/devhost/storage/faults", self._clear_faults),
                web.get("/devhost/storage/requests", self._list_requests)]

    async def _add_faults(self, request: web.Request) -> web.Response:
        return await append_posted(request, _FAULTS, self.faults)

    async def _list_faults(self, request: web.Request) -> web.Response:
        chaos = self.chaos.public() if self.chaos is not None else None
        return web.json_response({"faults": [f.public() for f in self.faults], "chaos": chaos})

    async def _clear_faults(self, request: web.Request) -> web.Response:
        cleared = len(self.faults)
        self.faults.clear()
        return web.json_response({"cleared": cleared})

    async def _list_requests(self, request: web.Request) -> web.Response:
        return web.json_response(list(self.requests))

    # ---- the proxy ------------------------------------------------------------------------
    def _fault_for(self, req: TableRequest) -> StorageFault | None:
        for fault in self.faults:
            if fault.take(req):
                if fault.used_up:
                    self.faults.remove(fault)
                return fault
        return self.chaos.pick(req) if self.chaos is not None else None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        url = URL(request.raw_path, encoded=True)
        req = parse(request.method, url.raw_path, self.base_path, body, dict(request.headers))
        entry = {"seq": next(self._seq), **req.public()}
        self.requests.append(entry)
        version = request.headers.get("x-ms-version")
        refused = self._refusal(req)
        if refused is not None:
            code, index = refused
            entry["refused"] = code
            if req.inner:
                entry["status"] = 202
                return errors.batch_response(code, index, *req.boundaries, version=version)
            entry["status"] = errors.MESSAGES[code][0]
            return errors.response(code, version)
        fault = self._fault_for(req)
        if fault is not None:
            entry["effect"] = fault.effect + (" (chaos)" if fault.chaos else "")
        answer = await self._answer(request, req, url, body, fault)
        entry["status"] = answer.status
        return answer

    @staticmethod
    def _refusal(req: TableRequest) -> tuple[str, int] | None:
        """Azure's entity limits, on every insert, update and merge, and inside a transaction: (code, index)."""
        for index, op in enumerate(req.inner or [req]):
            if op.method in ("POST", "PUT", "PATCH", "MERGE") and op.operation != "createTable":
                code = limits.refusal(op.body, op.partition_key, op.row_key)
                if code is not None:
                    return code, index
        return None

    async def _answer(self, request: web.Request, req: TableRequest, url: URL, body: bytes,
                      fault: StorageFault | None) -> web.Response:
        effect = fault.effect if fault is not None else None
        version = request.headers.get("x-ms-version")
        if effect == "busy503":
            return errors.response("ServerBusy", version)
        if fault is not None and effect == "delay":
            await asyncio.sleep(min(fault.seconds, SERVER_TIMEOUT))
            if fault.seconds > SERVER_TIMEOUT:
                effect = "applyThen500"
        query: MultiDictProxy[str] | MultiDict[str] = url.query
        upstream: list[str] | None = None
        after: list[str] | None = None
        added: list[str] = []
        if req.is_query:
            try:
                query, upstream, after, added = paging.upstream_query(url.query, effect in ("emptyPage", "shortPage"))
            except ValueError:  # a continuation token that is not one the proxy issued
                return errors.response("InvalidInput", version)
        target = url if query is url.query else url.with_query(query)
        try:
            status, headers, content = await self._forward(request, target, body)
        except aiohttp.ClientError as exc:  # Azurite unreachable: the client sees its connection fail
            log.warning("storage proxy: upstream %s failed: %s", self.origin, exc)
            effect = "applyThenDrop"
            status, headers, content = 599, {}, b""
        if effect == "applyThen500":
            return errors.response("OperationTimedOut", version)
        if effect == "applyThenDrop":
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=599)
        if req.is_query and status == 200:
            cut = {"emptyPage": "empty", "shortPage": "short"}.get(effect or "")
            keep = fault.keep if fault is not None else None
            return self._page(content, headers, upstream=upstream, after=after, added=added, cut=cut, keep=keep)
        return web.Response(status=status, body=content, headers=headers)

    def _page(self, content: bytes, headers: dict[str, str], **how: Any) -> web.Response:
        doc = json.loads(content)
        page, more = paging.reshape(doc, headers, **how)
        kept = {k: v for k, v in headers.items() if not k.lower().startswith("x-ms-continuation-")}
        return web.Response(status=200, body=json.dumps(page, separators=(",", ":")).encode(),
                            headers={**kept, **more})

    async def _forward(self, request: web.Request, url: URL, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        target = URL(self.origin + url.raw_path_qs, encoded=True)
        async with self._session.request(request.method, target, headers=headers, data=body or None,
                                         skip_auto_headers=("Content-Type", "User-Agent")) as answer:
            content = await answer.read()
            back = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BACK}
            return answer.status, back, content
