"""Benchmark helpers: devhost as a separate process, and tokens from its identity endpoint."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
        try:
            self.proc.wait(60)  # a clean stop ends Azurite too; on a loaded machine that can take a while
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

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


async def serve_standins(state: Path, *, operation_seconds: float, retry_after: int | None, limits: str = "azure",
                         seed: Any = None) -> None:
    """The stand-ins that are not the worker in Azure, in a process of their own: the ARM simulator, the identity
    endpoint, and Azurite behind devhost's storage proxy. Writes `state/standins.json` (devhost.host.ExternalArm's
    fields, the proxied `storage` connection string, `azuritePid`) and serves until SIGTERM. The simulator keeps its
    files in `state/arm` (operations, requests.jsonl); `seed(sim)` puts resources in it first."""
    import asyncio
    import signal

    from devhost import azurite
    from devhost.clock import Clock
    from devhost.compute import ArmLimits, ComputeSimulator
    from devhost.identity import PATH, TokenIssuer
    from devhost.outputs import table_endpoint
    from devhost.serving import serve
    from devhost.storage import StorageProxy

    issuer = TokenIssuer()
    sim = ComputeSimulator(clock=Clock(), issuer=issuer, operation_seconds=operation_seconds, retry_after=retry_after,
                           state_dir=state / "arm", arm_limits=ArmLimits.load(limits))
    if seed is not None:
        seed(sim)
    identity, arm = await serve(issuer.app()), await sim.serve()
    store = await azurite.start(state)
    upstream = table_endpoint(store.connection_string)
    assert upstream is not None
    proxy = StorageProxy(upstream)
    proxied = await proxy.serve()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    (state / "standins.json").write_text(json.dumps({
        "arm_url": arm.url, "identity_url": identity.url + PATH, "identity_header": issuer.header_secret,
        "storage": proxy.connection_string(store.connection_string), "azuritePid": store.pid}))
    await stop.wait()
    await arm.close()
    await identity.close()
    await proxied.close()
    await proxy.close()
    await store.stop()


def external_arm(doc: dict[str, Any]) -> Any:
    """devhost.host.ExternalArm from `standins.json`."""
    from devhost.host import ExternalArm

    return ExternalArm(doc["arm_url"], doc["identity_url"], doc["identity_header"])


def tmpfs_dir(prefix: str) -> Path:
    """A fresh state directory on tmpfs when there is one: devhost persists its task hub, simulator and Azurite data
    as files, and on ext4 each atomic os.replace costs milliseconds of the event loop; in Azure that state is
    written by the Storage service, not by the worker."""
    shm = Path("/dev/shm")
    return Path(tempfile.mkdtemp(prefix=prefix, dir=shm if shm.is_dir() else None))


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


@contextmanager
def peer_identity(dh: Any) -> Iterator[None]:
    """The peer's ManagedIdentityCredential reads the platform's IDENTITY_* variables: point them at devhost's
    identity stand-in for the bench, and put back what was there."""
    from devhost.host import environ

    with environ(IDENTITY_ENDPOINT=dh.identity_url, IDENTITY_HEADER=dh.issuer.header_secret):
        yield
