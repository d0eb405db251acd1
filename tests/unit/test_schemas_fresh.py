"""Generated docs match the models: regenerate with `make schemas`."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_schemas_are_current() -> None:
    spec = importlib.util.spec_from_file_location("generate_schemas", ROOT / "scripts/generate_schemas.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    stale = [str(p.relative_to(ROOT)) for p, text in module.rendered().items()
             if not p.exists() or p.read_text() != text]
    assert not stale, f"stale generated files (run `make schemas`): {stale}"
