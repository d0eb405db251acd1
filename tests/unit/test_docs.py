"""The docs follow the code: every repository path they name exists (and every test they cite), and the
runbook lists every error code the app can return."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared.domain.errors import DetailCode, ErrorCode

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
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
    """A file or folder, or a module named without its .py (the architecture diagram's boxes), or a test cited
    relative to tests/ (`devhost/test_x.py` is tests/devhost/test_x.py, not a module of the devhost package)."""
    cited_test = _TEST.fullmatch(path) is not None and (ROOT / "tests" / path).exists()
    return (ROOT / path).exists() or (ROOT / f"{path}.py").exists() or cited_test


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
