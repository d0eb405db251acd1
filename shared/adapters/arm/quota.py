"""Self-throttling: what ARM and Compute say is left, read off every answer, and how long a read that can wait
should wait when a bucket runs low.

Every ARM answer carries the remaining counts of the buckets the call was charged to (research notes `arm.md`
A2, A3): `x-ms-ratelimit-remaining-resource: <Policy>;<n>[,<Policy>;<n>...]` (Compute's, per resource and per
subscription; one comma-joined header or one header per policy, and the policy names change between Compute's
doc revisions, so nothing here keys on a name) and `x-ms-ratelimit-remaining-subscription-{reads,writes}`
(ARM's, per subscription and principal). `QuotaPolicy`, an azure-core pipeline policy, records them per
target and per kind of call (the model read, a poll, a health read, the POST), so what a poll answer said is
what the next poll of that target will be charged against.

A read that can wait (a poll, a health read) waits while the lowest count its kind last saw on its target is
at or below ARM_QUOTA_LOW_WATER, until that count has refilled above it: Compute refills its smallest read
bucket (a scale set's High Cost Get, 10 a minute) a token every 6 s, ARM its read bucket 25 a second (CTL,
ARMT). The counts are this process's view: the last answer it saw, not a promise.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import DistributedTracingPolicy, SansIOHTTPPolicy

from shared.adapters.telemetry import ARM_REMAINING

COMPUTE_HEADER = "x-ms-ratelimit-remaining-resource"
ARM_HEADERS = {"reads": "x-ms-ratelimit-remaining-subscription-reads",
               "writes": "x-ms-ratelimit-remaining-subscription-writes"}
COMPUTE_TOKEN_SECONDS = 6.0  # Compute's slowest read refill: VMSS High Cost Get, 10 a minute (CTL)
ARM_READ_TOKEN_SECONDS = 1 / 25  # ARM's read bucket refills 25 a second (ARMT)
_RESOURCE = re.compile(r"^(/subscriptions/[^/]+/resourcegroups/[^/]+/providers/microsoft\.compute/"
                       r"(?:virtualmachines|virtualmachinescalesets)/[^/?]+)", re.IGNORECASE)
_SUBSCRIPTION = re.compile(r"^/subscriptions/([^/?]+)", re.IGNORECASE)


def parse_remaining(values: Iterable[str]) -> dict[str, int]:
    """`Microsoft.Compute/HighCostGet3Min;170,Microsoft.Compute/HighCostGet30Min;852` (one or several headers)
    -> {name: count}. A part that is not `name;count` is skipped."""
    out: dict[str, int] = {}
    for value in values:
        for part in value.split(","):
            name, sep, count = part.strip().rpartition(";")
            if sep and name and count.strip().lstrip("-").isdigit():
                out[name] = int(count)
    return out


def resource_of(path: str) -> str | None:
    """The VM or scale set a Compute URL path names (lower case), or None (an operation's status URL)."""
    m = _RESOURCE.match(path)
    return m.group(1).lower() if m else None


@dataclass
class Seen:
    counts: dict[str, int]
    at: float

    @property
    def lowest(self) -> int | None:
        return min(self.counts.values()) if self.counts else None


@dataclass
class QuotaTracker:
    """The remaining counts this process last saw, per target and kind of call, and per subscription."""

    clock: Callable[[], float]
    low_water: int = 3
    resources: dict[tuple[str, str], Seen] = field(default_factory=dict)
    subscriptions: dict[tuple[str, str], Seen] = field(default_factory=dict)
    blocked: dict[tuple[str, str], float] = field(default_factory=dict)  # (target, kind) -> until (ARM's 429)
    throttled: int = 0  # 429s seen

    def block(self, resource: str | None, kind: str | None, retry_after: float | None) -> None:
        """ARM answered 429: its buckets refuse every request until Retry-After (ARMT), so none is sent before."""
        if resource and kind and retry_after:
            key = (resource.lower(), kind)
            self.blocked[key] = max(self.blocked.get(key, 0.0), self.clock() + retry_after)

    def blocked_for(self, resource: str, kinds: Iterable[str]) -> float:
        """Seconds left of ARM's Retry-After for these kinds of call on this target (0: none)."""
        now = self.clock()
        return max([0.0, *(self.blocked.get((resource.lower(), k), 0.0) - now for k in kinds)])

    def observe(self, path: str, method: str, headers: Any, *, resource: str | None, kind: str | None) -> None:
        now = self.clock()
        compute = parse_remaining(_values(headers, COMPUTE_HEADER))
        target = (resource or resource_of(path) or "").lower()
        if compute and target:
            self.resources[(target, kind or method.lower())] = Seen(compute, now)
        m = _SUBSCRIPTION.match(path)
        verb = "reads" if method.upper() == "GET" else "writes"
        arm = parse_remaining(f"{verb};{v}" for v in _values(headers, ARM_HEADERS[verb]))
        if m and arm:
            self.subscriptions[(m.group(1).lower(), verb)] = Seen(arm, now)

    def delay(self, path: str, kind: str, resource: str | None = None) -> float:
        """Seconds a read of `kind` on this target should wait before it is sent (0: send it now)."""
        now = self.clock()
        target = (resource or resource_of(path) or "").lower()
        waits = [self.blocked_for(target, (kind,))]
        seen = self.resources.get((target, kind))
        if seen is not None and seen.lowest is not None and seen.lowest <= self.low_water:
            waits.append((self.low_water + 1 - seen.lowest) * COMPUTE_TOKEN_SECONDS - (now - seen.at))
        m = _SUBSCRIPTION.match(path) or _SUBSCRIPTION.match(target)
        arm = self.subscriptions.get((m.group(1).lower(), "reads")) if m else None
        arm_low = 10 * self.low_water  # ARM's buckets are ten times deeper than Compute's
        if arm is not None and arm.lowest is not None and arm.lowest <= arm_low:
            waits.append((arm_low + 1 - arm.lowest) * ARM_READ_TOKEN_SECONDS - (now - arm.at))
        return max(0.0, math.ceil(max(waits) * 10) / 10)

    def room(self, resource: str, kind: str, max_age: float = 60.0) -> int | None:
        """The lowest count the last answer to `kind` on this target showed, if seen within `max_age` seconds
        (Compute's window: older counts have refilled since); None: nothing recent to go by."""
        seen = self.resources.get((resource.lower(), kind))
        if seen is None or seen.lowest is None or self.clock() - seen.at > max_age:
            return None
        return seen.lowest

    def view(self, resource: str) -> dict[str, Any]:
        """What this process last saw for a target (GET /api/targets `armQuota`): per kind of call, each policy's
        remaining count and when it was seen; its subscription's ARM counts; and Retry-Afters not yet passed."""
        key, now = resource.lower(), self.clock()
        calls = {kind: {"remaining": dict(seen.counts), "lowest": seen.lowest, "seenAt": _iso(seen.at)}
                 for (target, kind), seen in self.resources.items() if target == key}
        m = _SUBSCRIPTION.match(key)
        sub = {verb: seen.lowest for (s, verb), seen in self.subscriptions.items()
               if m and s == m.group(1).lower() and seen.lowest is not None}
        until = {kind: _iso(t) for (target, kind), t in self.blocked.items() if target == key and t > now}
        return {"calls": calls, "subscription": sub, "throttledUntil": until}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _values(headers: Any, name: str) -> list[str]:
    getall = getattr(headers, "getall", None)
    if getall is not None:  # aiohttp's multidict: every header of that name
        return [str(v) for v in getall(name, [])]
    value = headers.get(name) if hasattr(headers, "get") else None
    return [str(value)] if value is not None else []


class QuotaPolicy(SansIOHTTPPolicy[Any, Any]):
    """Reads the remaining counts off every ARM answer (each retry included) into the tracker.

    A caller names what it reads with the `quota_resource` and `quota_kind` options of `send_request`; they are
    taken out here, before the transport sees them."""

    def __init__(self, tracker: QuotaTracker, on_throttled: Callable[[str | None, str | None, Any], None]) -> None:
        self._tracker = tracker
        self._on_throttled = on_throttled

    def on_request(self, request: PipelineRequest[Any]) -> None:
        options = request.context.options
        for name in ("quota_resource", "quota_kind"):
            if name in options:
                request.context[name] = options.pop(name)

    def on_response(self, request: PipelineRequest[Any], response: PipelineResponse[Any, Any]) -> None:
        http_request, http = request.http_request, response.http_response
        path = re.sub(r"^[a-z]+://[^/]+", "", http_request.url, flags=re.IGNORECASE)
        resource, kind = request.context.get("quota_resource"), request.context.get("quota_kind")
        self._tracker.observe(path, http_request.method, http.headers, resource=resource, kind=kind)
        lowest = min(parse_remaining(_values(http.headers, COMPUTE_HEADER)).values(), default=None)
        span = request.context.get(DistributedTracingPolicy.TRACING_CONTEXT)  # the ARM call's dependency span
        if span is not None and lowest is not None:
            setter = getattr(span, "set_attribute", None) or getattr(span, "add_attribute", None)
            if setter is not None:
                setter(ARM_REMAINING, lowest)
        if http.status_code == 429:
            self._tracker.throttled += 1
            retry = http.headers.get("Retry-After")
            seconds = float(retry) if retry and str(retry).strip().isdigit() else None
            self._tracker.block(resource or resource_of(path), kind, seconds)
            self._on_throttled(resource or resource_of(path), kind, http.headers)
