"""What every ARM Compute answer shares: the paths and resource ids, the api-version rule, the CloudError
body and timestamps."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from aiohttp import web

# The reimage operations exist from 2017-03-30 on (spec version list); newer SDKs send newer versions.
FIRST_API_VERSION = "2017-03-30"
# Compute's throttling message (TTE; it says "subscription" whichever bucket ran out).
COMPUTE_MESSAGE = "The server rejected the request because too many requests have been received for this subscription."
_API_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$")
HealthState = Literal["healthy", "unhealthy", "unknown", "initializing"]

_PREFIX = r"^/subscriptions/(?P<sub>[^/]+)/resourcegroups/(?P<rg>[^/]+)/providers/microsoft\.compute"
RESOURCE_PATH = re.compile(
    _PREFIX + r"/(?P<type>virtualmachines|virtualmachinescalesets)/(?P<name>[^/]+)"
    r"(?P<list>/virtualmachines)?(?:/virtualmachines/(?P<inst>[^/]+))?"
    r"(?:/(?P<action>reimage|reimageall|instanceview|setorchestrationservicestate))?/?$",
    re.IGNORECASE,
)
# A resource group's VM list (a Flexible set's members: `$filter=virtualMachineScaleSet/id eq '<id>'`).
VM_LIST_PATH = re.compile(_PREFIX + r"/virtualmachines/?$", re.IGNORECASE)
# ARM management locks at a subscription, a resource group or a resource (Microsoft.Authorization/locks).
LOCKS_PATH = re.compile(
    r"^(?P<scope>/subscriptions/[^/]+(?:/resourcegroups/[^/]+(?:/providers/[^/]+(?:/[^/]+/[^/]+)+)?)?)"
    r"/providers/microsoft\.authorization/locks(?:/(?P<name>[^/]+))?/?$",
    re.IGNORECASE,
)
OPERATION_PATH = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/providers/microsoft\.compute/locations/(?P<loc>[^/]+)"
    r"/operations/(?P<id>[^/]+)$",
    re.IGNORECASE,
)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def cloud_error(status: int, code: str, message: str, target: str | None = None,
                headers: dict[str, str] | None = None) -> web.Response:
    err: dict[str, Any] = {"code": code, "message": message}
    if target:
        err["target"] = target
    return web.json_response({"error": err}, status=status, headers=headers)


def api_version_error(version: str | None) -> web.Response | None:
    """ARM's answer to a missing or invalid api-version; None when the version is accepted."""
    if not version:
        return cloud_error(400, "MissingApiVersionParameter",
                           "The api-version query parameter (?api-version=) is required for all requests.")
    if not _API_VERSION.match(version) or version[:10] < FIRST_API_VERSION:
        return cloud_error(400, "InvalidApiVersionParameter",
                           f"The api-version '{version}' is invalid for Microsoft.Compute.")
    return None


def lock_key(resource_id: str) -> str:
    """Resources are stored, and operations locked, per lower-cased id (ARM paths are case-insensitive)."""
    return resource_id.lower()


@dataclass
class Parsed:
    sub: str
    rg: str
    rtype: str  # "virtualmachines" | "virtualmachinescalesets"
    name: str
    inst: str | None
    action: str | None
    is_list: bool

    @classmethod
    def of(cls, m: re.Match[str]) -> Parsed:
        """A RESOURCE_PATH match."""
        return cls(m["sub"], m["rg"], m["type"].lower(), m["name"], m["inst"],
                   m["action"].lower() if m["action"] else None, bool(m["list"]))

    @property
    def rg_id(self) -> str:
        return f"/subscriptions/{self.sub}/resourceGroups/{self.rg}"

    @property
    def resource_id(self) -> str:
        seg = "virtualMachines" if self.rtype == "virtualmachines" else "virtualMachineScaleSets"
        return f"{self.rg_id}/providers/Microsoft.Compute/{seg}/{self.name}"
