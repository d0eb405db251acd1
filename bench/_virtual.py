"""Benches on devhost's virtual clock with a peer beside the app: the peer's SDK waits on the same clock, and time
moves to the next timer only when nothing is running (every caller's HTTP call answered, the durable engine idle,
the timer functions and queue deliveries done)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Activity:
    """How many callers (the bench's lanes) are doing something other than waiting on the virtual clock or on the
    app. Each lane enters when it starts and leaves when it ends or waits."""

    active: int = 0
    quiet: asyncio.Event = field(default_factory=asyncio.Event)  # set while no lane is active

    def enter(self) -> None:
        self.active += 1
        self.quiet.clear()

    def leave(self) -> None:
        self.active -= 1
        if self.active == 0:
            self.quiet.set()

    async def waiting(self, wait: Awaitable[Any]) -> Any:
        """Await something that only the clock or the app ends (the lane is not active meanwhile)."""
        self.leave()
        try:
            return await wait
        finally:
            self.enter()

    def lanes(self, works: list[Awaitable[None]]) -> list[asyncio.Task[None]]:
        """Start each work as a lane: active from now until it ends."""
        async def lane(work: Awaitable[None]) -> None:
            try:
                await work
            finally:
                self.leave()

        for _ in works:
            self.enter()
        return [asyncio.create_task(lane(w)) for w in works]


def virtual_transport(clock: Any, activity: Activity) -> Any:
    """azure-core's aiohttp transport whose sleep (the poller's delay, the retry policy's back-off) is virtual."""
    from azure.core.pipeline.transport import AioHttpTransport

    class VirtualSleepTransport(AioHttpTransport):  # type: ignore[misc]
        async def sleep(self, duration: float) -> None:
            await activity.waiting(clock.sleep(duration))

    return VirtualSleepTransport()


async def drive(dh: Any, activity: Activity, tasks: list[asyncio.Task[None]], *,
                until: Callable[[], bool] | None = None, on_quiet: Callable[[], None] | None = None,
                max_virtual_seconds: float = 86400.0) -> None:
    """Run the lanes to their end (and `until()`, when given) on the virtual clock: whenever nothing runs, call
    `on_quiet` (which may wake lanes), and if still nothing runs, move the clock to the next timer."""
    engine, clock = dh.engine, dh.clock
    start = clock.now()
    while True:
        await engine.idle()
        await dh.quiesce()
        await activity.quiet.wait()
        await engine.idle()
        if on_quiet is not None:
            on_quiet()
        await asyncio.sleep(0)
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
        if not activity.quiet.is_set():
            continue
        if all(t.done() for t in tasks) and (until is None or until()):
            return
        deadline = clock.next_deadline()
        if deadline is None:
            raise RuntimeError("nothing left to run, and the lanes (or the condition) are still waiting")
        if deadline - start > max_virtual_seconds:
            raise TimeoutError(f"not done within {max_virtual_seconds} virtual seconds")
        clock.set(deadline)
