"""Clocks shared by the stand-ins: real time for `python -m devhost`, virtual time for tests."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime


class Clock:
    """Real wall-clock time."""

    def now(self) -> float:
        return time.time()

    def utcnow(self) -> datetime:
        return datetime.fromtimestamp(self.now(), UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class VirtualClock(Clock):
    """Time that moves only when told to, so tests of minute-long operations take milliseconds.

    `sleep` parks the caller until `advance` (or `run_until_idle`-style drivers) moves time
    past its deadline.
    """

    def __init__(self, start: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self._now = start
        self._waiters: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((self._now + seconds, fut))
        await fut

    def next_deadline(self) -> float | None:
        pending = [t for t, f in self._waiters if not f.done()]
        return min(pending) if pending else None

    def advance(self, seconds: float) -> None:
        self.set(self._now + seconds)

    def set(self, when: float) -> None:
        self._now = max(self._now, when)
        still = []
        for deadline, fut in self._waiters:
            if fut.done():
                continue
            if deadline <= self._now:
                fut.set_result(None)
            else:
                still.append((deadline, fut))
        self._waiters = still
