"""README: every pasted shell command parses, and the HTTP API section says how to be idempotent."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```(?:sh|bash|shell|console)\n(.*?)```", README.read_text(), flags=re.S)


def test_there_are_shell_blocks() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_each_shell_block_is_valid_bash(index: int) -> None:
    result = subprocess.run(["bash", "-n"], input=BLOCKS[index], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"README shell block {index} does not parse:\n{result.stderr}\n{BLOCKS[index]}"


def test_no_placeholder_in_angle_brackets_in_a_command() -> None:
    for block in BLOCKS:
        for line in block.splitlines():
            code = line.split("#", 1)[0]
            assert not re.search(r"<[A-Za-z][\w-]*>", code), line


def test_the_http_api_section_says_a_request_without_request_id_is_not_idempotent() -> None:
    text = README.read_text()
    try_it = text[text.index("## Try it by hand"):text.index("## Architecture")]
    assert "requestId" in try_it and "not idempotent" in try_it
    assert re.search(r'requestId\\?":', "".join(BLOCKS)), "a pasted example should carry a requestId"
