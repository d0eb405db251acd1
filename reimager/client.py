"""The reimager HTTP API (docs/openapi.yaml) over requests: where it is, how to authenticate, one method per
route. Every failure is a `CliError` with one readable line and its exit code, never a traceback.

Credentials travel only in headers (`x-functions-key`, `Authorization`), never in a URL, so no URL this
module prints or follows can carry them; a `nextLink` to another host is refused rather than sent the key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from reimager.exits import Exit

ENDPOINTS = Path(".devhost") / "endpoints.json"  # what `make devhost` writes, relative to the cwd
TIMEOUT_SECONDS = 30.0


class CliError(Exception):
    """A failure the user reads as one line; `exit_code` says which kind (reimager.exits)."""

    exit_code = Exit.UNREACHABLE

    def line(self) -> str:
        return str(self)


class UsageProblem(CliError):
    exit_code = Exit.USAGE


class Unreachable(CliError):
    exit_code = Exit.UNREACHABLE

    def __init__(self, message: str, *, maybe_sent: bool = False) -> None:
        super().__init__(message)
        self.maybe_sent = maybe_sent  # the request may have reached the app (no answer after it was sent)


class ApiError(CliError):
    """An error answer of the API: ARM's shape, `{"error": {"code", "message", "target", "details"}}`."""

    exit_code = Exit.REFUSED

    def __init__(self, status: int, error: Mapping[str, Any], operation_id: str | None = None,
                 retry_after: str | None = None) -> None:
        self.status, self.operation_id, self.retry_after = status, operation_id, retry_after
        self.code = str(error.get("code") or f"HTTP{status}")
        self.message = str(error.get("message") or "")
        self.target = error.get("target")
        self.details = [d for d in error.get("details") or [] if isinstance(d, Mapping)]
        super().__init__(self.line())

    def line(self) -> str:
        return error_line(self.code, self.message, self.details, self.target) + f" (HTTP {self.status}" + (
            f", retry after {self.retry_after} s" if self.retry_after else "") + ")"


def error_line(code: str, message: str, details: list[Mapping[str, Any]] | None = None,
               target: object = None) -> str:
    """`Code: message`, then each detail's `code: message` (ARM's own code sits in details[0] when reimager's
    is on top), on one line."""
    text = f"{code}: {message}".rstrip(": ") if message else code
    if target and str(target) not in text:
        text += f" [{target}]"
    for d in details or []:
        part = f"{d.get('code')}: {d.get('message')}"
        if d.get("target"):
            part += f" [{d['target']}]"
        text += f"; {part}"
    return " ".join(text.split())  # one line, whatever ARM put in its message


@dataclass
class Answer:
    status: int
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def retry_after(self) -> float | None:
        value = self.headers.get("Retry-After")
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None  # an HTTP date: no interval worth trusting; the caller's default applies


@dataclass
class Connection:
    """Where the API is and the headers that authenticate to it (never printed)."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    source: str = "--url"

    def __repr__(self) -> str:  # a repr in a debugger or a log must not show the key or the token
        return f"Connection(url={self.url!r}, headers={sorted(self.headers)}, source={self.source!r})"


def connect(url: str | None, key: str | None, *, entra: bool = False, scope: str | None = None) -> Connection:
    """--url/--key (or REIMAGER_URL/REIMAGER_KEY, which the caller resolved); with neither, a running devhost
    from its endpoints.json (REIMAGER_ENDPOINTS, else .devhost/endpoints.json in the cwd). --entra adds a
    bearer token from azure-identity's DefaultAzureCredential for App Service authentication."""
    source = "--url"
    if not url and not key:
        url, key, source = devhost_endpoints()
    if not url:
        raise UsageProblem("no API URL: give --url (or REIMAGER_URL)")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageProblem(f"--url must be an http(s) URL such as https://APP.azurewebsites.net, got {url!r}")
    if parts.query:
        raise UsageProblem("--url must not carry a query (give the function key with --key or REIMAGER_KEY)")
    headers = {"Accept": "application/json"}
    if key:
        headers["x-functions-key"] = key
    if entra:
        headers["Authorization"] = "Bearer " + entra_token(scope)
    return Connection(url.rstrip("/"), headers, source)


def devhost_endpoints() -> tuple[str, str, str]:
    path = Path(os.environ.get("REIMAGER_ENDPOINTS") or ENDPOINTS)
    try:
        doc = json.loads(path.read_text())
        return str(doc["functions"]), str(doc["functionKey"]), str(path)
    except FileNotFoundError:
        raise UsageProblem(f"no API to talk to: give --url and --key (or REIMAGER_URL, REIMAGER_KEY), or start "
                           f"`make devhost`, which writes {ENDPOINTS} (or point REIMAGER_ENDPOINTS at one)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageProblem(f"{path} is not devhost's endpoints.json ({type(exc).__name__}: {exc})") from None


def entra_token(scope: str | None) -> str:
    """A token for App Service authentication from whatever DefaultAzureCredential finds (az login, a managed
    identity, environment variables...). The scope is the app's: its Application ID URI + /.default."""
    if not scope:
        raise UsageProblem("--entra needs --entra-scope (or REIMAGER_ENTRA_SCOPE), e.g. api://APP-CLIENT-ID/.default")
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError:
        raise UsageProblem("--entra needs the azure-identity package (pip install azure-identity)") from None
    from azure.core.exceptions import ClientAuthenticationError

    try:
        credential = DefaultAzureCredential()
        try:
            return str(credential.get_token(scope).token)
        finally:
            credential.close()
    except ClientAuthenticationError as exc:
        first = str(exc.message or exc).strip().splitlines()[0]
        raise Unreachable(f"no Entra token for {scope}: {first}") from None


class Client:
    def __init__(self, connection: Connection, timeout: float = TIMEOUT_SECONDS,
                 session: requests.Session | None = None) -> None:
        self.connection, self.timeout = connection, timeout
        self.session = session or requests.Session()
        self.session.trust_env = True  # HTTPS_PROXY / NO_PROXY as the machine sets them

    # ---- the routes ------------------------------------------------------------------------
    def submit(self, body: Mapping[str, Any]) -> Answer:
        return self.call("POST", "/api/reimage", json_body=body)

    def operation(self, operation_id: str) -> Answer:
        return self.call("GET", f"/api/reimage/{safe(operation_id)}")

    def act(self, operation_id: str, verb: str, reason: str | None, by: str | None) -> Answer:
        body = {k: v for k, v in (("reason", reason), ("by", by)) if v}
        return self.call("POST", f"/api/reimage/{safe(operation_id)}/{verb}", json_body=body)

    def target(self, target: str) -> Answer:
        return self.call("GET", "/api/targets", params={"id": target})

    def resume(self, target: str, reason: str | None) -> Answer:
        return self.call("POST", "/api/targets/resume", json_body={"target": target, "reason": reason})

    def history(self, params: Mapping[str, str]) -> Iterator[list[dict[str, Any]]]:
        """Each page of `GET /api/reimage`, following nextLink until there is none (ARM's list convention)."""
        answer = self.call("GET", "/api/reimage", params=params)
        seen: set[str] = set()
        while True:
            body = answer.body if isinstance(answer.body, dict) else {}
            if not isinstance(body.get("value"), list):
                raise Unreachable(f"the history answer has no value list (HTTP {answer.status})")
            yield body["value"]
            link = body.get("nextLink")
            if not link:
                return
            if link in seen:
                raise Unreachable("the history's nextLink repeats itself; stopped")
            seen.add(link)
            answer = self.call("GET", self.same_origin(str(link)))

    def same_origin(self, link: str) -> str:
        """A nextLink on the API's own scheme and host, or an error: the key is never sent anywhere else."""
        here, there = urlsplit(self.connection.url), urlsplit(link)
        if (there.scheme, there.netloc) != (here.scheme, here.netloc):
            raise Unreachable(f"refused to follow a nextLink to another host ({there.scheme}://{there.netloc})")
        return link

    # ---- HTTP ----------------------------------------------------------------------------------
    def call(self, method: str, path: str, *, json_body: Mapping[str, Any] | None = None,
             params: Mapping[str, str] | None = None) -> Answer:
        """One request; the API's JSON answer, or ApiError for its error answers, or Unreachable."""
        url = path if path.startswith(("http://", "https://")) else self.connection.url + path
        try:
            r = self.session.request(method, url, json=json_body, params=params, timeout=self.timeout,
                                     headers=self.connection.headers, allow_redirects=False)
        except requests.ConnectTimeout:
            raise Unreachable(f"cannot reach {self.connection.url} within {self.timeout:.0f} s") from None
        except requests.Timeout:
            raise Unreachable(f"no answer from {self.connection.url} within {self.timeout:.0f} s",
                              maybe_sent=True) from None
        except requests.RequestException as exc:
            text = reason(exc)
            raise Unreachable(f"cannot reach {self.connection.url}: {text}",
                              maybe_sent=not text.startswith("connection refused")) from None
        body = decode(r)
        if r.status_code >= 400:
            error = body.get("error") if isinstance(body, dict) else None
            if not isinstance(error, dict) and r.status_code not in (401, 403):
                raise Unreachable(f"{method} {urlsplit(url).path} answered HTTP {r.status_code} without the API's "
                                  f"JSON error (is {self.connection.url} a reimager app?)")
            if not isinstance(error, dict):  # App Service authentication's own refusal has no body
                error = {"code": f"HTTP{r.status_code}", "message": f"{r.reason or 'refused'} (App Service "
                         "authentication in front of the app? try --entra; or a wrong --key)"}
            raise ApiError(r.status_code, error, body.get("operationId") if isinstance(body, dict) else None,
                           r.headers.get("Retry-After"))
        if body is None:
            raise Unreachable(f"{method} {urlsplit(url).path} answered HTTP {r.status_code} without the API's JSON "
                              f"(is {self.connection.url} a reimager app?)")
        return Answer(r.status_code, body, r.headers)


def decode(r: requests.Response) -> Any:
    """The answer's JSON, or None when it is not JSON (a proxy's HTML page, a truncated body...)."""
    if not r.content:
        return None
    try:
        return r.json()
    except ValueError:
        return None


def reason(exc: requests.RequestException) -> str:
    """The innermost cause of a connection failure, e.g. `Connection refused`, without urllib3's wrapping."""
    cause: BaseException = exc
    while cause.__cause__ is not None or (cause.__context__ is not None and not cause.__suppress_context__):
        cause = cause.__cause__ or cause.__context__  # type: ignore[assignment]
    text = str(cause.args[-1] if getattr(cause, "args", None) else cause)
    if "Connection refused" in str(exc) or isinstance(cause, ConnectionRefusedError):
        return "connection refused (is the app running? `make devhost` starts one here)"
    return " ".join(text.split())[:200] or type(cause).__name__


def safe(operation_id: str) -> str:
    """An operation id as one path segment (the API's ids are `op-`/`b-` + hex; anything else gets a 404)."""
    from urllib.parse import quote

    return quote(operation_id, safe="")
