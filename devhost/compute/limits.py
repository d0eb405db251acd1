"""The throttling limits the simulator enforces: Compute's published policies and ARM's request buckets.

Sources (research notes `arm.md`, A1-A3; docs/fidelity.md rows A26-A31):
- CTL, learn.microsoft.com/azure/virtual-machines/compute-throttling-limits (ms.date 05/27/2024): a token
  bucket per policy, per resource and per subscription, refilled every minute; the tables below, as
  (refill per minute, capacity) per resource and per subscription;
- ARMT, learn.microsoft.com/azure/azure-resource-manager/management/request-limits-and-throttling (ms.date
  05/28/2025): per subscription and principal, reads 250 refilled at 25/s, writes 200 at 10/s; a global
  bucket of 15 times that across principals.

`ArmLimits.load("azure" | "off" | FILE)` is what `python -m devhost --arm-limits` takes; FILE is a JSON of
overrides on the Azure limits, for example
`{"policies": {"VMScaleSetHighCostGet": {"resource": [100, 300]}}, "armReads": [25, 250]}`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

Rate = tuple[float, float]  # (refill, capacity): per minute for Compute policies, per second for ARM's buckets


class PolicyLimits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    resource: Rate | None = Field(description="per resource; None: only the subscription bucket applies")
    subscription: Rate


# CTL's tables. The policy names are the simulator's own (Compute's header names changed between doc
# revisions, research A2); the app must not key on them.
AZURE_POLICIES: dict[str, PolicyLimits] = {
    "PutVM": PolicyLimits(resource=(4, 12), subscription=(500, 1500)),
    "UpdateVM": PolicyLimits(resource=(4, 12), subscription=(500, 1500)),  # Reimage is an Update VM API
    "LowCostGetVM": PolicyLimits(resource=(12, 36), subscription=(8000, 24000)),  # Get, Instance View
    "HighCostGetVM": PolicyLimits(resource=None, subscription=(300, 900)),  # List, List All (subscription only)
    "GetOperation": PolicyLimits(resource=(15, 45), subscription=(5000, 15000)),
    "VMScaleSetPut": PolicyLimits(resource=(4, 12), subscription=(125, 375)),
    # Update, and (CTL footnote 2: "Only subscription level policies are applicable") Reimage and Reimage All
    "VMScaleSetUpdate": PolicyLimits(resource=(4, 12), subscription=(500, 1500)),
    "VMScaleSetLowCostGet": PolicyLimits(resource=(12, 36), subscription=(800, 2400)),  # Get
    "VMScaleSetHighCostGet": PolicyLimits(resource=(10, 30), subscription=(360, 1080)),  # Get Instance View, List
    "VMScaleSetVMUpdate": PolicyLimits(resource=(4, 12), subscription=(500, 1500)),  # Reimage, ReimageAll
    "VMScaleSetVMGet": PolicyLimits(resource=(12, 36), subscription=(2000, 6000)),  # Get, GetInstance View
}


class ArmLimits(BaseModel):
    """What the simulator throttles, and how it says so. Frozen: the simulator swaps the whole object."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    enabled: bool = True
    policies: dict[str, PolicyLimits] = Field(default_factory=lambda: dict(AZURE_POLICIES))
    arm_reads: Rate = Field((25, 250), alias="armReads")
    arm_writes: Rate = Field((10, 200), alias="armWrites")
    global_factor: float = Field(15, alias="globalFactor", gt=0)
    # CTL: "Users can successfully invoke API calls, 1 min after getting throttled"; real answers say 120-1235 s.
    compute_retry_after_seconds: int = Field(60, alias="computeRetryAfterSeconds", ge=1)
    # Compute's header names: "current" (TTE 2024: `HighCostGet;0`) or "legacy" (TTE 2018: `...3Min`/`...30Min`).
    policy_names: Literal["current", "legacy"] = Field("current", alias="policyNames")
    # One comma-joined x-ms-ratelimit-remaining-resource (as recorded) or one header per policy (as TTE says).
    header_style: Literal["joined", "split"] = Field("joined", alias="headerStyle")

    @field_validator("policies")
    @classmethod
    def _known(cls, value: dict[str, PolicyLimits]) -> dict[str, PolicyLimits]:
        unknown = sorted(set(value) - set(AZURE_POLICIES))
        if unknown:
            raise ValueError(f"unknown policies {unknown}; the policies are {sorted(AZURE_POLICIES)}")
        return value

    @classmethod
    def azure(cls) -> ArmLimits:
        return cls()

    @classmethod
    def off(cls) -> ArmLimits:
        return cls(enabled=False)

    def lifted(self, factor: float) -> ArmLimits:
        """Every bucket `factor` times larger and faster (tests and benches that measure something else)."""
        def up(rate: Rate | None) -> Rate | None:
            return None if rate is None else (rate[0] * factor, rate[1] * factor)

        policies = {name: PolicyLimits(resource=up(p.resource), subscription=up(p.subscription) or p.subscription)
                    for name, p in self.policies.items()}
        return self.model_copy(update={"policies": policies, "arm_reads": up(self.arm_reads),
                                       "arm_writes": up(self.arm_writes)})

    @classmethod
    def overrides(cls, doc: dict[str, Any]) -> ArmLimits:
        """The Azure limits with `doc`'s overrides (a policy's given fields replace its own)."""
        if not isinstance(doc, dict):
            raise ValueError("the limits file must hold a JSON object")
        merged: dict[str, Any] = {**doc}
        given = doc.get("policies") or {}
        if not isinstance(given, dict):
            raise ValueError("policies must be an object of policy name -> {resource, subscription}")
        unknown = sorted(set(given) - set(AZURE_POLICIES))
        if unknown:
            raise ValueError(f"unknown policies {unknown}; the policies are {sorted(AZURE_POLICIES)}")
        merged["policies"] = {name: {**AZURE_POLICIES[name].model_dump(), **(given.get(name) or {})}
                              if name in AZURE_POLICIES else given[name]
                              for name in {*AZURE_POLICIES, *given}}
        return cls.model_validate(merged)

    @classmethod
    def load(cls, spec: str) -> ArmLimits:
        """`azure`, `off`, or a JSON file of overrides. ValueError names what is wrong."""
        if spec == "azure":
            return cls.azure()
        if spec == "off":
            return cls.off()
        path = Path(spec)
        try:
            doc = json.loads(path.read_text())
        except OSError as exc:
            raise ValueError(f"cannot read {spec}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise ValueError(f"{spec} is not JSON: {exc}") from None
        try:
            return cls.overrides(doc)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"{spec}: {where}: {first['msg']}") from None
        except ValueError as exc:
            raise ValueError(f"{spec}: {exc}") from None
