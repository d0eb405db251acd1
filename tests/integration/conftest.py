"""In-process devhost on a virtual clock: real HTTP on loopback, real SDKs, minutes in milliseconds."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from devhost.clock import VirtualClock
from devhost.durable import drive
from devhost.host import DEMO_GROUP, DEMO_SUBSCRIPTION, DevHost
from tests.conftest import ledger_settings

BASE = f"/subscriptions/{DEMO_SUBSCRIPTION}/resourceGroups/{DEMO_GROUP}/providers/Microsoft.Compute"
LINUX_VM = f"{BASE}/virtualMachines/web-linux-01"
WINDOWS_VM = f"{BASE}/virtualMachines/app-win-01"
PROTECTED_VM = f"{BASE}/virtualMachines/db-linux-01"
VMSS = f"{BASE}/virtualMachineScaleSets/workers"


NewHost = Callable[..., Any]  # the `new_host` fixture: `await new_host(settings={...}, ...)` gives a Host


def checks(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A dry run's checks by name."""
    return {c["name"]: c for c in answer["checks"]}


def failed(answer: dict[str, Any]) -> list[str]:
    """The names of a dry run's failed checks, in the order it reports them."""
    return [c["name"] for c in answer["checks"] if c["result"] == "failed"]


@dataclass
class Host:
    dh: DevHost
    http: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return self.dh.functions_url

    @property
    def key(self) -> dict[str, str]:
        return {"x-functions-key": self.dh.function_key}

    async def post(self, path: str, body: Any, raw: bytes | None = None) -> tuple[int, Any, dict[str, str]]:
        data = raw if raw is not None else json.dumps(body).encode()
        async with self.http.post(self.url + path, data=data, headers=self.key) as r:
            text = await r.text()
            return r.status, (json.loads(text) if text else None), dict(r.headers)

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.http.get(self.url + path, headers=self.key) as r:
            return r.status, await r.json()

    async def reimage(self, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        return await self.post("/api/reimage", body)

    async def queue(self, body: Any, **props: Any) -> tuple[int, Any]:
        doc = {"input": body if isinstance(body, str) else json.dumps(body), **props}
        status, payload, _ = await self.post("/admin/functions/reimage_queue", doc)
        return status, payload

    def events(self, event_type: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.dh.events() if event_type is None or e["type"] == event_type]

    def completed(self) -> list[dict[str, Any]]:
        return self.events("reimager.operation.completed")

    async def settle(self, until: Callable[[], bool], max_virtual_seconds: float = 7200) -> None:
        assert self.dh.engine is not None
        await drive(self.dh.engine, until, max_virtual_seconds=max_virtual_seconds, step=self.dh.quiesce)

    async def until_completed(self, count: int = 1) -> list[dict[str, Any]]:
        await self.settle(lambda: len(self.completed()) >= count)
        return self.completed()

    def reimage_posts(self) -> list[dict[str, Any]]:
        return self.dh.sim.reimage_posts()


async def make_host(tmp_path: Path, **kw: Any) -> DevHost:
    kw.setdefault("operation_seconds", 60.0)
    kw.setdefault("retry_after", 10)
    return await DevHost(clock=VirtualClock(), state_dir=tmp_path / "devhost", **kw).start()


SETTING_NAMES = ("ALLOWED_SCOPES", "COOLDOWN_MINUTES", "ARM_ENDPOINT", "EVENTS_FILE", "IDENTITY_ENDPOINT",
                 "IDENTITY_HEADER", "DEFAULT_SUBSCRIPTION_ID", "MAX_INSTANCES_PER_REQUEST", "POLL_MIN_SECONDS",
                 "POLL_MAX_SECONDS", "POLL_DEFAULT_SECONDS", "OPERATION_TIMEOUT_MINUTES", "SUBMIT_TIMEOUT_SECONDS",
                 "POLLS_PER_GENERATION", "ServiceBusConnection__fullyQualifiedNamespace", "ARM_TIMEOUT_SECONDS")


@pytest.fixture
async def new_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   azurite_storage: str) -> AsyncIterator[Callable[..., Any]]:
    """Factory: `await new_host(settings={...}, operation_seconds=..., retry_after=...)`."""
    for name in SETTING_NAMES:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    made: list[tuple[DevHost, aiohttp.ClientSession]] = []

    async def factory(**kw: Any) -> Host:
        kw["settings"] = {**ledger_settings(azurite_storage), **(kw.get("settings") or {})}
        dh = await make_host(tmp_path / f"h{len(made)}", **kw)
        http = aiohttp.ClientSession()
        made.append((dh, http))
        return Host(dh, http)

    yield factory
    for dh, http in made:
        await http.close()
        await dh.stop()


@pytest.fixture
async def host(new_host: Callable[..., Any]) -> Host:
    h: Host = await new_host()
    return h


