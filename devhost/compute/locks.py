"""ARM management locks (`Microsoft.Authorization/locks`): create, list and delete them at a subscription, a resource
group or a resource, and refuse writes under a ReadOnly one, as ARM does (research notes `arm.md` B9; LOCKS:
MicrosoftDocs/azure-docs `articles/azure-resource-manager/management/lock-resources.md`):

- "When you apply a lock at a parent scope, all resources within that scope inherit the same lock" and "Locks
  prevent the POST method from sending data to the ARM API": a POST (a reimage, setOrchestrationServiceState), PUT
  or PATCH on a resource under a ReadOnly lock (its own, its parent's for a scale set instance, its resource
  group's, its subscription's) is refused 409 `ScopeLocked`, "The scope '<as sent>' cannot perform write operation
  because following scope(s) are locked: '<lock scope>'. Please remove the lock and try again." (the
  azure-sdk-for-java#2560 capture: a POST reported as a write; the lock's scope echoed in another casing, as
  captures show `resourcegroups`). A Flexible set's lock does not cover its members: each is a resource of its own.
  GETs are never refused. `CanNotDelete` refuses deletes only (reimager deletes nothing).
- Lists: at a subscription, every lock in it; at a resource group, the group's and its resources' locks; at a
  resource, its own, its children's and its group's (ManagementLocks_ListAtResourceLevel; the Java SDK's
  `listForResource`). Whether the group or resource lists include the subscription's locks is not documented: the
  dangerous reading, not included (`list_includes_subscription` turns that on).
- The lock API's versions (2015-01-01, 2016-09-01, 2020-05-01) are older than Compute's first reimage version, so
  these routes check their own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from devhost.compute.arm import LOCKS_PATH, cloud_error
from devhost.compute.persistence import Store

LEVELS = ("CanNotDelete", "ReadOnly", "NotSpecified")
_FIRST_VERSION = "2015-01-01"
_SEGMENT = "/providers/Microsoft.Authorization/locks/"


def _fold(text: str) -> str:
    return text.lower().rstrip("/")


def _parent_scopes(resource_id: str) -> list[str]:
    """The scopes whose locks a resource inherits: itself, its parents (a scale set for its instance), its resource
    group and its subscription (lower case)."""
    parts = _fold(resource_id).strip("/").split("/")
    scopes = ["/" + "/".join(parts[:2])]
    if len(parts) >= 4:
        scopes.append("/" + "/".join(parts[:4]))
    # /subscriptions/s/resourcegroups/g/providers/ns/type/name[/child/name...]
    for end in range(8, len(parts) + 1, 2):
        scopes.append("/" + "/".join(parts[:end]))
    return scopes


@dataclass
class Locks:
    store: Store | None = None
    list_includes_subscription: bool = False
    by_id: dict[str, dict[str, Any]] = field(default_factory=dict)  # lower-cased lock id -> the lock

    @property
    def _file(self) -> Path | None:
        return self.store.root / "locks.json" if self.store is not None else None

    def load(self) -> None:
        path = self._file
        if path is not None and path.exists():
            self.by_id = {k.lower(): v for k, v in json.loads(path.read_text()).items()}

    def _save(self) -> None:
        if self.store is not None and self._file is not None:
            self.store.write(self._file, self.by_id)

    # ---- the public API (devhost and tests seed locks here, or through ARM's routes) ---------------------
    def add(self, scope: str, name: str, level: str = "ReadOnly", notes: str | None = None) -> dict[str, Any]:
        if level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}")
        lock_id = f"{scope.rstrip('/')}{_SEGMENT}{name}"
        doc: dict[str, Any] = {"id": lock_id, "type": "Microsoft.Authorization/locks", "name": name,
                               "properties": {"level": level}}
        if notes:
            doc["properties"]["notes"] = notes
        self.by_id[lock_id.lower()] = doc
        self._save()
        return doc

    def remove(self, scope: str, name: str) -> bool:
        found = self.by_id.pop(f"{scope.rstrip('/')}{_SEGMENT}{name}".lower(), None) is not None
        self._save()
        return found

    @staticmethod
    def scope_of(lock: dict[str, Any]) -> str:
        return str(lock["id"]).rsplit(_SEGMENT, 1)[0] if _SEGMENT.lower() in str(lock["id"]).lower() else ""

    def listed_at(self, scope: str) -> list[dict[str, Any]]:
        at = _fold(scope)
        depth = at.strip("/").count("/") + 1  # 2: a subscription, 4: a resource group, more: a resource
        out = []
        for lock in self.by_id.values():
            on = _fold(self.scope_of(lock))
            on_depth = on.strip("/").count("/") + 1
            below = on == at or on.startswith(at + "/")
            above = at.startswith(on + "/") and (on_depth > 2 or self.list_includes_subscription)
            if below or (depth >= 4 and above):
                out.append(lock)
        return out

    def blocking(self, resource_id: str) -> list[dict[str, Any]]:
        """The ReadOnly locks a write to this resource meets."""
        scopes = set(_parent_scopes(resource_id))
        return [lock for lock in self.by_id.values() if lock["properties"].get("level") == "ReadOnly"
                and _fold(self.scope_of(lock)) in scopes]

    # ---- ARM's answers ------------------------------------------------------------------------------------------
    def refusal(self, path: str, resource_id: str) -> web.Response | None:
        """409 ScopeLocked for a write under a ReadOnly lock; None when nothing locks it."""
        locks = self.blocking(resource_id)
        if not locks:
            return None
        # the lock's scope as ARM echoes it: not in the caller's casing (captures show `resourcegroups`)
        scopes = ", ".join(f"'{self.scope_of(lock).replace('resourceGroups', 'resourcegroups')}'" for lock in locks)
        return cloud_error(409, "ScopeLocked", f"The scope '{path}' cannot perform write operation because following "
                           f"scope(s) are locked: {scopes}. Please remove the lock and try again.")

    def route(self, request: web.Request, body: Any) -> web.Response:
        m = LOCKS_PATH.match(request.path)
        assert m is not None
        version = request.query.get("api-version")
        if not version:
            return cloud_error(400, "MissingApiVersionParameter",
                               "The api-version query parameter (?api-version=) is required for all requests.")
        if version[:10] < _FIRST_VERSION:
            return cloud_error(400, "InvalidApiVersionParameter",
                               f"The api-version '{version}' is invalid for Microsoft.Authorization.")
        scope, name = m["scope"], m["name"]
        if name is None:
            if request.method != "GET":
                return cloud_error(405, "MethodNotAllowed", "Use GET to list locks.")
            return web.json_response({"value": self.listed_at(scope)})
        if request.method == "PUT":
            level = ((body or {}).get("properties") or {}).get("level") if isinstance(body, dict) else None
            if level not in LEVELS:
                return cloud_error(400, "InvalidLockLevel", f"The lock level '{level}' is not valid; use one of "
                                   f"{', '.join(LEVELS)}.")
            notes = ((body or {}).get("properties") or {}).get("notes")
            return web.json_response(self.add(scope, name, level, notes), status=200)
        if request.method == "DELETE":
            return web.Response(status=200 if self.remove(scope, name) else 204)
        if request.method == "GET":
            lock = self.by_id.get(f"{scope}{_SEGMENT}{name}".lower())
            return web.json_response(lock) if lock else cloud_error(404, "LockNotFound", "The lock was not found.")
        return cloud_error(405, "MethodNotAllowed", f"{request.method} is not supported here.")
