"""Shared fixtures: the identity endpoint and Compute simulator on real loopback ports."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from devhost import azurite
from devhost.clock import Clock, VirtualClock
from devhost.compute import ComputeSimulator
from devhost.identity import PATH, TokenIssuer
from devhost.serving import Served, serve
from shared.settings import Settings
from tests.helpers import SUB

# The longest tests (minutes, not seconds) run first: `make test` shares them among its xdist workers
# (--dist load hands out tests in collection order), so none of them starts last and stretches the run.
LONGEST_FIRST = ("tests/e2e/test_demo_twice.py", "tests/reliability/test_storage_faults.py",
                 "tests/e2e/test_soak.py", "tests/reliability/test_crashes_and_load.py",
                 "tests/integration/test_arm_quota.py", "tests/e2e/test_kill9_restart.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: every other test keeps its place


@dataclass
class StandIns:
    clock: Clock
    issuer: TokenIssuer
    sim: ComputeSimulator
    arm_url: str
    identity_url: str
    servers: list[Served]

    def settings(self, **overrides: str) -> Settings:
        values = {"ARM_ENDPOINT": self.arm_url, "ALLOWED_SCOPES": f"/subscriptions/{SUB}"}
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]


async def start_standins(monkeypatch: pytest.MonkeyPatch, clock: Clock, **sim_kw: object) -> StandIns:
    issuer = TokenIssuer()
    sim = ComputeSimulator(clock=clock, issuer=issuer, **sim_kw)  # type: ignore[arg-type]
    identity = await serve(issuer.app())
    arm = await serve(sim.app())
    monkeypatch.setenv("IDENTITY_ENDPOINT", identity.url + PATH)
    monkeypatch.setenv("IDENTITY_HEADER", issuer.header_secret)
    monkeypatch.delenv("MSI_ENDPOINT", raising=False)
    return StandIns(clock, issuer, sim, arm.url, identity.url + PATH, [identity, arm])


async def _serving(monkeypatch: pytest.MonkeyPatch, clock: Clock, **sim_kw: object) -> AsyncIterator[StandIns]:
    s = await start_standins(monkeypatch, clock, **sim_kw)
    yield s
    for server in s.servers:
        await server.close()


@pytest.fixture
async def standins(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[StandIns]:
    """Virtual clock: operations end when the test advances time."""
    async for s in _serving(monkeypatch, VirtualClock(), operation_seconds=60.0, retry_after=10):
        yield s


@pytest.fixture
async def realtime_standins(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[StandIns]:
    """Real clock and short operations, for clients that poll on their own (azure-mgmt-compute)."""
    async for s in _serving(monkeypatch, Clock(), operation_seconds=0.3, retry_after=0):
        yield s


@pytest.fixture(scope="session")
def azurite_storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real Azurite for the session; each devhost gets tables of its own (`ledger_settings`)."""
    emulator = asyncio.run(azurite.start(tmp_path_factory.mktemp("azurite")))
    yield emulator.connection_string
    asyncio.run(emulator.stop())


def ledger_settings(connection_string: str) -> dict[str, str]:
    return {"AzureWebJobsStorage": connection_string, "LEDGER_TABLE_PREFIX": f"t{uuid.uuid4().hex[:16]}"}
