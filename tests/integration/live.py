"""devhost on its own thread and event loop, so synchronous clients (schemathesis, hypothesis with a
plain HTTP client) can drive it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from devhost.threaded import ThreadedDevHost


class LiveHost:
    def __init__(self, state_dir: Path, settings: dict[str, str]) -> None:
        self.threaded = ThreadedDevHost(state_dir, operation_seconds=0.2, retry_after=1, settings=settings)
        self.dh = self.threaded.dh

    def __enter__(self) -> LiveHost:
        self.threaded.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.threaded.stop()

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
