"""The docs follow the code: every repository path they name exists (and every test they cite), the runbook
lists every error code the app can return, every pasted shell command parses, the HTTP API section says how to be
idempotent, and devhost's flags and endpoints are documented."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from shared.domain.errors import DetailCode, ErrorCode

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [block for doc in DOCS
          for block in re.findall(r"```(?:sh|bash|shell|console)\n(.*?)```", doc.read_text(), flags=re.S)]
_TOP = ("shared", "handlers", "devhost", "tests", "docs", "infra", "scripts", "bench", "reimager")
# A repository path: a top-level folder, then path segments, ending in a file name or a slash.
_PATH = re.compile(r"(?<![\w./-])((?:" + "|".join(_TOP) + r")/[\w./-]*[\w/])")
# fidelity.md cites tests as `unit/test_x.py::test_name` (relative to tests/).
_TEST = re.compile(r"((?:unit|integration|devhost|e2e|reliability)/(?:\w+/)*test_\w+\.py)((?:::\w+)?)")


_ELSEWHERE = ("tests/unittests/",)  # the Python worker's own tests, cited as a source in fidelity.md


def _paths(text: str) -> set[str]:
    return {m.rstrip(".") for m in _PATH.findall(text)
            if "*" not in m and "{" not in m and not m.startswith(_ELSEWHERE)}


def _exists(path: str) -> bool:
    """A file or folder, a module named without its .py (the architecture diagram's boxes), or a test cited
    relative to tests/ (fidelity.md's `devhost/test_x.py` is tests/devhost/test_x.py, not under devhost/)."""
    return (ROOT / path).exists() or (ROOT / f"{path}.py").exists() or (
        _TEST.fullmatch(path) is not None and (ROOT / "tests" / path).exists())


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_path_a_doc_names_exists(doc: Path) -> None:
    missing = sorted(p for p in _paths(doc.read_text()) if not _exists(p))
    assert missing == [], f"{doc.name} names paths that do not exist"


def test_every_test_the_fidelity_table_cites_exists() -> None:
    text = (ROOT / "docs/fidelity.md").read_text()
    problems: list[str] = []
    checked = 0
    last: Path | None = None
    for match in re.finditer(r"`([^`]+)`", text):
        for cited in match.group(1).split(","):
            cited = cited.strip()
            m = _TEST.fullmatch(cited.split(" ")[0])
            name = cited[2:] if cited.startswith("::") else None
            if m is not None:
                last = ROOT / "tests" / m.group(1)
                name = m.group(2)[2:] or None
                if not last.exists():
                    problems.append(f"no file {last.relative_to(ROOT)}")
                    continue
            if name and last is not None and last.exists():
                checked += 1
                if f"def {name}" not in last.read_text():
                    problems.append(f"no test {name} in {last.relative_to(ROOT)}")
    assert problems == [] and checked > 50


def test_the_runbook_lists_every_error_code() -> None:
    text = (ROOT / "docs/operations.md").read_text()
    section = text[text.index("## Error codes"):text.index("## Dry runs")]
    assert [c.value for c in ErrorCode if f"`{c.value}`" not in section] == []
    assert [c.value for c in DetailCode if f"`{c.value}`" not in section] == []


def test_the_runbooks_error_table_names_only_codes_the_app_has() -> None:
    text = (ROOT / "docs/operations.md").read_text()
    section = text[text.index("## Error codes"):text.index("## Dry runs")]
    rows = [line.split("|") for line in section.splitlines() if re.match(r"\| \d{3} \|", line)]
    codes = {re.sub(r"`([^`]+)`.*", r"\1", c.strip()) for row in rows for c in row[2].split(" / ")
             if c.strip().startswith("`")}
    host = {"Unauthorized"}  # the Functions host's own answer to a missing function key
    assert codes - {c.value for c in ErrorCode} - host == set()


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
