"""`make lint`: no function-local import of a `shared` module, unless it keeps a heavy package out of cold start.

Imports belong at the top of a module, where import-linter sees them and a cycle cannot hide. The one reason to
import inside a function is cold start (a Consumption plan pays for every module loaded at import): such an
import says so in a comment on its line ("cold start" or "heavy: <what>").
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("shared", "handlers")
REASONS = ("cold start", "heavy")


def violations(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    found = []
    for func in ast.walk(ast.parse(text)):
        if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(func):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if not (module or "").startswith("shared") and not any(n.startswith("shared") for n in names):
                continue
            line = lines[node.lineno - 1]
            if not any(reason in line for reason in REASONS):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: function-local import of a shared module "
                             f"without a cold-start reason: {line.strip()}")
    return found


def main() -> int:
    problems = [p for package in PACKAGES for f in sorted((ROOT / package).rglob("*.py")) for p in violations(f)]
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
