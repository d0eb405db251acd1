"""Benchmark helpers: devhost as a separate process, and tokens from its identity endpoint."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from devhost.threaded import ThreadedDevHost as ThreadedDevhost  # noqa: F401 (bench/polling.py)

ROOT = Path(__file__).resolve().parent.parent


class DevhostProcess:
    def __init__(self, *args: str) -> None:
        self.state = Path(tempfile.mkdtemp(prefix="bench-devhost-"))
        self.args = ["--port", "0", "--state-dir", str(self.state), *args]
        self.proc: subprocess.Popen[str] | None = None
        self.ep: dict[str, Any] = {}

    def __enter__(self) -> DevhostProcess:
        self.proc = subprocess.Popen([sys.executable, "-m", "devhost", *self.args], cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
        end = time.monotonic() + 60
        while not (self.state / "endpoints.json").exists():
            if time.monotonic() > end or self.proc.poll() is not None:
                raise RuntimeError("devhost did not start")
            time.sleep(0.05)
        self.ep = json.loads((self.state / "endpoints.json").read_text())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(10)

    @property
    def url(self) -> str:
        return str(self.ep["functions"])

    @property
    def key(self) -> dict[str, str]:
        return {"x-functions-key": self.ep["functionKey"]}

    async def token(self, http: aiohttp.ClientSession) -> str:
        async with http.get(self.ep["identity"], params={"api-version": "2019-08-01",
                                                         "resource": "https://management.azure.com"},
                            headers={"X-IDENTITY-HEADER": self.ep["identityHeader"]}) as r:
            return str((await r.json())["access_token"])

    async def create_vms(self, http: aiohttp.ClientSession, names: list[str], concurrency: int = 32) -> list[str]:
        """PUT VMs into the simulator, as any ARM client would."""
        import asyncio

        token = await self.token(http)
        base = f"/subscriptions/{self.ep['subscriptionId']}/resourceGroups/reimager-demo/providers/" \
               "Microsoft.Compute/virtualMachines/"
        body = {"location": "westus", "properties": {"storageProfile": {
            "imageReference": {"publisher": "Canonical", "version": "1.0.0"}, "osDisk": {"osType": "Linux"}}}}
        sem = asyncio.Semaphore(concurrency)

        async def put(name: str) -> None:
            async with sem, http.put(f"{self.ep['arm']}{base}{name}", params={"api-version": "2024-07-01"},
                                     json=body, headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status in (200, 201), await r.text()

        await asyncio.gather(*(put(n) for n in names))
        return [base + n for n in names]

    async def get(self, http: aiohttp.ClientSession, path: str) -> Any:
        async with http.get(self.url + path) as r:
            return await r.json()


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def complete_lines(path: Path) -> list[dict[str, Any]]:
    """A JSON-lines file as written so far: only lines the writer has finished (ending in a newline)."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line.strip()]
