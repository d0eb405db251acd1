"""Instance views: ProvisioningState (updating while a reimage runs), PowerState, the machine's extensions,
and vmHealth as the application health extension reports it (after a reimage it settles; faults bend it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

from devhost.compute.arm import iso
from devhost.compute.faults import Fault, bent
from devhost.compute.operations import Operations
from devhost.compute.resources import Inventory

HEALTH_EXTENSIONS = {"applicationhealthlinux", "applicationhealthwindows"}
SettleHealth = Literal["initializing", "unhealthy", "absent"]
_HEALTH_TEXT = {"healthy": ("Info", "The VM is healthy"), "unhealthy": ("Warning", "The VM is unhealthy"),
                "unknown": ("Warning", "The VM health is unknown"),
                "initializing": ("Warning", "The VM health is initializing")}


def health_extension(resource: dict[str, Any]) -> dict[str, Any] | None:
    """The application health extension in a VM's or scale set's model, if it has one."""
    props = resource.get("properties") or {}
    if "virtualMachineProfile" in props:
        extensions = ((props["virtualMachineProfile"].get("extensionProfile") or {}).get("extensions") or [])
    else:  # a VM's extensions are child resources; the simulator reads them from the VM body
        extensions = resource.get("resources") or []
    return next((e for e in extensions if isinstance(e, dict)
                 and str((e.get("properties") or {}).get("type", "")).lower() in HEALTH_EXTENSIONS), None)


def extension_resources(vmss: dict[str, Any]) -> list[dict[str, Any]]:
    """A scale set's extensions as the child resources each of its instances lists."""
    profile = (vmss.get("properties") or {}).get("virtualMachineProfile") or {}
    out = []
    for e in (profile.get("extensionProfile") or {}).get("extensions") or []:
        if isinstance(e, dict) and e.get("name"):
            props = {k: v for k, v in (e.get("properties") or {}).items() if k != "protectedSettings"}
            out.append({"name": e["name"], "type": "Microsoft.Compute/virtualMachines/extensions",
                        "location": vmss.get("location"),
                        "properties": {**props, "provisioningState": "Succeeded"}})
    return out


class ViewSettings(Protocol):
    """What a view reads from the simulator at each request (tests change the switches between requests)."""

    health_settle_seconds: float
    settle_health: SettleHealth
    faults: list[Fault]


@dataclass(eq=False)
class InstanceViews:
    settings: ViewSettings
    inventory: Inventory
    operations: Operations

    def view(self, key: str, inst: str, computer_name: str, ext: dict[str, Any] | None, now: float,
             fault: Fault | None, per_instance: list[Fault] | None = None) -> dict[str, Any]:
        instance_key = f"{key}#{inst}" if inst else key
        running = self.operations.running_on(key, instance_key, now) is not None
        state = self.inventory.vm_state.get(key, {}).get(inst, {})
        power = str(state.get("power", "running"))
        if running:
            prov = {"code": "ProvisioningState/updating", "level": "Info", "displayStatus": "Updating"}
        else:
            prov = {"code": "ProvisioningState/succeeded", "level": "Info", "displayStatus": "Provisioning succeeded",
                    "time": iso(float(state.get("reimagedAt") or now))}
        view: dict[str, Any] = {"computerName": computer_name, "statuses": [
            prov, {"code": f"PowerState/{power}", "level": "Info", "displayStatus": f"VM {power}"}]}
        if ext is not None:
            # The extension's own instance view ("{publisher}.{type}"), as ARM lists each extension of the machine.
            ext_props = ext.get("properties") or {}
            view["extensions"] = [{
                "name": ext.get("name", "HealthExtension"),
                "type": f"{ext_props.get('publisher', 'Microsoft.ManagedServices')}.{ext_props.get('type')}",
                "typeHandlerVersion": str(ext_props.get("typeHandlerVersion", "2.0")),
                "statuses": [{"code": "ProvisioningState/succeeded", "level": "Info",
                              "displayStatus": "Provisioning succeeded"}]}]
            health: str | None = str(state.get("health", "healthy"))
            if running:
                health = "unknown"
            elif now < float(state.get("reimagedAt") or 0) + self.settings.health_settle_seconds:
                health = None if self.settings.settle_health == "absent" else self.settings.settle_health
            health = bent(self.settings.faults, inst, fault, per_instance or []) or health
            if health is not None:
                level, text = _HEALTH_TEXT[health]
                view["vmHealth"] = {"status": {"code": f"HealthState/{health}", "level": level,
                                               "displayStatus": text, "time": iso(now)}}
        return view
