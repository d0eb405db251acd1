"""ARM Compute client: an azure-core async pipeline with azure-identity tokens.

Four calls: read a target's model (preflight), submit a reimage, poll its operation once, and read
the instance views of reimaged machines (health verification).
POST is retried only where it cannot have been applied: a 429 with a bounded Retry-After, or
a connection that was never established. Bearer tokens go only to the configured ARM host.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
from azure.core import AsyncPipelineClient
from azure.core.exceptions import AzureError, ServiceRequestError
from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import (
    AsyncBearerTokenCredentialPolicy,
    AsyncRetryPolicy,
    DistributedTracingPolicy,
    HeadersPolicy,
    HttpLoggingPolicy,
    RequestIdPolicy,
    SansIOHTTPPolicy,
    UserAgentPolicy,
)
from azure.core.rest import HttpRequest

from shared.adapters.arm.lro import interpret, location_failure, parse_retry_after
from shared.domain.arm_call import ArmCall, PollMode, PollResult, Submission, TargetModel
from shared.domain.errors import (
    ComputeConflict,
    ComputeError,
    ComputeThrottled,
    ComputeUnavailable,
    DetailCode,
    ErrorCode,
    InstanceViewUnavailable,
    ReimagerError,
    SubmissionUncertain,
    TargetNotFound,
    UntrustedOperationUrl,
)
from shared.domain.health import Health, InstanceHealth, classify, classify_listed
from shared.domain.redaction import redact_response_body, secrets_of_body
from shared.domain.targets import Target, TargetKind
from shared.settings import Settings

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential
    from azure.core.pipeline.transport import AsyncHttpTransport


logger = logging.getLogger("reimager.compute")
USER_AGENT = "reimager/0.1.0"
Sleeper = Callable[[float], Awaitable[None]]


def _error_from_response(status: int, headers: dict[str, str], body: bytes, what: str, now: float) -> ComputeError:
    code = message = target = None
    try:
        doc = json.loads(body) if body else {}
        err = doc.get("error") if isinstance(doc, dict) else None
        if isinstance(err, dict):
            code, message, target = err.get("code"), err.get("message"), err.get("target")
    except ValueError:
        pass
    retry = parse_retry_after(headers.get("Retry-After") or headers.get("retry-after"), now)
    retry_after = int(retry + 0.999) if retry is not None else None
    kw: dict[str, Any] = {"arm_status": status, "arm_code": code, "arm_message": message, "arm_target": target,
                          "retry_after": retry_after}
    said = f"ARM answered {status} {code or ''}: {message or 'no message'}".strip()
    if status == 404:
        return TargetNotFound(ErrorCode.TARGET_NOT_FOUND, f"{what}: {said}", **kw)
    if status == 409:
        return ComputeConflict(ErrorCode.OPERATION_IN_PROGRESS, f"{what}: {said}", **kw)
    if status == 429:
        return ComputeThrottled(ErrorCode.COMPUTE_UNAVAILABLE, f"{what}: ARM is throttling ({said})",
                                **kw)
    if status >= 500 or status == 408:
        return ComputeUnavailable(ErrorCode.COMPUTE_UNAVAILABLE, f"{what}: {said}", **kw)
    return ComputeError(ErrorCode.COMPUTE_ERROR, f"{what}: {said}", **kw)


def _never_connected(error: BaseException) -> bool:
    """True only when the request cannot have reached the server (connect failed or timed out).

    azure-core maps every aiohttp ClientError to ServiceRequestError, including a connection
    dropped after the request was sent, so the underlying aiohttp error decides.
    """
    inner = getattr(error, "inner_exception", None) or error.__cause__
    return isinstance(error, ServiceRequestError) and isinstance(
        inner, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError
    )


class ArmRetryPolicy(AsyncRetryPolicy[Any, Any]):
    """azure-core's retry, narrowed so that a POST is never repeated once it may have been applied."""

    def __init__(self, *, sleep: Sleeper, max_retry_after: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._sleeper = sleep
        self._max_retry_after = max_retry_after

    def is_retry(self, settings: dict[str, Any], response: PipelineResponse[Any, Any]) -> bool:
        status = response.http_response.status_code
        if response.http_request.method.upper() == "POST" and status != 429:
            return False
        if _is_location_failure(response):
            return False  # a finished operation's answer: asking again cannot change it
        retry_after = self.get_retry_after(response)
        if retry_after is not None and retry_after > self._max_retry_after:
            return False  # too long to hold a trigger; the caller is told to come back later
        return bool(super().is_retry(settings, response))

    def _is_method_retryable(self, settings: dict[str, Any], request: Any, response: Any = None) -> bool:
        if request.method.upper() == "POST" and response is None:
            return True  # errors: increment() decides, by what kind of error it was
        return bool(super()._is_method_retryable(settings, request, response=response))

    def increment(self, settings: dict[str, Any], response: Any = None, error: Exception | None = None) -> bool:
        if error is not None and response is not None and response.http_request.method.upper() == "POST":
            if not _never_connected(error):
                return False
        return bool(super().increment(settings, response=response, error=error))

    async def sleep(self, settings: dict[str, Any], transport: Any, response: Any = None) -> None:
        delay = self.get_retry_after(response) if response is not None else None
        if delay is None:
            delay = self.get_backoff_time(settings)
        if delay > 0:
            await self._sleeper(delay)


def _is_location_failure(response: PipelineResponse[Any, Any]) -> bool:
    """A Location poll (`monitor=true`) answered with a failed operation's CloudError (see operations.py)."""
    request, http = response.http_request, response.http_response
    if request.method.upper() != "GET" or "monitor=true" not in request.url.lower():
        return False
    try:
        doc = json.loads(http.body() or b"null")
    except (ValueError, TypeError, AttributeError):
        return False  # no body loaded, or not JSON: not a recognisable failure
    return location_failure(http.status_code, doc if isinstance(doc, dict) else None) is not None


class ArmHostGuardPolicy(SansIOHTTPPolicy[HttpRequest, Any]):
    """Refuses, before any byte is sent or token fetched, a URL that is not on the ARM origin."""

    def __init__(self, origin: str) -> None:
        self._origin = origin.lower()

    def on_request(self, request: PipelineRequest[HttpRequest]) -> None:
        if not same_origin(request.http_request.url, self._origin):
            raise UntrustedOperationUrl(request.http_request.url)


def same_origin(url: str, origin: str) -> bool:
    a, b = urlsplit(url), urlsplit(origin)
    return (a.scheme.lower(), (a.netloc or "").lower()) == (b.scheme.lower(), (b.netloc or "").lower())


class ComputeClient:
    """Lazily builds one pipeline (and credential) on first use, then reuses it."""

    def __init__(self, settings: Settings, *, credential: AsyncTokenCredential | None = None,
                 transport: AsyncHttpTransport[Any, Any] | None = None, sleep: Sleeper = asyncio.sleep,
                 clock: Callable[[], float] | None = None, max_retry_after: float = 30, retries: int = 3,
                 connect_timeout: float = 10, read_timeout: float = 30, owns_credential: bool | None = None) -> None:
        self._settings = settings
        self._credential = credential
        self._owns_credential = credential is None if owns_credential is None else owns_credential
        self._transport = transport
        self._sleep = sleep
        self._clock = clock
        self._max_retry_after = max_retry_after
        self._retries = retries
        self._timeouts = {"connection_timeout": connect_timeout, "read_timeout": read_timeout}
        self._client: AsyncPipelineClient[HttpRequest, Any] | None = None

    @property
    def origin(self) -> str:
        return self._settings.arm_endpoint

    def _now(self) -> float:
        return self._clock() if self._clock else time.time()

    def _pipeline(self) -> AsyncPipelineClient[HttpRequest, Any]:
        if self._client is None:
            if self._credential is None:
                from azure.identity.aio import ManagedIdentityCredential

                self._credential = ManagedIdentityCredential(client_id=self._settings.azure_client_id or None)
            https = urlsplit(self.origin).scheme == "https"
            scope = f"{self.origin}/.default" if https else "https://management.azure.com/.default"  # stand-in
            logging_policy = HttpLoggingPolicy(logger=logging.getLogger("reimager.compute.http"))
            logging_policy.allowed_header_names |= {"Azure-AsyncOperation", "Location", "Retry-After",
                                                     "x-ms-request-id", "x-ms-ratelimit-remaining-resource"}
            policies: list[Any] = [
                HeadersPolicy({"Accept": "application/json"}),
                UserAgentPolicy(base_user_agent=USER_AGENT),
                RequestIdPolicy(),
                ArmHostGuardPolicy(self.origin),
                ArmRetryPolicy(sleep=self._sleep, max_retry_after=self._max_retry_after,
                               retry_total=self._retries, retry_backoff_factor=0.5),
                AsyncBearerTokenCredentialPolicy(self._credential, scope),
                logging_policy,
                DistributedTracingPolicy(),
            ]
            # use_env_settings=False: aiohttp would otherwise look up netrc and *_PROXY on a worker thread for
            # every request (two thread hops per ARM call); the app never runs behind an environment proxy.
            self._client = AsyncPipelineClient(self.origin, policies=policies, transport=self._transport,
                                               use_env_settings=False)
        return self._client

    async def _send(self, request: HttpRequest) -> tuple[int, dict[str, str], bytes]:
        response = await self._pipeline().send_request(
            request, connection_timeout=self._timeouts["connection_timeout"],
            read_timeout=self._timeouts["read_timeout"],
            # Plain http is only ever a loopback stand-in: settings refuse it for any other host.
            enforce_https=urlsplit(self.origin).scheme == "https")
        body = response.content  # send_request has already read it (stream=False)
        return response.status_code, dict(response.headers), body

    async def get_model(self, target: Target) -> TargetModel:
        """Preflight: one GET of the VM or scale set model."""
        request = HttpRequest("GET", f"{self.origin}{target.vm_id}",
                              params={"api-version": self._settings.compute_api_version})
        status, headers, body = await self._guarded(request, "reading the target")
        if status != 200:
            raise _error_from_response(status, headers, body, "reading the target", self._now())
        doc = json.loads(body)
        props = doc.get("properties") or {}
        profile = props if target.kind is TargetKind.VM else (props.get("virtualMachineProfile") or {})
        os_disk = (profile.get("storageProfile") or {}).get("osDisk") or {}
        os_type = os_disk.get("osType")
        capacity = (doc.get("sku") or {}).get("capacity") if target.kind is not TargetKind.VM else None
        instance_ids = await self.list_instance_ids(target) if target.kind is not TargetKind.VM else None
        return TargetModel(
            id=doc.get("id", target.vm_id),
            os_type=os_type if os_type in ("Windows", "Linux") else None,
            ephemeral_os_disk=bool(os_disk.get("diffDiskSettings")),
            tags={str(k): str(v) for k, v in (doc.get("tags") or {}).items()},
            capacity=int(capacity) if capacity is not None else None,
            instance_ids=instance_ids,
        )

    async def list_instance_ids(self, target: Target) -> tuple[str, ...]:
        """The scale set's instances now (following nextLink): what `allInstances` resolves to, and what
        named instances must be among."""
        url = f"{self.origin}{target.vm_id}/virtualMachines"
        request = HttpRequest("GET", url, params={"api-version": self._settings.compute_api_version,
                                                  "$select": "instanceId"})
        ids: list[str] = []
        for _ in range(1000):  # a page holds many instances; this bounds a server that loops
            status, headers, body = await self._guarded(request, "listing the scale set's instances")
            if status != 200:
                raise _error_from_response(status, headers, body, "listing the scale set's instances", self._now())
            doc = json.loads(body)
            ids += [str(v["instanceId"]) for v in doc.get("value") or [] if v.get("instanceId") is not None]
            link = doc.get("nextLink")
            if not link:
                break
            if not same_origin(link, self.origin):
                raise UntrustedOperationUrl(link)
            request = HttpRequest("GET", link)
        return tuple(ids)

    async def instance_health(self, target: Target, instance_ids: Sequence[str] | None = None
                              ) -> dict[str, InstanceHealth]:
        """Classify the instance views of a VM or of scale-set instances (see shared/domain/health.py).

        - a VM: one GET of `.../virtualMachines/{vm}/instanceView`; the result has one entry, key "";
        - one scale-set instance (a VMSS-instance target, or one id asked): one GET of
          `.../virtualMachines/{id}/instanceView`; Compute's own advice is to read the one machine
          needed rather than list them all (troubleshooting-throttling-errors.md, "Best practices");
        - several instances, or all (`instance_ids` None on a scale-set target): ONE list read,
          `.../virtualMachines?$expand=instanceView`, following nextLink (same origin only) and
          stopping as soon as every asked id has been seen. An asked id the set no longer has is
          Unknown ("not in the scale set").

        `instance_ids` is ignored for a VM. Raises InstanceViewUnavailable when a read fails; the caller
        counts that read as Unknown.
        """
        if target.kind is TargetKind.VM:
            view = await self._read_view(f"{self.origin}{target.vm_id}/instanceView")
            return {"": classify(view)}
        if instance_ids is not None:
            ids: list[str] | None = list(dict.fromkeys(str(i) for i in instance_ids))
        else:
            ids = [target.instance_id] if target.instance_id is not None else None
        if ids is not None and not ids:
            return {}  # nothing asked: nothing to read
        if ids is not None and len(ids) == 1:
            view = await self._read_view(f"{self.origin}{target.vm_id}/virtualMachines/{ids[0]}/instanceView")
            return {ids[0]: classify(view)}
        return await self._list_health(target, ids)

    async def _read_view(self, url: str) -> Any:
        what = "reading the instance view"
        request = HttpRequest("GET", url, params={"api-version": self._settings.compute_api_version})
        try:
            status, headers, body = await self._guarded(request, what)
        except ReimagerError as exc:
            raise InstanceViewUnavailable.from_error(exc, what) from exc
        if status != 200:
            raise InstanceViewUnavailable.from_error(_error_from_response(status, headers, body, what, self._now()),
                                                     what)
        return self._json_object(body, what)

    async def _list_health(self, target: Target, ids: list[str] | None) -> dict[str, InstanceHealth]:
        what = "listing the scale set's instance views"
        request = HttpRequest("GET", f"{self.origin}{target.vm_id}/virtualMachines",
                              params={"api-version": self._settings.compute_api_version, "$expand": "instanceView"})
        wanted = set(ids) if ids is not None else None
        found: dict[str, InstanceHealth] = {}
        for _ in range(1000):  # a page holds many instances; this bounds a server that loops
            try:
                status, headers, body = await self._guarded(request, what)
            except ReimagerError as exc:
                raise InstanceViewUnavailable.from_error(exc, what) from exc
            if status != 200:
                raise InstanceViewUnavailable.from_error(
                    _error_from_response(status, headers, body, what, self._now()), what)
            doc = self._json_object(body, what)
            items = doc.get("value")
            page = classify_listed(items if isinstance(items, list) else [])
            found.update(page if wanted is None else {i: h for i, h in page.items() if i in wanted})
            link = doc.get("nextLink")
            if not link or (wanted is not None and wanted <= found.keys()):
                break  # every asked instance seen: the rest of the set is not needed
            if not isinstance(link, str) or not same_origin(link, self.origin):
                raise InstanceViewUnavailable.from_error(UntrustedOperationUrl(str(link)), what)
            request = HttpRequest("GET", link)
        if ids is None:
            return found
        missing = InstanceHealth(Health.UNKNOWN, "not in the scale set")
        return {i: found.get(i, missing) for i in ids}

    @staticmethod
    def _json_object(body: bytes, what: str) -> dict[str, Any]:
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise InstanceViewUnavailable(ErrorCode.COMPUTE_ERROR, f"{what}: ARM answered 200 with a body that is not "
                                          "a JSON object", arm_status=200, arm_code=DetailCode.INVALID_RESPONSE,
                                          arm_message=None)
        return doc

    async def submit(self, call: ArmCall) -> Submission:
        """POST the reimage. Raises a typed ComputeError when ARM refuses it."""
        body = call.wire_body()
        request = HttpRequest(call.method, f"{self.origin}{call.path}", params=call.query,
                              json=body if body is not None else None)
        if body is None:
            request.headers["Content-Length"] = "0"
        try:
            status, headers, raw = await self._send(request)
        except ReimagerError:
            raise
        except AzureError as exc:
            if _never_connected(exc):
                raise ComputeUnavailable(ErrorCode.COMPUTE_UNAVAILABLE, "could not connect to ARM", arm_status=0,
                                         arm_code=DetailCode.CONNECTION_FAILED,
                                         arm_message=type(exc).__name__) from None
            raise SubmissionUncertain(ErrorCode.SUBMISSION_UNCERTAIN,
                                      "the reimage request was sent but no answer came back; it may or may not "
                                      "have been applied. Check the target before retrying.", arm_status=0,
                                      arm_code=DetailCode.NO_RESPONSE, arm_message=type(exc).__name__) from None
        if status not in (200, 202):  # ARM may echo what it was sent: redact the secrets before reading it
            raw = redact_response_body(raw, secrets_of_body(call.body))
            raise _error_from_response(status, headers, raw, "submitting the reimage", self._now())
        lower = {k.lower(): v for k, v in headers.items()}
        return Submission(status, lower.get("azure-asyncoperation"), lower.get("location"),
                          parse_retry_after(lower.get("retry-after"), self._now()),
                          lower.get("x-ms-request-id"))

    async def poll(self, url: str, mode: PollMode) -> PollResult:
        """One status read. A failed read is reported as such (read_failed), never as a failed operation."""
        if not same_origin(url, self.origin):
            raise UntrustedOperationUrl(url)
        status, headers, body = await self._guarded(HttpRequest("GET", url), "reading the operation status")
        return interpret(mode, status, headers, body, self._now())

    async def _guarded(self, request: HttpRequest, what: str) -> tuple[int, dict[str, str], bytes]:
        try:
            return await self._send(request)
        except ReimagerError:
            raise
        except AzureError as exc:
            raise ComputeUnavailable(ErrorCode.COMPUTE_UNAVAILABLE,
                                     f"{what}: ARM did not answer ({type(exc).__name__})", arm_status=0,
                                     arm_code=DetailCode.NO_RESPONSE, arm_message=type(exc).__name__) from None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
        if self._owns_credential and self._credential is not None:
            await self._credential.close()
            self._credential = None
