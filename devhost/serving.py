"""Start aiohttp apps on loopback ports and stop them cleanly."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from pydantic import TypeAdapter

T = TypeVar("T")


@dataclass
class Served:
    runner: web.AppRunner
    url: str

    async def close(self) -> None:
        await self.runner.cleanup()


async def serve(app: web.Application, host: str = "127.0.0.1", port: int = 0) -> Served:
    """Serve `app`; port 0 picks a free port. Returns the base URL actually bound."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    assert server is not None and server.sockets  # type: ignore[attr-defined]
    bound = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    return Served(runner, f"http://{host}:{bound}")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def bad_request(exc: Exception) -> web.Response:
    return web.json_response({"error": {"code": "BadRequest", "message": str(exc)[:2000]}}, status=400)


async def append_posted(request: web.Request, adapter: TypeAdapter[list[T]], into: list[T]) -> web.Response:
    """A devhost control POST of one model or a list of them (faults): validated and appended, 201
    `{"queued": n}`; a mistake is a 400 that names it (pydantic's ValidationError is a ValueError)."""
    try:
        doc: Any = await request.json()
        items = adapter.validate_python(doc if isinstance(doc, list) else [doc])
    except ValueError as exc:
        return bad_request(exc)
    into.extend(items)
    return web.json_response({"queued": len(items)}, status=201)
