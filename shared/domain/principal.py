"""Who is asking, and how we know: a principal and how it was verified."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Verification = Literal["easyauth", "slack", "teams", "unverified"]
MAX_NAME = 256  # as requestedBy in the request contract


@dataclass(frozen=True)
class Principal:
    """A caller's name and how it was verified. `unverified` names are whatever the caller typed."""

    name: str
    verified: Verification

    @property
    def is_verified(self) -> bool:
        return self.verified != "unverified"
