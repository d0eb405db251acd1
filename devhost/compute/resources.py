"""The VMs, scale sets and scale-set instances that exist: their models as a PUT/PATCH leaves them (ARM
defaults filled in, secrets dropped), sizing a set by sku.capacity, seeding, and the per-machine state a
model does not hold (power state, reported health, when it was last reimaged), saved per resource."""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

from devhost.compute.arm import RESOURCE_PATH, HealthState, Parsed, lock_key
from devhost.compute.persistence import Store

DEFAULT_IMAGE_VERSION = "2026.1.0"


class Inventory:
    def __init__(self, resources: dict[str, dict[str, Any]], instances: dict[str, dict[str, dict[str, Any]]],
                 store: Store | None) -> None:
        self.resources = resources  # lock key -> the VM's or scale set's model
        self.instances = instances  # scale set's lock key -> instance id -> the instance's model
        # lock key -> instance id ("" for a VM) -> {"power", "health", "reimagedAt"}
        self.vm_state: dict[str, dict[str, dict[str, Any]]] = {}
        self.store = store

    # ---- persistence ----------------------------------------------------------------------------
    def load(self) -> None:
        assert self.store is not None
        for doc in self.store.read_all(self.store.resources):
            key = doc["key"]
            self.resources[key] = doc["resource"]
            if doc.get("instances") is not None:
                self.instances[key] = doc["instances"]
            self.vm_state[key] = doc.get("vmState") or {}

    def save(self, key: str) -> None:
        if self.store is None:
            return
        if key not in self.resources:
            self.store.save_resource(key, None)
            return
        self.store.save_resource(key, {"key": key, "resource": self.resources[key],
                                       "instances": self.instances.get(key), "vmState": self.vm_state.get(key, {})})

    # ---- per-machine state: power, health -------------------------------------------------------
    def state_of(self, key: str, inst: str) -> dict[str, Any]:
        return self.vm_state.setdefault(key, {}).setdefault(inst, {})

    @staticmethod
    def split(resource_id: str) -> tuple[str, str]:
        """(lock key, instance id or "") for a VM, a scale set instance, or (all of) a scale set."""
        m = RESOURCE_PATH.match(resource_id)
        if m is None or m["action"] or m["list"]:
            raise ValueError(f"not a VM or scale set instance id: {resource_id}")
        p = Parsed.of(m)
        return lock_key(p.resource_id), p.inst or ""

    def set_power_state(self, resource_id: str, state: str) -> None:
        key, inst = self.split(resource_id)
        self.state_of(key, inst)["power"] = state
        self.save(key)

    def set_health(self, resource_id: str, state: HealthState) -> None:
        key, inst = self.split(resource_id)
        self.state_of(key, inst)["health"] = state
        self.save(key)

    def power(self, key: str, inst: str) -> str:
        return str(self.vm_state.get(key, {}).get(inst, {}).get("power", "running"))

    # ---- models ---------------------------------------------------------------------------------
    def upsert(self, resource_id: str, body: dict[str, Any], patch: bool = False) -> dict[str, Any]:
        m = RESOURCE_PATH.match(resource_id)
        if m is None or m["inst"] or m["action"] or m["list"]:
            raise ValueError("not a VM or scale set id")
        p = Parsed.of(m)
        key = lock_key(p.resource_id)
        old = self.resources.get(key)
        res = copy.deepcopy(old) if (old and patch) else {}
        _merge(res, copy.deepcopy(body))
        if "location" not in res:
            raise ValueError("location is required")
        props = res.setdefault("properties", {})
        os_profile = props.get("osProfile") or props.get("virtualMachineProfile", {}).get("osProfile")
        if os_profile:
            os_profile.pop("adminPassword", None)  # ARM never returns secrets
            os_profile.pop("customData", None)
        res["id"] = p.resource_id
        res["name"] = p.name
        props["provisioningState"] = "Succeeded"
        old_props = (old or {}).get("properties") or {}
        if p.rtype == "virtualmachines":
            res["type"] = "Microsoft.Compute/virtualMachines"
            self._check_membership(props, old_props)
            props.setdefault("vmId", old_props.get("vmId") or str(uuid.uuid4()))
            storage = props.setdefault("storageProfile", {})
            _fill_image(storage)
            storage.setdefault("osDisk", {}).setdefault("osType", _os_type(props))
            kept = ((old_props.get("storageProfile") or {}).get("osDisk") or {}).get("managedDisk") or {}
            if kept.get("id"):  # the same VM keeps its disk across model updates
                storage["osDisk"].setdefault("managedDisk", {}).setdefault("id", kept["id"])
            _managed_disk(storage["osDisk"], p.rg_id, f"{p.name}_OsDisk_1")
        else:
            res["type"] = "Microsoft.Compute/virtualMachineScaleSets"
            sku = res.get("sku") or {}
            capacity = int(sku.get("capacity", 0))
            props.setdefault("uniqueId", old_props.get("uniqueId") or str(uuid.uuid4()))
            mode = props.setdefault("orchestrationMode", old_props.get("orchestrationMode") or "Uniform")
            if old is not None and str(mode).lower() != str(old_props.get("orchestrationMode", "Uniform")).lower():
                # OMODES: "defined when you create the scale set and cannot be changed or updated later"
                raise ValueError("orchestrationMode cannot be changed once the scale set exists")
            if str(mode).lower() == "flexible":
                if "capacity" in sku:  # a set of VMs added one by one has no capacity of its own to keep
                    self._resize_flexible(res, capacity)
                self.resources[key] = res
                self.save(key)
                return res
            vm_profile = props.setdefault("virtualMachineProfile", {})
            storage = vm_profile.setdefault("storageProfile", {})
            _fill_image(storage)
            storage.setdefault("osDisk", {}).setdefault("osType", _os_type(vm_profile))
            self._resize(res, capacity)
        self.resources[key] = res
        self.save(key)
        return res

    # ---- Flexible orchestration: members are VMs of their own -------------------------------------------------------
    def _check_membership(self, props: dict[str, Any], old_props: dict[str, Any]) -> None:
        """A VM joins a Flexible set only when it is created (SDK VirtualMachine.virtual_machine_scale_set: "a VM can
        only be added to virtual machine scale set at creation time"), and only a Flexible one."""
        wanted = (props.get("virtualMachineScaleSet") or {}).get("id")
        had = (old_props.get("virtualMachineScaleSet") or {}).get("id") if old_props else None
        if old_props and str(wanted or "").lower() != str(had or "").lower():
            raise ValueError("properties.virtualMachineScaleSet cannot be changed: a VM is added to a scale set "
                             "when it is created")
        if wanted and not old_props:
            scale_set = self.resources.get(lock_key(str(wanted)))
            if scale_set is None:
                raise ValueError(f"The scale set {wanted} does not exist.")
            if str(scale_set["properties"].get("orchestrationMode")).lower() != "flexible":
                raise ValueError("Only a scale set in Flexible orchestration mode takes VMs of its own.")

    def members_of(self, set_id: str) -> list[dict[str, Any]]:
        """A Flexible set's member VMs (each a resource of its own, naming the set), by name."""
        wanted = lock_key(set_id)
        found = [r for r in self.resources.values() if r.get("type") == "Microsoft.Compute/virtualMachines"
                 and lock_key(str(((r.get("properties") or {}).get("virtualMachineScaleSet") or {}).get("id", "")))
                 == wanted]
        return sorted(found, key=lambda r: str(r["name"]).lower())

    def _resize_flexible(self, vmss: dict[str, Any], capacity: int) -> None:
        """Scale a Flexible set out by creating member VMs from its VM profile, named `{set}_{8 hex}` as ARM names
        them (not numbers, not in order), or in by deleting members."""
        members = self.members_of(vmss["id"])
        profile = vmss["properties"].get("virtualMachineProfile")
        if len(members) < capacity and not profile:
            raise ValueError("sku.capacity needs properties.virtualMachineProfile in Flexible orchestration mode")
        group = vmss["id"].split("/providers/")[0]
        while len(members) < capacity:
            assert profile is not None
            name = f"{vmss['name']}_{uuid.uuid4().hex[:8]}"
            vm = self._new_member(vmss, profile, f"{group}/providers/Microsoft.Compute/virtualMachines/{name}", name)
            members.append(vm)
        for extra in members[capacity:] if capacity < len(members) else []:
            key = lock_key(extra["id"])
            self.resources.pop(key, None)
            self.vm_state.pop(key, None)
            self.save(key)

    def _new_member(self, vmss: dict[str, Any], profile: dict[str, Any], vm_id: str, name: str) -> dict[str, Any]:
        storage = json.loads(json.dumps(profile.get("storageProfile") or {}))
        _fill_image(storage)
        storage.setdefault("osDisk", {}).setdefault("osType", _os_type(profile))
        _managed_disk(storage["osDisk"], vm_id.split("/providers/", 1)[0], f"{name}_OsDisk_1")  # a disk of its own
        os_profile = {k: v for k, v in (profile.get("osProfile") or {}).items() if k != "computerNamePrefix"}
        prefix = (profile.get("osProfile") or {}).get("computerNamePrefix", vmss["name"][:9])
        vm: dict[str, Any] = {
            "id": vm_id, "name": name, "type": "Microsoft.Compute/virtualMachines", "location": vmss["location"],
            "properties": {"vmId": str(uuid.uuid4()), "provisioningState": "Succeeded", "storageProfile": storage,
                           "osProfile": {**os_profile, "computerName": f"{prefix}{uuid.uuid4().hex[:6]}"},
                           "virtualMachineScaleSet": {"id": vmss["id"]}}}
        if profile.get("diagnosticsProfile"):  # the set's boot diagnostics setting, as for a Uniform instance
            vm["properties"]["diagnosticsProfile"] = json.loads(json.dumps(profile["diagnosticsProfile"]))
        extensions = (profile.get("extensionProfile") or {}).get("extensions") or []
        if extensions:  # a VM's extensions are child resources (views.health_extension reads them from here)
            vm["resources"] = json.loads(json.dumps(extensions))
        key = lock_key(vm_id)
        self.resources[key] = vm
        self.save(key)
        return vm

    def set_protection(self, instance_id: str, policy: dict[str, Any]) -> dict[str, Any]:
        """PUT/PATCH of a Uniform instance's protectionPolicy (PROT): "You can't specify protectFromScaleIn: false
        when setting protectFromScaleSetActions: true" (the conflict's wording: research notes `arm.md` B8)."""
        key, inst = self.split(instance_id)
        model = self.instances.get(key, {}).get(inst)
        if model is None:
            raise LookupError(inst)
        merged = {**(model["properties"].get("protectionPolicy") or {}), **policy}
        if merged.get("protectFromScaleSetActions") is True:
            if merged.get("protectFromScaleIn") is False:
                raise ValueError(f"Virtual Machine Scale Set {key.rsplit('/', 1)[-1]} VM instance {inst} "
                                 "protectionPolicy properties protectFromScaleIn and protectFromScaleSetActions "
                                 "conflict with each other. protectFromScaleIn cannot be false when "
                                 "protectFromScaleSetActions is true.")
            merged["protectFromScaleIn"] = True
        model["properties"]["protectionPolicy"] = merged
        self.save(key)
        return dict(model)

    def protected(self, key: str) -> set[str]:
        return {i for i, m in self.instances.get(key, {}).items()
                if ((m.get("properties") or {}).get("protectionPolicy") or {}).get("protectFromScaleSetActions")}

    def _resize(self, vmss: dict[str, Any], capacity: int) -> None:
        key = lock_key(vmss["id"])
        insts = self.instances.setdefault(key, {})
        next_id = max((int(i) for i in insts), default=-1) + 1
        if len(insts) < capacity:
            template = self._instance_template(vmss)
            while len(insts) < capacity:
                insts[str(next_id)] = self._new_instance(vmss, template, str(next_id))
                next_id += 1
        for extra in sorted(insts, key=int)[capacity:]:
            del insts[extra]
            self.vm_state.get(key, {}).pop(extra, None)

    @staticmethod
    def _instance_template(vmss: dict[str, Any]) -> dict[str, Any]:
        profile = vmss["properties"]["virtualMachineProfile"]
        storage = copy.deepcopy(profile.get("storageProfile", {}))
        image = storage.setdefault("imageReference", {})
        image["exactVersion"] = model_version(image)
        os_profile = {k: v for k, v in (profile.get("osProfile") or {}).items() if k != "computerNamePrefix"}
        prefix = (profile.get("osProfile") or {}).get("computerNamePrefix", vmss["name"])
        return {"storageProfile": storage, "osProfile": os_profile, "prefix": prefix,
                "sku": vmss.get("sku"), "diagnosticsProfile": profile.get("diagnosticsProfile")}

    @staticmethod
    def _new_instance(vmss: dict[str, Any], template: dict[str, Any], inst: str) -> dict[str, Any]:
        # json round trip: a fast deep copy for plain JSON, so a 1,000-instance set is created in milliseconds
        storage = json.loads(json.dumps(template["storageProfile"]))
        rg_id = vmss["id"].split("/providers/", 1)[0]
        _managed_disk(storage.setdefault("osDisk", {}), rg_id, f"{vmss['name']}_{vmss['name']}_{inst}_OsDisk_1")
        os_profile = {**template["osProfile"], "computerName": f"{template['prefix']}{int(inst):06x}"}
        properties: dict[str, Any] = {"latestModelApplied": True, "provisioningState": "Succeeded",
                                      "vmId": str(uuid.uuid4()), "storageProfile": storage, "osProfile": os_profile}
        if template.get("diagnosticsProfile"):
            properties["diagnosticsProfile"] = json.loads(json.dumps(template["diagnosticsProfile"]))
        return {
            "id": f"{vmss['id']}/virtualMachines/{inst}",
            "name": f"{vmss['name']}_{inst}",
            "type": "Microsoft.Compute/virtualMachineScaleSets/virtualMachines",
            "location": vmss["location"],
            "instanceId": inst,
            "sku": dict(template["sku"]) if template["sku"] else None,
            "properties": properties,
        }

    def seed_scale_set(self, resource_id: str, capacity: int, *, location: str = "westus",
                       health_extension: bool = True, ephemeral: bool = True, flexible: bool = False,
                       boot_diagnostics: bool = False, **properties: Any) -> dict[str, Any]:
        os_disk: dict[str, Any] = {"createOption": "FromImage", "osType": "Linux", "caching": "ReadOnly"}
        if ephemeral:
            os_disk["diffDiskSettings"] = {"option": "Local"}
        profile: dict[str, Any] = {
            "osProfile": {"computerNamePrefix": resource_id.rsplit("/", 1)[-1][:9], "adminUsername": "azureuser"},
            "storageProfile": {"imageReference": {"publisher": "Canonical", "offer": "ubuntu-24_04-lts",
                                                  "sku": "server", "version": "latest"}, "osDisk": os_disk}}
        if boot_diagnostics:  # managed boot diagnostics: enabled, no storageUri (BOOTD)
            profile["diagnosticsProfile"] = {"bootDiagnostics": {"enabled": True}}
        if health_extension:
            profile["extensionProfile"] = {"extensions": [{"name": "HealthExtension", "properties": {
                "publisher": "Microsoft.ManagedServices", "type": "ApplicationHealthLinux",
                "typeHandlerVersion": "2.0", "settings": {"protocol": "http", "port": 80, "requestPath": "/health"}}}]}
        props: dict[str, Any] = {"upgradePolicy": {"mode": "Manual"}, "overprovision": False,
                                 "virtualMachineProfile": profile, **properties}
        if flexible:  # OMODES: a Flexible set has no upgrade policy of its own and one fault domain per zone
            props = {"orchestrationMode": "Flexible", "platformFaultDomainCount": 1, "virtualMachineProfile": profile,
                     **properties}
        return self.upsert(resource_id, {"location": location,
                                         "sku": {"name": "Standard_D2s_v5", "tier": "Standard", "capacity": capacity},
                                         "properties": props})


def model_version(image: dict[str, Any]) -> str:
    version = image.get("version")
    return DEFAULT_IMAGE_VERSION if version in (None, "latest") else str(version)


def _merge(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = v


def _managed_disk(os_disk: dict[str, Any], rg_id: str, stem: str) -> None:
    """ARM names a managed OS disk in the model (`managedDisk.id`); an ephemeral one may carry an id too, which no
    read of the disk finds (the dangerous reading, research notes `arm.md` C11). An unmanaged (vhd) disk has none."""
    if "vhd" in os_disk:
        return
    managed = os_disk.setdefault("managedDisk", {})
    managed.setdefault("id", f"{rg_id}/providers/Microsoft.Compute/disks/{stem}_{uuid.uuid4().hex}")


def _fill_image(storage: dict[str, Any]) -> None:
    image = storage.get("imageReference")
    if image is not None and "exactVersion" not in image:
        image["exactVersion"] = model_version(image)


def _os_type(profile: dict[str, Any]) -> str:
    os_disk = profile.get("storageProfile", {}).get("osDisk", {})
    if os_disk.get("osType"):
        return str(os_disk["osType"])
    os_profile = profile.get("osProfile") or {}
    if "windowsConfiguration" in os_profile and "linuxConfiguration" not in os_profile:
        return "Windows"
    publisher = str(profile.get("storageProfile", {}).get("imageReference", {}).get("publisher", ""))
    return "Windows" if "windows" in publisher.lower() else "Linux"
