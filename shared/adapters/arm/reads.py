"""Frugal reads: one ARM read of a target's model shared by every request that needs it.

A storm of alerts on one scale set asks for the same set's model and instance list once per alert; Compute
allows a set 10 instance-list reads a minute (burst 30) and 12 model reads (burst 36) (research notes
`arm.md` A1, CTL). So within one process:
- reads in flight are coalesced: N concurrent requests for one target wait on one GET (its error too: a 429
  is one 429, not N);
- a result is kept for `max_age` seconds (PREFLIGHT_CACHE_SECONDS) and served to requests that arrive
  meanwhile. Nothing older is ever served: a request never acts on instance ids older than that bound.
Errors are never kept. Ages are measured on the runtime's clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Kept(Generic[T]):
    at: float
    value: T


class SharedReads(Generic[T]):
    """Coalesce concurrent loads of a key, and keep each result `max_age` seconds (0: coalesce only)."""

    def __init__(self, max_age: float, clock: Callable[[], float], limit: int = 10_000) -> None:
        self.max_age = max_age
        self._clock = clock
        self._limit = limit
        self._kept: dict[str, _Kept[T]] = {}
        self._inflight: dict[str, asyncio.Future[T]] = {}
        self.loads = 0  # reads that went to ARM
        self.shared = 0  # requests answered by a read in flight or kept

    async def get(self, key: str, load: Callable[[], Awaitable[T]]) -> T:
        now = self._clock()
        kept = self._kept.get(key)
        if kept is not None and 0 <= now - kept.at <= self.max_age:
            self.shared += 1
            return kept.value
        loop = asyncio.get_running_loop()
        pending = self._inflight.get(key)
        if pending is not None and pending.get_loop() is loop and not pending.done():
            self.shared += 1
            return await asyncio.shield(pending)
        future: asyncio.Future[T] = loop.create_future()
        self._inflight[key] = future
        self.loads += 1
        try:
            value = await load()
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: nobody else waiting is not an error
            raise
        else:
            future.set_result(value)
            if self.max_age > 0:
                self._keep(key, value, now)  # aged from when the read was asked: never younger than it is
            return value
        finally:
            if self._inflight.get(key) is future:
                del self._inflight[key]

    def _keep(self, key: str, value: T, at: float) -> None:
        if len(self._kept) >= self._limit:  # bounded: drop what has aged out, else the oldest
            now = self._clock()
            self._kept = {k: v for k, v in self._kept.items() if now - v.at <= self.max_age}
            while len(self._kept) >= self._limit:
                del self._kept[next(iter(self._kept))]
        self._kept[key] = _Kept(at, value)

    def forget(self, key: str) -> None:
        self._kept.pop(key, None)
