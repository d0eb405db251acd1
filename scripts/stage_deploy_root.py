"""Stage the deploy root: copy exactly what runs in Azure into dist/api, which azure.yaml deploys.

An allow-list, not a deny-list: the repository root also holds tests, devhost, benchmarks, docs and
infra, and a new folder there must never ship by accident. What runs is the function app's entry
point, its host settings, its pinned requirements, and two packages. `make package` runs this;
azure.yaml runs it as a hook before every package/deploy.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEPLOY_ROOT = ROOT / "dist" / "api"
FILES = ("function_app.py", "host.json", "requirements.txt")
PACKAGES = ("handlers", "shared")


def stage(target: Path = DEPLOY_ROOT) -> list[Path]:
    """Replace `target` with a fresh copy of what runs; returns the files staged, relative to it."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for name in FILES:
        shutil.copy2(ROOT / name, target / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, target / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return sorted(p.relative_to(target) for p in target.rglob("*") if p.is_file())


def main() -> None:
    staged = stage(Path(sys.argv[1]) if len(sys.argv) > 1 else DEPLOY_ROOT)
    print(f"staged {len(staged)} files into {DEPLOY_ROOT.relative_to(ROOT) if len(sys.argv) == 1 else sys.argv[1]}")


if __name__ == "__main__":
    main()
