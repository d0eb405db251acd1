"""Write the JSON Schemas generated from the models into docs/. Tests fail when they are stale."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.models import ReimageRequest  # noqa: E402


def request_schema() -> dict[str, Any]:
    schema = ReimageRequest.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://github.com/reimager/reimager/docs/schemas/reimage-request.schema.json"
    return schema


def rendered() -> dict[Path, str]:
    """Every generated file and its exact content."""
    return {
        ROOT / "docs/schemas/reimage-request.schema.json": json.dumps(request_schema(), indent=2) + "\n",
    }


def main() -> None:
    for path, text in rendered().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
