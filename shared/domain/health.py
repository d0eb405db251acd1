"""Health after a reimage: classify ARM instance views, and combine them into one verdict.

Pure functions over the JSON ARM returns, no I/O. An instance view is the body of
`GET .../virtualMachines/{vm}/instanceView` or `.../virtualMachineScaleSets/{set}/virtualMachines/{id}/instanceView`,
or the `properties.instanceView` of an item of
`GET .../virtualMachineScaleSets/{set}/virtualMachines?$expand=instanceView`.

Healthy means, in the view's top-level `statuses`, `ProvisioningState/succeeded` and `PowerState/running`,
and, where the application health extension reports (`vmHealth`), `HealthState/healthy`. Shapes:
azure-rest-api-specs `VirtualMachine_Get_InstanceView.json`, `VirtualMachineScaleSetVM_Get_InstanceView...json`,
`VirtualMachineScaleSetVM_List_MaximumSet_Gen.json` (copies in tests/fixtures/arm/examples/), and the
health extension's "View VMHealth" (`HealthState/unknown`, level Warning). The nested `vmAgent` and
`disks` statuses also carry `ProvisioningState/*` codes; they are not the machine's state and are ignored.

A reported `HealthState/unhealthy` is only the state *now*: with Binary Health States the extension
reports Unhealthy until the application first answers, so a freshly reimaged machine may pass through
it. `summarize` therefore waits for every instance to be Healthy and only decides the others when
told the grace period is over (`final=True`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Health(StrEnum):
    HEALTHY = "Healthy"
    UNHEALTHY = "Unhealthy"
    PENDING = "Pending"  # not healthy yet, may still become so
    UNKNOWN = "Unknown"  # no view to judge by (read failed, instance missing)


# Power states a machine does not leave by itself: it will not become healthy within a grace period.
_DOWN_POWER = frozenset({"stopped", "stopping", "deallocated", "deallocating", "hibernated", "hibernating"})
# Provisioning states that will not end in a running machine.
_DEAD_PROVISIONING = frozenset({"failed", "deleting", "deleted"})
DETAIL_MAX = 512  # events carry healthDetail; keep it a sentence, not a dump
# The application health extension's type (extension profile: `ApplicationHealthLinux`; instance view:
# `Microsoft.ManagedServices.ApplicationHealthLinux`).
_HEALTH_EXTENSION_TYPES = ("applicationhealthlinux", "applicationhealthwindows")


@dataclass(frozen=True)
class InstanceHealth:
    health: Health
    detail: str

    def to_dict(self) -> dict[str, str]:
        """JSON for activity results (activities pass dicts, not objects)."""
        return {"health": self.health.value, "detail": self.detail}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> InstanceHealth:
        return cls(Health(doc["health"]), str(doc.get("detail", "")))


UNKNOWN_NO_VIEW = InstanceHealth(Health.UNKNOWN, "no instance view")


def _status_code(status: Any) -> str:
    if isinstance(status, Mapping):
        code = status.get("code")
        if isinstance(code, str):
            return code
    return ""


def _words(status: Any) -> str:
    """The human part of an InstanceViewStatus: its message, else its displayStatus."""
    if not isinstance(status, Mapping):
        return ""
    for key in ("message", "displayStatus"):
        text = status.get(key)
        if isinstance(text, str) and text.strip():
            return " ".join(text.split())[:160]
    return ""


def _find(statuses: list[Any], prefix: str) -> tuple[str | None, Any]:
    """The first status whose code starts with `prefix/` (case-insensitive): (rest of the code lower-cased, status)."""
    want = prefix.lower() + "/"
    for status in statuses:
        code = _status_code(status)
        if code.lower().startswith(want):
            return code[len(want):].lower(), status
    return None, None


def is_health_extension(type_name: Any) -> bool:
    return isinstance(type_name, str) and type_name.lower().endswith(_HEALTH_EXTENSION_TYPES)


def _reports_health_extension(view: Mapping[str, Any]) -> bool:
    extensions = view.get("extensions")
    return isinstance(extensions, list) and any(
        isinstance(e, Mapping) and is_health_extension(e.get("type")) for e in extensions)


def classify(view: Any, *, expects_health: bool = False) -> InstanceHealth:
    """One instance view → Healthy | Unhealthy | Pending | Unknown, with a short detail.

    `expects_health`: the machine has the application health extension (its model says so), so a
    view without `vmHealth` is not healthy yet. The view's own `extensions` list also says so.
    """
    if not isinstance(view, Mapping):
        return UNKNOWN_NO_VIEW
    raw = view.get("statuses")
    machine = _machine_state(list(raw) if isinstance(raw, list) else [])
    if machine is not None:  # down, failed, or still being set up: an application report says nothing yet
        return machine
    return _application_health(view, expects_health)


def _machine_state(statuses: list[Any]) -> InstanceHealth | None:
    """Unhealthy (failed, stopped) or Pending (not yet provisioned and running) from the top-level statuses;
    None when the machine is provisioned and running."""
    provisioning, prov_status = _find(statuses, "ProvisioningState")
    power, _ = _find(statuses, "PowerState")
    prov_state = (provisioning or "").split("/", 1)[0]  # "failed/InternalOperationError" -> "failed"
    if prov_state in _DEAD_PROVISIONING:
        why = _words(prov_status)
        return InstanceHealth(Health.UNHEALTHY, f"provisioning {provisioning}" + (f": {why}" if why else ""))
    if power in _DOWN_POWER:
        return InstanceHealth(Health.UNHEALTHY, f"power state {power}")
    waiting: list[str] = []
    if provisioning is None:
        waiting.append("no provisioning state yet")
    elif prov_state != "succeeded":
        waiting.append(f"provisioning {provisioning}")
    if power is None:
        waiting.append("no power state yet")
    elif power != "running":
        waiting.append(f"power state {power}")
    return InstanceHealth(Health.PENDING, "; ".join(waiting)) if waiting else None


def _application_health(view: Mapping[str, Any], expects_health: bool) -> InstanceHealth:
    """A running machine's health: the application health extension's report (`vmHealth`), where it reports."""
    vm_health = view.get("vmHealth")
    if vm_health is None and (expects_health or _reports_health_extension(view)):
        return InstanceHealth(Health.PENDING, "application health extension installed, no health report yet")
    if vm_health is None:
        return InstanceHealth(Health.HEALTHY, "running, provisioning succeeded (no application health report)")
    status = vm_health.get("status") if isinstance(vm_health, Mapping) else None
    code = _status_code(status)
    state = code.lower().removeprefix("healthstate/") if code.lower().startswith("healthstate/") else None
    why = _words(status)
    said = f"application health {state}" + (f": {why}" if why else "")
    if state == "healthy":
        return InstanceHealth(Health.HEALTHY, "running, provisioning succeeded, application health healthy")
    if state == "unhealthy":
        return InstanceHealth(Health.UNHEALTHY, said)
    if state is None:
        return InstanceHealth(Health.PENDING, "application health not reported yet")
    return InstanceHealth(Health.PENDING, said)  # initializing, unknown, or a state not known here


def classify_listed(items: Iterable[Any]) -> dict[str, InstanceHealth]:
    """Instance id → health, from the `value` items of a scale set VM list with `$expand=instanceView`.

    An item's `resources` (its extensions, as in the spec's list example) tell whether the health
    extension is installed, so a missing `vmHealth` there means "not reported yet".
    """
    out: dict[str, InstanceHealth] = {}
    for item in items:
        if not isinstance(item, Mapping) or item.get("instanceId") is None:
            continue
        props = item.get("properties")
        view = props.get("instanceView") if isinstance(props, Mapping) else None
        resources = item.get("resources")
        expects = isinstance(resources, list) and any(
            isinstance(r, Mapping) and isinstance(r.get("properties"), Mapping)
            and is_health_extension(r["properties"].get("type")) for r in resources)
        out[str(item["instanceId"])] = classify(view, expects_health=expects)
    return out
