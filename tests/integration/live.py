"""devhost on its own thread and event loop, so synchronous clients (schemathesis, hypothesis with a
plain HTTP client) can drive it."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from devhost.host import DevHost


class LiveHost:
    def __init__(self, state_dir: Path, settings: dict[str, str]) -> None:
        self.loop = asyncio.new_event_loop()
        self.dh = DevHost(state_dir=state_dir, operation_seconds=0.2, retry_after=1, settings=settings)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> LiveHost:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.dh.start(), self.loop).result(60)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.dh.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def post(self, path: str, raw: bytes) -> requests.Response:
        return requests.post(self.dh.functions_url + path, data=raw,
                             headers={"x-functions-key": self.dh.function_key}, timeout=60)

    def arm_requests(self) -> int:
        return len(self.dh.sim.requests)


@contextmanager
def live_host(state_dir: Path, settings: dict[str, str]) -> Iterator[LiveHost]:
    saved = dict(os.environ)
    try:
        with LiveHost(state_dir, settings) as host:
            yield host
    finally:
        os.environ.clear()
        os.environ.update(saved)
