"""The deploy root (dist/api, what azure.yaml deploys) holds exactly what runs, and the app runs from it
alone: every function indexes, and the runtime's modules import, with nothing else on the path."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _stager() -> object:
    spec = importlib.util.spec_from_file_location("stage_deploy_root", ROOT / "scripts/stage_deploy_root.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_INDEX = ("import json, function_app, shared.surfaces.http, shared.adapters.arm.client, shared.adapters.ledger, "
          "shared.workflow.activities, shared.adapters.telemetry; "
          "print(json.dumps(sorted(f.get_function_name() for f in function_app.app.get_functions())))")


def _functions(cwd: Path) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", _INDEX], cwd=cwd, env=env, capture_output=True, text=True,
                         check=True, timeout=120)
    names: list[str] = json.loads(out.stdout)
    return names


def test_the_deploy_root_holds_only_what_runs_and_runs(tmp_path: Path) -> None:
    stager = _stager()
    staged = stager.stage(tmp_path / "api")  # type: ignore[attr-defined]
    top = {p.parts[0] for p in staged}
    assert top == {"function_app.py", "host.json", "requirements.txt", "handlers", "shared"}
    assert not any("__pycache__" in p.parts or p.suffix == ".pyc" for p in staged)
    # Every module of the two packages is there, and nothing from tests/, devhost/, bench/, docs/, infra/.
    for package in ("handlers", "shared"):
        assert {p.relative_to(ROOT) for p in (ROOT / package).rglob("*.py")} == {
            p for p in staged if p.parts[0] == package and p.suffix == ".py"}
    assert _functions(tmp_path / "api") == _functions(ROOT)


def test_azure_yaml_deploys_the_staged_root_and_stages_it_first() -> None:
    doc = yaml.safe_load((ROOT / "azure.yaml").read_text())
    assert doc["services"]["api"]["project"] == "./dist/api"
    assert Path(_stager().DEPLOY_ROOT) == ROOT / "dist/api"  # type: ignore[attr-defined]
    for event in ("prepackage", "predeploy"):
        for shell in ("posix", "windows"):
            assert doc["hooks"][event][shell]["run"].endswith("scripts/stage_deploy_root.py")
    assert not (ROOT / ".funcignore").exists()  # no deny-list to maintain
