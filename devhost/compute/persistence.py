"""The simulator's files under `state_dir`: one per resource and per operation (replaced atomically), the
request log appended as JSON lines with secrets redacted, and meta.json (the port it was bound to)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any


class Store:
    """The simulator's files: one per resource and per operation (replaced atomically), plus an appended log."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.resources = root / "resources"
        self.operations = root / "operations"
        self.requests = root / "requests.jsonl"
        self.meta = root / "meta.json"
        for d in (self.resources, self.operations):
            d.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def write(path: Path, doc: Any) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc, separators=(",", ":")))
        os.replace(tmp, path)  # readers see the old file or the new one, never half of one

    def resource_path(self, key: str) -> Path:
        return self.resources / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")

    def save_resource(self, key: str, doc: dict[str, Any] | None) -> None:
        """Write a resource's file, or remove it (None: the resource is gone)."""
        path = self.resource_path(key)
        if doc is None:
            path.unlink(missing_ok=True)
        else:
            self.write(path, doc)

    def save_operation(self, doc: dict[str, Any]) -> None:
        self.write(self.operations / f"{doc['id']}.json", doc)

    def read_meta(self) -> dict[str, Any]:
        return json.loads(self.meta.read_text()) if self.meta.exists() else {}

    def append_request(self, entry: dict[str, Any]) -> None:
        with self.requests.open("a", encoding="utf-8") as f:
            f.write(json.dumps(_redacted(entry), separators=(",", ":")) + "\n")

    @staticmethod
    def read_all(directory: Path) -> list[Any]:
        docs = []
        for path in sorted(directory.glob("*.json")):
            with contextlib.suppress(ValueError, OSError):
                docs.append(json.loads(path.read_text()))
        return docs

    def read_requests(self, limit: int) -> list[dict[str, Any]]:
        if not self.requests.exists():
            return []
        out = []
        for line in self.requests.read_text(encoding="utf-8").splitlines()[-limit:]:
            with contextlib.suppress(ValueError):  # a line torn by a kill is skipped
                out.append(json.loads(line))
        return out


def _redacted(entry: dict[str, Any]) -> dict[str, Any]:
    """ARM receives secrets; the simulator's files on disk never keep them."""
    body = entry.get("body")
    if isinstance(body, dict) and isinstance(body.get("osProfile"), dict):
        os_profile = {k: ("[redacted]" if k in ("adminPassword", "customData") else v)
                      for k, v in body["osProfile"].items()}
        entry = {**entry, "body": {**body, "osProfile": os_profile}}
    return entry
