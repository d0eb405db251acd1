"""The one place for process state: settings, clock, ARM client, ledger and publisher.

The function app builds a `Runtime` from its settings on first use (cold start: nothing at
import, and no network client is created before it is needed); devhost and tests build their
own and `install` it. Everything else receives the runtime; nothing else keeps process state.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from shared.adapters.arm.reads import SharedReads
from shared.adapters.credentials import app_credential
from shared.adapters.telemetry import TrackedPublisher, configure
from shared.domain.events import Publisher
from shared.settings import Settings, load_settings

if TYPE_CHECKING:
    from shared.adapters.arm.client import ComputeClient
    from shared.adapters.evidence import EvidenceStore
    from shared.adapters.ledger import Ledger


Clock = Callable[[], datetime]
Sleep = Callable[[float], Awaitable[None]]


def wall_clock() -> datetime:
    return datetime.now(UTC)


class Runtime:
    """Lazily creates each client on first use and reuses it; `close` releases them."""

    def __init__(self, settings: Settings, *, clock: Clock = wall_clock, sleep: Sleep = asyncio.sleep,
                 credential_factory: Callable[[], Any] | None = None, publisher: Publisher | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self.sleep = sleep
        self._credential_factory = credential_factory
        self._publisher = publisher

    def now(self) -> datetime:
        return self.clock()

    # The clients' modules load on first use: azure-core's pipeline, aiohttp, azure-data-tables and
    # azure-servicebus cost cold start, and a call that needs none of them should not pay for them.
    @cached_property
    def compute(self) -> ComputeClient:
        from shared.adapters.arm.client import ComputeClient  # heavy: azure-core pipeline, aiohttp

        credential = self._credential_factory() if self._credential_factory else None
        return ComputeClient(self.settings, credential=credential, sleep=self.sleep,
                             clock=lambda: self.clock().timestamp(), read_timeout=self.settings.arm_timeout_seconds,
                             owns_credential=True)

    @cached_property
    def once(self) -> SharedReads[Any]:
        """Runs of one step asked at the same time (an activity delivered twice side by side) share one run and its
        answer; nothing is kept (shared/adapters/arm/reads.py)."""
        return SharedReads(0, lambda: self.clock().timestamp())

    @cached_property
    def ledger(self) -> Ledger:
        from shared.adapters.ledger import make_ledger  # heavy: azure-data-tables

        return make_ledger(self.settings, self._credential_factory)

    @cached_property
    def evidence(self) -> EvidenceStore | None:
        """The evidence container (None: no blob service configured; capture then says so)."""
        from shared.adapters.evidence import make_store  # heavy: azure-storage-blob

        return make_store(self.settings, self._credential_factory)

    @property
    def publisher(self) -> Publisher:
        """The publisher, recording each event it sends as telemetry too (a no-op while telemetry is off)."""
        if self._publisher is None:
            from shared.adapters.publishers import make_publisher  # heavy when used: azure-servicebus

            self._publisher = make_publisher(self.settings, credential_factory=self._credential_factory)
        return TrackedPublisher(self._publisher)

    async def close(self) -> None:
        for name in ("compute", "ledger", "evidence"):
            client = self.__dict__.pop(name, None)
            if client is not None:
                await client.close()
        if self._publisher is not None:
            await self._publisher.close()
            self._publisher = None


_installed: Runtime | None = None


def get() -> Runtime:
    """The installed runtime, or one built from the environment's settings on first use."""
    global _installed
    if _installed is None:
        settings = load_settings()
        configure(settings)  # OpenTelemetry to Application Insights, only when a connection string is set
        _installed = Runtime(settings, credential_factory=functools.partial(app_credential, settings))
    return _installed


def install(runtime: Runtime | None) -> None:
    """devhost and tests: use this runtime (None: forget it, so the next `get` builds anew)."""
    global _installed
    _installed = runtime
