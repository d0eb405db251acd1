"""README and docs: every pasted shell command parses; the HTTP API section says how to be idempotent."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BLOCKS = [block for doc in (README, *sorted((ROOT / "docs").glob("*.md")))
          for block in re.findall(r"```(?:sh|bash|shell|console)\n(.*?)```", doc.read_text(), flags=re.S)]


def test_there_are_shell_blocks() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_each_shell_block_is_valid_bash(index: int) -> None:
    result = subprocess.run(["bash", "-n"], input=BLOCKS[index], capture_output=True, text=True, check=False)
    where = f"shell block {index} (README, then docs/*.md)"
    assert result.returncode == 0, f"{where} does not parse:\n{result.stderr}\n{BLOCKS[index]}"


def test_the_http_api_section_says_a_request_without_request_id_is_not_idempotent() -> None:
    text = README.read_text()
    try_it = text[text.index("## Try it by hand"):text.index("## Architecture")]
    assert "requestId" in try_it and "not idempotent" in try_it
    assert re.search(r'requestId\\?":', "".join(BLOCKS)), "a pasted example should carry a requestId"


def test_every_devhost_flag_is_documented() -> None:
    from devhost.__main__ import build_parser

    text = README.read_text()
    flags = [o for action in build_parser()._actions for o in action.option_strings if o.startswith("--")]
    assert {"--host", "--time-limit", "--port", "--settings"} <= set(flags)
    missing = [f for f in flags if f != "--help" and f"`{f}" not in text]
    assert missing == [], f"README does not mention {missing}"


def test_every_devhost_endpoint_is_documented_and_no_other() -> None:
    """The routes devhost registers besides the app's /api/* ones, against README's table."""
    source = (ROOT / "devhost" / "host.py").read_text()
    routes = set(re.findall(r'web\.(get|post)\("(/(?:devhost|admin)/[^"]*)"', source))
    assert len(routes) >= 5
    text = README.read_text()
    documented = set(re.findall(r"\| `(GET|POST) (/(?:devhost|admin)/[^`]*)`", text))
    assert {(m.upper(), p) for m, p in routes} == documented


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_curl_commands_devhost_prints_are_valid_bash() -> None:
    from types import SimpleNamespace

    from devhost.__main__ import curl_examples

    printed = curl_examples(SimpleNamespace(functions_url="http://127.0.0.1:7071", function_key="k-1_x"))  # type: ignore[arg-type]
    commands = "\n".join(line.strip() for line in printed.splitlines() if line.strip().startswith(("curl", "#")))
    assert commands.count("curl") >= 6
    result = subprocess.run(["bash", "-n"], input=commands, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
