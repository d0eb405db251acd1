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
from dataclasses import replace
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

from shared.adapters.arm.evidence import ArmEvidence
from shared.adapters.arm.fleet import FleetReads, protected
from shared.adapters.arm.lro import error_from_response, interpret, location_failure, parse_retry_after
from shared.adapters.arm.quota import QuotaPolicy, QuotaTracker
from shared.adapters.arm.reads import SharedReads
from shared.adapters.arm.views import InstanceViews
from shared.adapters.telemetry import EVENT_ARM_THROTTLED, track_event
from shared.domain.arm_call import ArmCall, PollMode, PollResult, Submission, TargetModel
from shared.domain.errors import (
    ComputeThrottled,
    ComputeUnavailable,
    DetailCode,
    ErrorCode,
    ReimagerError,
    SubmissionUncertain,
    UntrustedOperationUrl,
)
from shared.domain.health import InstanceHealth
from shared.domain.redaction import redact_response_body, secrets_of_body
from shared.domain.targets import Target, TargetKind
from shared.settings import Settings

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential
    from azure.core.pipeline.transport import AsyncHttpTransport


logger = logging.getLogger("reimager.compute")
USER_AGENT = "reimager/0.1.0"
Sleeper = Callable[[float], Awaitable[None]]


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

    def configure_retries(self, options: dict[str, Any]) -> dict[str, Any]:
        settings = super().configure_retries(options)
        # False: a 429 goes back to the caller at once, which waits its Retry-After elsewhere (a durable timer)
        settings["hold_throttled"] = options.pop("hold_throttled", True)
        return settings

    def is_retry(self, settings: dict[str, Any], response: PipelineResponse[Any, Any]) -> bool:
        status = response.http_response.status_code
        if status == 429 and not settings.get("hold_throttled", True):
            return False
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


def _throttled(resource: str | None, kind: str | None, headers: Any) -> None:
    """ARM answered 429: one custom event (shared/adapters/telemetry.py), whoever asked."""
    retry = headers.get("Retry-After") if hasattr(headers, "get") else None
    track_event(EVENT_ARM_THROTTLED, target=resource, arm_call=kind,
                retry_after_seconds=int(retry) if retry and str(retry).isdigit() else None)
    logger.warning("ARM throttled a %s call on %s (Retry-After %s)", kind, resource, retry)


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
        self.reads: SharedReads[TargetModel] = SharedReads(settings.preflight_cache_seconds, self._now)
        # The same poll or health read asked twice at once (an activity runs at least once, sometimes twice side by
        # side): one GET, both answered. Nothing is kept.
        self._same_read: SharedReads[Any] = SharedReads(0, self._now)
        self.quota = QuotaTracker(self._now, settings.arm_quota_low_water)
        self._views = InstanceViews(self.origin, settings.compute_api_version, self._guarded, self._now, same_origin)
        # Flexible members, automatic repairs, locks: read with the model (shared/adapters/arm/fleet.py)
        self.fleet = FleetReads(self.origin, settings.compute_api_version, self._guarded, self._now, same_origin,
                                settings.preflight_cache_seconds)
        # Evidence before the wipe: the machines' views, boot diagnostics, snapshots (shared/adapters/arm/evidence.py)
        self.evidence = ArmEvidence(self.origin, settings.compute_api_version, self._guarded, self._now, same_origin,
                                    sleep)

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
                # innermost: every attempt's answer is read, and its counts land on its dependency span
                QuotaPolicy(self.quota, _throttled),
            ]
            # use_env_settings=False: aiohttp would otherwise look up netrc and *_PROXY on a worker thread for
            # every request (two thread hops per ARM call); the app never runs behind an environment proxy.
            self._client = AsyncPipelineClient(self.origin, policies=policies, transport=self._transport,
                                               use_env_settings=False)
        return self._client

    async def _send(self, request: HttpRequest, kind: str, resource: str | None = None, *,
                    hold_throttled: bool = True) -> tuple[int, dict[str, str], bytes]:
        response = await self._pipeline().send_request(
            request, connection_timeout=self._timeouts["connection_timeout"],
            read_timeout=self._timeouts["read_timeout"], quota_kind=kind, quota_resource=resource,
            hold_throttled=hold_throttled,
            # Plain http is only ever a loopback stand-in: settings refuse it for any other host.
            enforce_https=urlsplit(self.origin).scheme == "https")
        body = response.content  # send_request has already read it (stream=False)
        return response.status_code, dict(response.headers), body

    async def get_model(self, target: Target) -> TargetModel:
        """Preflight: the VM's or scale set's model (and a set's instances), read once for every request that needs
        it within PREFLIGHT_CACHE_SECONDS, and once for all that ask at the same time (shared/adapters/arm/reads.py)."""
        wait = self.quota.blocked_for(target.vm_id, ("model", "instances", "repairs", "locks"))
        if wait > 0:  # ARM throttled these reads and its Retry-After has not passed: asking again would be refused
            raise ComputeThrottled(ErrorCode.COMPUTE_UNAVAILABLE, "reading the target: ARM is throttling reads of it; "
                                   f"not asked again before its Retry-After ({wait:.0f} s left)", arm_status=429,
                                   arm_code="TooManyRequests", arm_message="not sent: ARM's Retry-After has not passed",
                                   retry_after=max(1, int(wait + 0.999)))
        return await self.reads.get(target.vm_id.lower(), lambda: self._read_model(target))

    async def _read_model(self, target: Target) -> TargetModel:
        """One GET of the VM or scale set model (and, for a set, the list of its instances)."""
        request = HttpRequest("GET", f"{self.origin}{target.vm_id}",
                              params={"api-version": self._settings.compute_api_version})
        status, headers, body = await self._guarded(request, "reading the target", "model", target.vm_id)
        if status != 200:
            raise error_from_response(status, headers, body, "reading the target", self._now())
        doc = json.loads(body)
        props = doc.get("properties") or {}
        profile = props if target.kind is TargetKind.VM else (props.get("virtualMachineProfile") or {})
        os_disk = (profile.get("storageProfile") or {}).get("osDisk") or {}
        os_type = os_disk.get("osType")
        capacity = (doc.get("sku") or {}).get("capacity") if target.kind is not TargetKind.VM else None
        fleet = await self.fleet.facts(target, doc)
        instance_ids = None
        if fleet.flexible:  # a Flexible set's instances are its member VMs, by name
            instance_ids = tuple(m.name for m in fleet.members)
        elif target.kind is not TargetKind.VM:
            instance_ids, shielded = await self.list_instances(target)
            fleet = replace(fleet, protected=shielded)
        return TargetModel(
            id=doc.get("id", target.vm_id),
            os_type=os_type if os_type in ("Windows", "Linux") else None,
            ephemeral_os_disk=bool(os_disk.get("diffDiskSettings")),
            tags={str(k): str(v) for k, v in (doc.get("tags") or {}).items()},
            capacity=int(capacity) if capacity is not None else None,
            instance_ids=instance_ids,
            fleet=fleet,
        )

    async def list_instance_ids(self, target: Target) -> tuple[str, ...]:
        """The scale set's instances now (following nextLink): what `allInstances` resolves to, and what
        named instances must be among."""
        return (await self.list_instances(target))[0]

    async def list_instances(self, target: Target) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """A Uniform set's instances now, and those protected from scale set actions (read off the same pages: the
        instance models carry protectionPolicy)."""
        url = f"{self.origin}{target.vm_id}/virtualMachines"
        request = HttpRequest("GET", url, params={"api-version": self._settings.compute_api_version})
        ids: list[str] = []
        shielded: list[str] = []
        for _ in range(1000):  # a page holds many instances; this bounds a server that loops
            status, headers, body = await self._guarded(request, "listing the scale set's instances", "instances",
                                                        target.vm_id)
            if status != 200:
                raise error_from_response(status, headers, body, "listing the scale set's instances", self._now())
            doc = json.loads(body)
            listed = [v for v in doc.get("value") or [] if v.get("instanceId") is not None]
            ids += [str(v["instanceId"]) for v in listed]
            shielded += [str(v["instanceId"]) for v in listed if protected(v)]
            link = doc.get("nextLink")
            if not link:
                break
            if not same_origin(link, self.origin):
                raise UntrustedOperationUrl(link)
            request = HttpRequest("GET", link)
        return tuple(ids), tuple(shielded)

    async def instance_health(self, target: Target, instance_ids: Sequence[str] | None = None
                              ) -> dict[str, InstanceHealth]:
        """Every asked instance's health, following the list's pages (shared/adapters/arm/views.py)."""
        return await self._views.instance_health(target, instance_ids)

    async def instance_health_page(self, target: Target, instance_ids: Sequence[str] | None, page: str | None
                                   ) -> tuple[dict[str, InstanceHealth], str | None]:
        """One read: the asked instances on one page of the list (from `page`), and the next page's link."""
        key = f"health|{target.id}|{page}|{','.join(instance_ids or ['*'])}".lower()
        page_read: tuple[dict[str, InstanceHealth], str | None] = await self._same_read.get(
            key, lambda: self._views.instance_health_page(target, instance_ids, page))
        return page_read

    async def submit(self, call: ArmCall) -> Submission:
        """POST the reimage. Raises a typed ComputeError when ARM refuses it."""
        body = call.wire_body()
        request = HttpRequest(call.method, f"{self.origin}{call.path}", params=call.query,
                              json=body if body is not None else None)
        if body is None:
            request.headers["Content-Length"] = "0"
        try:
            status, headers, raw = await self._send(request, "submit", call.target.vm_id)
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
            raise error_from_response(status, headers, raw, "submitting the reimage", self._now())
        lower = {k.lower(): v for k, v in headers.items()}
        return Submission(status, lower.get("azure-asyncoperation"), lower.get("location"),
                          parse_retry_after(lower.get("retry-after"), self._now()),
                          lower.get("x-ms-request-id"))

    async def poll(self, url: str, mode: PollMode, resource: str | None = None) -> PollResult:
        """One status read. A failed read is reported as such (read_failed), never as a failed operation. A 429
        comes back at once (the monitor waits its Retry-After on a durable timer). `resource`: the VM or scale set
        the operation runs on (its Get Operation bucket; the URL does not name it)."""
        if not same_origin(url, self.origin):
            raise UntrustedOperationUrl(url)

        async def read() -> PollResult:
            status, headers, body = await self._guarded(HttpRequest("GET", url), "reading the operation status",
                                                        "poll", resource, hold_throttled=False)
            return interpret(mode, status, headers, body, self._now())

        result: PollResult = await self._same_read.get(f"poll|{mode}|{url}", read)
        return result

    def read_delay(self, kind: str, resource: str) -> float:
        """Seconds a read of `kind` ("poll", "health") on `resource` should wait: its buckets run low
        (shared/adapters/arm/quota.py). 0: read now."""
        return self.quota.delay(resource, kind, resource)

    async def _guarded(self, request: HttpRequest, what: str, kind: str, resource: str | None = None, *,
                       hold_throttled: bool = True) -> tuple[int, dict[str, str], bytes]:
        try:
            return await self._send(request, kind, resource, hold_throttled=hold_throttled)
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
