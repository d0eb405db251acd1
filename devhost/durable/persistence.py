"""The task hub on disk: one JSON file per instance under `state_dir/instances`, each written atomically
(temp file + os.replace), as a Storage write either lands or not. A new engine on the same directory reads
them back and resumes every instance still in flight."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from devhost.durable.instance import Instance

log = logging.getLogger("devhost.durable")


class TaskHub:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def path(self, instance_id: str) -> Path:
        digest = hashlib.sha256(instance_id.encode()).hexdigest()[:32]
        return self.state_dir / "instances" / f"{digest}.json"

    def write(self, inst: Instance) -> None:
        """Write one instance atomically (temp file + os.replace), as a Storage write either lands or not."""
        path = self.path(inst.id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(inst.to_doc(), default=str))
        os.replace(tmp, path)

    def load(self) -> list[Instance]:
        """Every readable instance file (an unreadable one is logged and skipped)."""
        folder = self.state_dir / "instances"
        if not folder.is_dir():
            return []
        out = []
        for path in sorted(folder.glob("*.json")):
            try:
                out.append(Instance.from_doc(json.loads(path.read_text())))
            except (ValueError, TypeError, KeyError):
                log.exception("unreadable task-hub file %s", path)
        return out

    def history(self, instance_id: str) -> list[dict[str, Any]]:
        doc = json.loads(self.path(instance_id).read_text())
        return list(doc.get("history") or [])
