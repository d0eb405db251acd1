"""Instance-view reads for health verification: the fewest GETs that answer "did these machines come back?".

- a VM: one GET of `.../virtualMachines/{vm}/instanceView`; the result has one entry, key "";
- one scale-set instance (a VMSS-instance target, or one id asked): one GET of
  `.../virtualMachines/{id}/instanceView`; Compute's own advice is to read the one machine needed rather
  than list them all (troubleshooting-throttling-errors.md, "Best practices");
- several instances, or all (`instance_ids` None on a scale-set target): the list,
  `.../virtualMachines?$expand=instanceView`, following nextLink (same origin only). Every page is one of the
  set's High Cost Get reads (10 a minute, burst 30; research notes `arm.md` A1), so `instance_health_page`
  reads ONE page per call and says where the next one starts: a batch's health check reads one page per poll.
  `instance_health` reads pages until every asked id has been seen. An asked id the set no longer has is
  Unknown ("not in the scale set").

Raises InstanceViewUnavailable when a read fails; the caller counts that read as Unknown (or, for a 429, waits
its Retry-After: `arm_status` says which).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from azure.core.rest import HttpRequest

from shared.adapters.arm.lro import error_from_response
from shared.domain.errors import DetailCode, ErrorCode, InstanceViewUnavailable, ReimagerError, UntrustedOperationUrl
from shared.domain.health import Health, InstanceHealth, classify, classify_listed
from shared.domain.targets import Target, TargetKind

Guarded = Callable[..., Awaitable[tuple[int, dict[str, str], bytes]]]
_KIND = "health"
_MAX_PAGES = 1000  # a page holds many instances; this bounds a server that loops


class InstanceViews:
    def __init__(self, origin: str, api_version: str, guarded: Guarded, now: Callable[[], float],
                 same_origin: Callable[[str, str], bool]) -> None:
        self.origin, self.api_version = origin, api_version
        self._guarded, self._now, self._same_origin = guarded, now, same_origin

    def _asked(self, target: Target, instance_ids: Sequence[str] | None) -> list[str] | None:
        if instance_ids is not None:
            return list(dict.fromkeys(str(i) for i in instance_ids))
        return [target.instance_id] if target.instance_id is not None else None

    async def _single(self, target: Target, ids: list[str] | None) -> dict[str, InstanceHealth] | None:
        """The answer when one GET of one view is enough (a VM, one instance, nothing asked); else None."""
        if target.kind is TargetKind.VM:
            view = await self._read_view(f"{self.origin}{target.vm_id}/instanceView", target)
            return {"": classify(view)}
        if ids is not None and not ids:
            return {}  # nothing asked: nothing to read
        if ids is not None and len(ids) == 1:
            view = await self._read_view(f"{self.origin}{target.vm_id}/virtualMachines/{ids[0]}/instanceView", target)
            return {ids[0]: classify(view)}
        return None

    async def instance_health(self, target: Target, instance_ids: Sequence[str] | None = None
                              ) -> dict[str, InstanceHealth]:
        ids = self._asked(target, instance_ids)
        single = await self._single(target, ids)
        if single is not None:
            return single
        found, _ = await self._list_health(target, ids, None, _MAX_PAGES)
        if ids is None:
            return found
        missing = InstanceHealth(Health.UNKNOWN, "not in the scale set")
        return {i: found.get(i, missing) for i in ids}

    async def instance_health_page(self, target: Target, instance_ids: Sequence[str] | None, page: str | None
                                   ) -> tuple[dict[str, InstanceHealth], str | None]:
        """The asked instances found on one page (from `page`, None: the first), and the next page (None: that
        was the last). An asked id the set no longer has is simply not found."""
        ids = self._asked(target, instance_ids)
        single = await self._single(target, ids)
        if single is not None:
            return single, None
        return await self._list_health(target, ids, page, 1)

    async def _read_view(self, url: str, target: Target) -> Any:
        what = "reading the instance view"
        request = HttpRequest("GET", url, params={"api-version": self.api_version})
        try:
            status, headers, body = await self._guarded(request, what, _KIND, target.vm_id, hold_throttled=False)
        except ReimagerError as exc:
            raise InstanceViewUnavailable.from_error(exc, what) from exc
        if status != 200:
            raise InstanceViewUnavailable.from_error(error_from_response(status, headers, body, what, self._now()),
                                                     what)
        return _json_object(body, what)

    async def _list_health(self, target: Target, ids: list[str] | None, page: str | None, max_pages: int
                           ) -> tuple[dict[str, InstanceHealth], str | None]:
        what = "listing the scale set's instance views"
        if page is not None and not self._same_origin(page, self.origin):
            raise InstanceViewUnavailable.from_error(UntrustedOperationUrl(page), what)
        request = HttpRequest("GET", page) if page is not None else HttpRequest(
            "GET", f"{self.origin}{target.vm_id}/virtualMachines",
            params={"api-version": self.api_version, "$expand": "instanceView"})
        wanted = set(ids) if ids is not None else None
        found: dict[str, InstanceHealth] = {}
        link: Any = None
        for _ in range(max_pages):  # page: the page being read now (None: the first)
            try:
                status, headers, body = await self._guarded(request, what, _KIND, target.vm_id, hold_throttled=False)
            except ReimagerError as exc:
                raise InstanceViewUnavailable.from_error(exc, what) from exc
            if status != 200:
                raise InstanceViewUnavailable.from_error(
                    error_from_response(status, headers, body, what, self._now()), what)
            doc = _json_object(body, what)
            items = doc.get("value")
            listed = classify_listed(items if isinstance(items, list) else [])
            found.update(listed if wanted is None else {i: h for i, h in listed.items() if i in wanted})
            link = doc.get("nextLink")
            if wanted is not None and wanted <= found.keys():
                return found, page  # every asked instance is on this page: read it again next time
            if not link:
                break
            if not isinstance(link, str) or not self._same_origin(link, self.origin):
                raise InstanceViewUnavailable.from_error(UntrustedOperationUrl(str(link)), what)
            request, page = HttpRequest("GET", link), link
        return found, (page if link else None)  # the next page, or None: start again from the first


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
