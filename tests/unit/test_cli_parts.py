"""The reimager CLI's parts without a server: exit codes, error lines, Retry-After, nextLink, the live
display, where the connection comes from, and that it never imports the app's own packages."""

from __future__ import annotations

import ast
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from reimager import render
from reimager.app import Options, follow, main, request_body, since_param
from reimager.client import Answer, ApiError, Client, Connection, Unreachable, UsageProblem, connect, error_line
from reimager.exits import Exit, ending

ROOT = Path(__file__).resolve().parents[2]


def test_the_cli_imports_only_its_own_package_and_libraries() -> None:
    app_packages = {"shared", "handlers", "devhost", "function_app", "tests", "bench", "scripts"}
    for path in (ROOT / "reimager").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not {n.split(".")[0] for n in names} & app_packages, (path.name, names)


@pytest.mark.parametrize(("doc", "code"), [
    ({"status": "Succeeded", "health": "Healthy"}, Exit.OK),
    ({"status": "Succeeded", "health": "Unhealthy"}, Exit.NOT_HEALTHY),
    ({"status": "Succeeded", "health": "Unknown"}, Exit.NOT_HEALTHY),
    ({"status": "Succeeded", "health": None}, Exit.NOT_HEALTHY),  # not checked is not healthy
    ({"status": "Failed"}, Exit.FAILED),
    ({"status": "Canceled"}, Exit.CANCELED),
    ({"status": "TimedOut"}, Exit.TIMED_OUT),
])
def test_each_ending_has_its_exit_code(doc: dict[str, Any], code: Exit) -> None:
    assert ending(doc) is code
    assert len({int(e) for e in Exit}) == len(Exit)  # distinct


def test_an_error_is_one_line_with_arms_code_from_the_details() -> None:
    err = ApiError(502, {"code": "ComputeError", "message": "ARM refused\nthe call.", "details": [
        {"code": "InvalidParameter", "message": "bad", "target": "osProfile"}]}, retry_after="5")
    assert err.line() == ("ComputeError: ARM refused the call.; InvalidParameter: bad [osProfile] "
                          "(HTTP 502, retry after 5 s)")
    assert error_line("TimedOut", "") == "TimedOut"


def test_the_key_is_never_in_a_repr_or_a_url(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = connect("https://app.example.net/", "s3cret-key")
    assert conn.url == "https://app.example.net" and conn.headers["x-functions-key"] == "s3cret-key"
    assert "s3cret-key" not in repr(conn)
    with pytest.raises(UsageProblem, match="query"):
        connect("https://app.example.net/?code=s3cret-key", None)
    with pytest.raises(UsageProblem, match="entra-scope"):
        connect("https://app.example.net", None, entra=True)


def test_devhost_endpoints_are_found_in_the_cwd_or_through_the_variable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REIMAGER_ENDPOINTS", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageProblem, match="make devhost"):
        connect(None, None)
    (tmp_path / ".devhost").mkdir()
    (tmp_path / ".devhost/endpoints.json").write_text(json.dumps({"functions": "http://127.0.0.1:7071",
                                                                  "functionKey": "k1"}))
    assert connect(None, None).headers["x-functions-key"] == "k1"
    elsewhere = tmp_path / "other.json"
    elsewhere.write_text(json.dumps({"functions": "http://127.0.0.1:9", "functionKey": "k2"}))
    monkeypatch.setenv("REIMAGER_ENDPOINTS", str(elsewhere))
    assert connect(None, None).url == "http://127.0.0.1:9"
    elsewhere.write_text("{not json")
    with pytest.raises(UsageProblem, match=r"not devhost's endpoints\.json"):
        connect(None, None)


def test_a_next_link_to_another_host_is_refused() -> None:
    client = Client(Connection("https://app.example.net", {"x-functions-key": "k"}))
    assert client.same_origin("https://app.example.net/api/reimage?continuationToken=x").endswith("=x")
    with pytest.raises(Unreachable, match="another host"):
        client.same_origin("https://evil.example.com/api/reimage?continuationToken=x")


class FakeClient:
    """Status answers in order, each with its Retry-After (None: none sent)."""

    def __init__(self, answers: list[tuple[dict[str, Any], float | None]]) -> None:
        self.answers, self.reads = answers, 0

    def operation(self, operation_id: str) -> Answer:
        doc, retry = self.answers[self.reads]
        self.reads += 1
        return Answer(200, doc, {"Retry-After": str(retry)} if retry is not None else {})


def test_follow_waits_each_retry_after_and_shows_each_status_once() -> None:
    op = {"operationId": "op-1", "target": "/x/virtualMachines/vm1"}
    fake = FakeClient([({**op, "status": "Running", "polls": 1}, 7),
                       ({**op, "status": "Running", "polls": 2}, None),
                       ({**op, "status": "Verifying"}, None),
                       ({**op, "status": "Succeeded", "health": "Unhealthy"}, None)])
    slept: list[float] = []
    err = io.StringIO()
    code = follow(fake, {**op, "status": "Accepted"}, 3.0, Options(None, None, False, None, False),  # type: ignore[arg-type]
                  Console(file=err), clock=lambda: 0.0, sleep=slept.append)
    assert code is Exit.NOT_HEALTHY and fake.reads == 4
    assert slept == [3.0, 7.0, 2.0, 2.0]  # the POST's Retry-After, then the status read's, else the default
    assert "op-1 Succeeded: health Unhealthy" in err.getvalue()


def test_the_live_display_on_a_terminal() -> None:
    timeline = render.Timeline(started=0.0)
    doc = {"operationId": "op-1", "target": "/x/virtualMachineScaleSets/ss/virtualMachines/3", "status": "Queued",
           "queuePosition": 2}
    assert timeline.update(doc, 0.0) is not None
    assert timeline.update({**doc, "queuePosition": 1}, 1.0) is None  # same status: the row moves, no new line
    assert timeline.update({**doc, "status": "Running", "polls": 3, "armStatus": "InProgress"}, 2.0) is not None
    out = io.StringIO()
    Console(file=out, force_terminal=True, width=100).print(timeline.renderable("next look in 2 s"))
    text = out.getvalue()
    assert "op-1" in text and "ss/3" in text and "position 1" in text and "polls 3, ARM InProgress" in text
    assert "next look in 2 s" in text


def test_request_body_shapes_the_cmdlets_parameters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "cloud-init.txt"
    data.write_text("#cloud-config\n")
    monkeypatch.setenv("REIMAGER_ADMIN_PASSWORD", "Pa55-word!")
    body = request_body("/t", ("0,1", "2"), False, True, "1.2.3", True, data, False, "why", None, None)
    assert body["instanceIds"] == ["0", "1", "2"] and body["tempDisk"] is True and body["exactVersion"] == "1.2.3"
    assert body["osProfile"] == {"adminPassword": "Pa55-word!", "customData": "I2Nsb3VkLWNvbmZpZwo="}
    assert body["requestId"].startswith("cli-") and body["requestedBy"].startswith("cli")
    dry = request_body("/t", (), True, False, None, False, None, True, None, "mine", "alice")
    assert dry["dryRun"] is True and "requestId" not in dry and dry["allInstances"] is True


def test_since_takes_an_age_or_a_time() -> None:
    now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    assert since_param("90m", lambda: now) == "2026-12-07T10:30:00Z"
    assert since_param("2d", lambda: now) == "2026-12-05T12:00:00Z"
    assert since_param("2026-01-01T00:00:00Z") == "2026-01-01T00:00:00Z"
    assert since_param(None) is None


def test_usage_errors_are_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status"]) == Exit.USAGE
    assert main(["reimage", "/t", "--nope"]) == Exit.USAGE
    assert main(["list", "--status", "Sleeping"]) == Exit.USAGE
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("reimager: ") for line in lines)
    assert main(["--help"]) == 0


def test_a_request_that_got_no_answer_says_to_retry_with_its_request_id(capsys: pytest.CaptureFixture[str]) -> None:
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def hang_up() -> None:  # reads the request, then closes without an answer
        conn, _ = server.accept()
        conn.recv(65536)
        conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    assert main(["reimage", "/t", "--url", url, "--request-id", "chg-1"]) == Exit.UNREACHABLE
    server.close()
    err = capsys.readouterr().err
    assert "send it again with --request-id chg-1" in err and "Traceback" not in err
    assert main(["reimage", "/t", "--url", "http://127.0.0.1:1", "--request-id", "chg-2"]) == Exit.UNREACHABLE
    assert "--request-id chg-2 (the same" not in capsys.readouterr().err  # refused: it never arrived
