"""The App Service managed-identity endpoint that azure-identity calls (IDENTITY_ENDPOINT/HEADER).

Tokens it issues are the only ones the Compute simulator accepts, and the only bearer tokens devhost's
App Service authentication stand-in accepts (each names the identity it was issued to: `client_id`).
"""

from __future__ import annotations

import secrets
import time

from aiohttp import web

PATH = "/msi/token"
SYSTEM_ASSIGNED = "00000000-0000-0000-0000-0000000000aa"  # the client id of the system-assigned identity


class TokenIssuer:
    def __init__(self, lifetime_seconds: int = 3600) -> None:
        self.header_secret = secrets.token_urlsafe(16)
        self.lifetime = lifetime_seconds
        self._tokens: dict[str, tuple[float, str]] = {}  # token -> (expiry, client id)
        self.issued = 0

    def issue(self, client_id: str = SYSTEM_ASSIGNED) -> tuple[str, int]:
        token = "devhost." + secrets.token_urlsafe(24)
        expires_on = int(time.time()) + self.lifetime
        self._tokens[token] = (expires_on, client_id)
        self.issued += 1
        return token, expires_on

    def principal(self, token: str) -> str:
        """The identity a token was issued to (ARM throttles per subscription and principal)."""
        entry = self._tokens.get(token)
        return entry[1] if entry is not None else SYSTEM_ASSIGNED

    def valid(self, token: str) -> bool:
        return self.client_of(token) is not None

    def client_of(self, token: str) -> str | None:
        """The identity a valid token was issued to, or None for an unknown or expired token."""
        entry = self._tokens.get(token)
        return entry[1] if entry is not None and entry[0] > time.time() else None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(PATH, self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.Response:
        if request.headers.get("X-IDENTITY-HEADER") != self.header_secret:
            return web.json_response({"error": "invalid_request", "error_description": "bad identity header"},
                                     status=401)
        resource = request.query.get("resource")
        if request.query.get("api-version") != "2019-08-01" or not resource:
            return web.json_response({"error": "invalid_request", "error_description": "need api-version, resource"},
                                     status=400)
        client_id = request.query.get("client_id", SYSTEM_ASSIGNED)
        token, expires_on = self.issue(client_id)
        return web.json_response({
            "access_token": token,
            "expires_on": str(expires_on),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": client_id,
        })
