"""The real recorded ARM reimage exchange, served back in order, is read exactly as it ended."""

from __future__ import annotations

import time
from collections import defaultdict, deque
from typing import Any

import yaml
from aiohttp import web
from azure.core.credentials import AccessToken

from devhost.serving import serve
from shared.adapters.arm.client import ComputeClient
from shared.domain.arm_call import OperationState
from shared.domain.request import parse_request
from shared.settings import Settings
from tests.helpers import FIXTURES

RECORDED_HOST = "https://management.azure.com"
SUB = "00000000-0000-0000-0000-000000000000"


class StaticToken:
    """Stands in for Azure AD: the replay server checks nothing but the header's presence."""

    async def get_token(self, *scopes: str, **kw: Any) -> AccessToken:
        return AccessToken("recorded", int(time.time()) + 3600)

    async def close(self) -> None:
        return None


async def test_recorded_reimage_and_reimageall() -> None:
    doc = yaml.safe_load((FIXTURES / "arm/recordings/test_mgmt_compute_vmss.test_compute_vmss_base_2"
                                     ".reimage-excerpt.yaml").read_text())
    queues: dict[tuple[str, str], deque[dict[str, Any]]] = defaultdict(deque)
    for it in doc["interactions"]:
        uri = it["request"]["uri"].removeprefix(RECORDED_HOST)
        queues[(it["request"]["method"], uri)].append(it["response"])
    served: list[tuple[str, str]] = []
    holder: dict[str, str] = {}

    async def replay(request: web.Request) -> web.Response:
        key = (request.method, request.path_qs)
        served.append(key)
        assert request.headers["Authorization"] == "Bearer recorded"
        resp = queues[key].popleft()
        headers = {k: v[0].replace(RECORDED_HOST, holder["url"]) for k, v in resp["headers"].items()
                   if k.lower() in ("azure-asyncoperation", "location", "retry-after", "content-type")}
        return web.Response(status=resp["status"]["code"], body=resp["body"]["string"].encode(), headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", replay)
    server = await serve(app)
    holder["url"] = server.url
    settings = Settings(ARM_ENDPOINT=server.url, COMPUTE_API_VERSION="2020-12-01")  # type: ignore[call-arg]
    client = ComputeClient(settings, credential=StaticToken())  # type: ignore[arg-type]
    try:
        target = f"/subscriptions/{SUB}/resourceGroups/rgname/providers/Microsoft.Compute/virtualMachineScaleSets/" \
                 "virtualmachinescalesetd7d31356"
        for all_disks, polls_expected in ((False, 6), (True, None)):
            request = parse_request({"target": target, "allInstances": True, "allDisks": all_disks})
            # The recording's POSTs had no body (the peer's "every instance"); reimager names the instances.
            call = request.arm_call("2020-12-01", instance_ids=["0", "1"])
            assert call.wire_body() == {"instanceIds": ["0", "1"]}
            sub = await client.submit(call)
            assert sub.status_code == 202 and sub.async_operation_url and sub.location_url
            states = []
            while True:
                result = await client.poll(sub.async_operation_url, "async")
                states.append(result.state)
                if result.state.terminal or not queues[("GET", sub.async_operation_url.removeprefix(server.url))]:
                    break
            assert states[-1] is OperationState.SUCCEEDED
            assert set(states[:-1]) <= {OperationState.RUNNING}
            if polls_expected:
                assert len(states) == polls_expected
            if queues[("GET", sub.location_url.removeprefix(server.url))]:
                final = await client.poll(sub.location_url, "location")
                assert final.state is OperationState.SUCCEEDED
    finally:
        await client.close()
        await server.close()
    leftover = {k: len(v) for k, v in queues.items() if v}
    assert not leftover, leftover  # every recorded interaction was replayed, in order
