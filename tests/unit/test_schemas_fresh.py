"""Generated docs match the models: regenerate with `make schemas`. docs/openapi.yaml is built from the
response models (shared/surfaces/responses.py) that shared/surfaces/http.py shapes every answer with."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_schemas", ROOT / "scripts/generate_schemas.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_generated_schemas_are_current() -> None:
    stale = [str(p.relative_to(ROOT)) for p, text in _generator().rendered().items()
             if not p.exists() or p.read_text() != text]
    assert not stale, f"stale generated files (run `make schemas`): {stale}"


def test_every_route_in_the_table_is_in_the_spec_with_the_models_it_names() -> None:
    generator = _generator()
    spec = yaml.safe_load((ROOT / "docs/openapi.yaml").read_text())
    schemas = spec["components"]["schemas"]
    for route in generator.routes():
        op = spec["paths"][route.path][route.method]
        assert op["operationId"] == route.operation_id
        for code, response in route.responses.items():
            models = response.body if isinstance(response.body, tuple) else (response.body,)
            for model in filter(None, models):
                assert model.__name__ in schemas
                # The documented properties are exactly the model's: the spec cannot say more or less.
                assert set(schemas[model.__name__]["properties"]) == {
                    f.alias or name for name, f in model.model_fields.items()}, (route.path, code)
        assert {str(c) for c in route.errors} <= set(op["responses"])


def test_a_body_the_models_do_not_know_is_refused() -> None:
    import pytest
    from pydantic import ValidationError

    from shared.surfaces.responses import Operation

    doc = {"operationId": "op-1", "status": "Accepted", "target": "/subscriptions/x", "trigger": "http"}
    assert Operation.model_validate(doc).body() == doc  # only what was set, as set
    with pytest.raises(ValidationError):
        Operation.model_validate({**doc, "nextPollAt": 3})  # a new field must be added to the model first
