from tests.integration.conftest import LINUX_VM, Host


async def test_http_reimage_end_to_end(host: Host) -> None:
    status, body, headers = await host.reimage({"target": LINUX_VM, "requestId": "smoke-1"})
    assert status == 202, body
    events = await host.until_completed()
    assert events[-1]["data"]["status"] == "Succeeded"
    s, view = await host.get(f"/api/reimage/{body['operationId']}")
    assert s == 200 and view["status"] == "Succeeded"
