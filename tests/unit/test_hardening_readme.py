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
