"""Throttling as Compute and ARM do it: token buckets, 429s with their real bodies, and remaining-count headers.

Every request that passed authentication is charged (research notes `arm.md` A1-A3; docs/fidelity.md A26-A31):
- to ARM's gateway first: the subscription's bucket for this principal and its global bucket, reads for a GET
  and writes for anything else (ARMT). Short: 429 `SubscriptionRequestsThrottled`, Retry-After in seconds,
  `x-ms-failure-cause: gateway`, and Compute is not reached;
- then to each Compute policy the call falls under (CTL), per resource and per subscription. Short on any:
  429 `OperationNotAllowed` with one `TooManyRequests` detail per exhausted policy (TTE; the AzureTRE capture:
  the `error` envelope and `innererror.internalErrorCode`), and a Retry-After of at least
  `compute_retry_after_seconds` ("1 min after getting throttled");
- a throttled bucket refuses everything until its Retry-After has passed ("If you send a request before the
  retry value elapses, your request isn't processed and a new retry value is returned", ARMT);
- nothing is consumed by a request that is refused.
Every answer carries `x-ms-ratelimit-remaining-subscription-{reads,writes}` and `...-global-{reads,writes}`
(ARMT; azure-powershell#26256) and `x-ms-ratelimit-remaining-resource: <Policy>;<n>[,...]` for the Compute
buckets it was charged to (TTE), counting down to 0. A scale-set reimage is charged one token per instance
(TTE: "Batch requests ... can charge multiple counts"; `x-ms-request-charge`), to the subscription bucket only
(CTL footnote 2). The dangerous readings where the docs are silent: the scale set's VM list is charged per
page to the set's High Cost Get bucket, and an operation's status to the Get Operation bucket of the resource
it runs on (every poll of every operation on one set shares it).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from devhost.compute.arm import COMPUTE_MESSAGE, OPERATION_PATH, RESOURCE_PATH, VM_LIST_PATH, Parsed, iso, lock_key
from devhost.compute.evidence import BOOT_DIAGNOSTICS_PATH
from devhost.compute.limits import ArmLimits, Rate

_SUBSCRIPTION = re.compile(r"^/subscriptions/([^/]+)", re.IGNORECASE)


class Lookup(Protocol):
    """What the throttle needs to know of the simulator's state."""

    def operation_key(self, operation_id: str) -> str | None: ...

    def instance_count(self, key: str) -> int: ...


@dataclass(frozen=True)
class Charge:
    policy: str
    resource: str | None  # the resource bucket's key (lower case), None: the subscription bucket only
    count: int = 1


@dataclass
class Bucket:
    name: str
    per_second: float
    capacity: float
    tokens: float
    at: float
    blocked_until: float = 0.0
    measured: int = 0
    since: float = 0.0

    @classmethod
    def full(cls, name: str, rate: Rate, per: float, now: float) -> Bucket:
        return cls(name, rate[0] / per, rate[1], rate[1], now, since=now)

    def fill(self, now: float) -> None:
        if now > self.at:
            self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.per_second)
            self.at = now
        if self.tokens >= self.capacity:
            self.measured, self.since = 0, now

    def short(self, count: int, now: float) -> float | None:
        """Seconds until `count` tokens may be taken (blocked, or not enough), None when they may now."""
        self.fill(now)
        self.measured += count
        if now < self.blocked_until:
            return self.blocked_until - now
        if self.tokens >= count:
            return None
        return (count - self.tokens) / self.per_second if self.per_second > 0 else math.inf

    def remaining(self) -> int:
        return max(0, math.floor(self.tokens))


@dataclass
class Verdict:
    refused: web.StreamResponse | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)

    def apply(self, response: web.StreamResponse) -> web.StreamResponse:
        for name, value in self.headers:
            response.headers.add(name, value)
        return response


def charges(method: str, path: str, body: Any, lookup: Lookup) -> list[Charge]:
    """The Compute policies a call falls under (CTL's tables), each with the bucket it is kept in."""
    if m := OPERATION_PATH.match(path):
        return [Charge("GetOperation", lookup.operation_key(m["id"]) or f"operation:{m['id'].lower()}")]
    if VM_LIST_PATH.match(path):  # a resource group's VM list (a Flexible set's members): High Cost Get VM
        return [Charge("HighCostGetVM", None)] if method == "GET" else []
    if m := BOOT_DIAGNOSTICS_PATH.match(path):  # research notes `arm.md` C10: a read's policies, though a POST
        seg = "virtualMachines" if m["type"].lower() == "virtualmachines" else "virtualMachineScaleSets"
        key = lock_key(f"/subscriptions/{m['sub']}/resourceGroups/{m['rg']}/providers/Microsoft.Compute/{seg}/"
                       f"{m['name']}")
        return [Charge("VMScaleSetVMGet", f"{key}#{m['inst']}")] if m["inst"] else [Charge("LowCostGetVM", key)]
    m = RESOURCE_PATH.match(path)
    if m is None:
        return []
    p = Parsed.of(m)
    key = lock_key(p.resource_id)
    if p.rtype == "virtualmachines":
        policy = {"GET": "LowCostGetVM", "POST": "UpdateVM", "PUT": "PutVM", "PATCH": "UpdateVM"}.get(method)
        return [Charge(policy, key)] if policy else []
    if p.inst is not None:
        policy = "VMScaleSetVMGet" if method == "GET" else "VMScaleSetVMUpdate"
        return [Charge(policy, f"{key}#{p.inst}")]
    if method == "GET":
        return [Charge("VMScaleSetHighCostGet" if p.is_list or p.action == "instanceview" else
                       "VMScaleSetLowCostGet", key)]
    if method == "POST" and p.action == "setorchestrationservicestate":  # CTL: a set's Update, per resource
        return [Charge("VMScaleSetUpdate", key)]
    if method == "POST":  # reimage / reimageall of the set: one token per instance, subscription bucket only
        ids = body.get("instanceIds") if isinstance(body, dict) else None
        count = len(ids) if isinstance(ids, list) and ids else lookup.instance_count(key)
        return [Charge("VMScaleSetUpdate", None, max(1, count))]
    return [Charge("VMScaleSetPut" if method == "PUT" else "VMScaleSetUpdate", key)]


class Throttle:
    """The buckets, kept while the limits object stays the same (a new one starts every bucket full)."""

    def __init__(self, lookup: Lookup) -> None:
        self.lookup = lookup
        self._limits: ArmLimits | None = None
        self._buckets: dict[tuple[str, ...], Bucket] = {}
        self.refused = 0

    def check(self, limits: ArmLimits, method: str, path: str, body: Any, principal: str, now: float) -> Verdict:
        if limits is not self._limits:
            self._limits, self._buckets = limits, {}
        if not limits.enabled:
            return Verdict()
        m = _SUBSCRIPTION.match(path)
        sub = m.group(1).lower() if m else "-"
        kind = "reads" if method == "GET" else "writes"
        own, everyone = self._arm_buckets(limits, sub, principal, kind, now)
        verdict = self._gateway(own, everyone, sub, principal, kind, now)
        if verdict.refused is not None:
            return verdict
        compute = self._compute(limits, method, path, body, sub, now, verdict)
        if compute is not None:
            self.refused += 1
            verdict.refused = verdict.apply(compute)
        return verdict

    def _arm_buckets(self, limits: ArmLimits, sub: str, principal: str, kind: str, now: float
                     ) -> tuple[Bucket, Bucket]:
        rate = limits.arm_reads if kind == "reads" else limits.arm_writes
        wide = (rate[0] * limits.global_factor, rate[1] * limits.global_factor)
        own = self._bucket(("arm", sub, principal, kind), kind, rate, 1.0, now)
        everyone = self._bucket(("arm", sub, "*", kind), kind, wide, 1.0, now)
        return own, everyone

    def _bucket(self, key: tuple[str, ...], name: str, rate: Rate, per: float, now: float) -> Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = Bucket.full(name, rate, per, now)
        return bucket

    def _gateway(self, own: Bucket, everyone: Bucket, sub: str, principal: str, kind: str, now: float) -> Verdict:
        waits = [(b, w) for b in (own, everyone) if (w := b.short(1, now)) is not None]
        if not waits:
            own.tokens -= 1
            everyone.tokens -= 1
        verdict = Verdict(headers=[(f"x-ms-ratelimit-remaining-subscription-{kind}", str(own.remaining())),
                                   (f"x-ms-ratelimit-remaining-subscription-global-{kind}",
                                    str(everyone.remaining()))])
        if waits:
            retry = max(1, math.ceil(max(w for _, w in waits)))
            for bucket, _ in waits:
                bucket.blocked_until = max(bucket.blocked_until, now + retry)
            self.refused += 1
            verb = "read" if kind == "reads" else "write"
            verdict.refused = verdict.apply(web.json_response({"error": {
                "code": "SubscriptionRequestsThrottled",
                "message": f"Number of '{verb}' requests for subscription '{sub}' actor '{principal}' exceeded. "
                f"Please try again after '{retry}' seconds after additional tokens are available. Refer to "
                "https://aka.ms/arm-throttling for additional information."}},
                status=429, headers={"Retry-After": str(retry), "x-ms-failure-cause": "gateway"}))
        return verdict

    def _compute(self, limits: ArmLimits, method: str, path: str, body: Any, sub: str, now: float,
                 verdict: Verdict) -> web.Response | None:
        """Charge the Compute policies; their 429 when one is short (nothing is taken then)."""
        legacy = limits.policy_names == "legacy"
        taken: list[tuple[Bucket, int]] = []
        for charge in charges(method, path, body, self.lookup):
            policy = limits.policies[charge.policy]
            if charge.resource is not None and policy.resource is not None:
                name = f"{charge.policy}3Min" if legacy else charge.policy
                taken.append((self._bucket(("compute", charge.resource, charge.policy), name, policy.resource,
                                           60.0, now), charge.count))
            name = f"{charge.policy}30Min" if legacy else f"{charge.policy}Subscription"
            taken.append((self._bucket(("compute", sub, charge.policy), name, policy.subscription, 60.0, now),
                          charge.count))
            if charge.resource is None:
                verdict.headers.append(("x-ms-request-charge", str(charge.count)))
        short = [(b, w) for b, count in taken if (w := b.short(count, now)) is not None]
        if not short:
            for bucket, count in taken:
                bucket.tokens -= count
        self._remaining_headers(limits, [b for b, _ in taken], verdict)
        if not short:
            return None
        # A bucket already throttled says how long is left; one running out now blocks for at least the floor.
        retry = max(math.ceil(w) if now < b.blocked_until else max(limits.compute_retry_after_seconds, math.ceil(w))
                    for b, w in short)
        for bucket, _ in short:
            bucket.blocked_until = max(bucket.blocked_until, now + retry)
        details = [{"code": "TooManyRequests", "target": b.name, "message": json.dumps({
            "operationGroup": b.name, "startTime": iso(b.since), "endTime": iso(b.blocked_until),
            "allowedRequestCount": int(b.capacity), "measuredRequestCount": b.measured})} for b, _ in short]
        return web.json_response({"error": {"code": "OperationNotAllowed", "message": COMPUTE_MESSAGE,
                                            "details": details,
                                            "innererror": {"internalErrorCode": "TooManyRequestsReceived"}}},
                                 status=429, headers={"Retry-After": str(retry)})

    @staticmethod
    def _remaining_headers(limits: ArmLimits, buckets: list[Bucket], verdict: Verdict) -> None:
        counts = [f"Microsoft.Compute/{b.name};{b.remaining()}" for b in buckets]
        if not counts:
            return
        if limits.header_style == "split":
            verdict.headers += [("x-ms-ratelimit-remaining-resource", c) for c in counts]
        else:
            verdict.headers.append(("x-ms-ratelimit-remaining-resource", ",".join(counts)))
