"""devhost on its own thread and event loop, for synchronous callers: schemathesis and hypothesis with a
plain HTTP client (tests/integration/live.py), and benchmarks that set simulator knobs (bench/)."""

from __future__ import annotations

import asyncio
import tempfile
import threading
from pathlib import Path
from typing import Any

from devhost.host import DevHost


class ThreadedDevHost:
    """`with ThreadedDevHost(**DevHost kwargs) as dh:` starts devhost on a background loop and stops it."""

    def __init__(self, state_dir: Path | None = None, **kw: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.dh = DevHost(state_dir=state_dir or Path(tempfile.mkdtemp(prefix="devhost-")), **kw)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> DevHost:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.dh.start(), self.loop).result(60)
        return self.dh

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.dh.stop(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def __enter__(self) -> DevHost:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
