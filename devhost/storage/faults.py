"""Injected Table Storage faults: queued ones (`POST /devhost/storage/faults`) and a seeded random mode
(`--storage-chaos RATE[:SEED]`). What each effect does is the proxy's (devhost/storage/proxy.py)."""

from __future__ import annotations

import fnmatch
import random
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from devhost.storage.wire import WRITES, TableRequest

Effect = Literal["applyThen500", "applyThenDrop", "busy503", "delay", "emptyPage", "shortPage"]
PAGE_EFFECTS = ("emptyPage", "shortPage")
SERVER_TIMEOUT = 30.0  # seconds: Table Storage's maximum (and default) server timeout for an operation


class Match(BaseModel):
    """Which requests a fault is for. `table` is a name or a glob (`*ops`), case-insensitive as table names
    are; `method` an HTTP method or `WRITE` (any of POST, PUT, PATCH, MERGE, DELETE); `operation` what the
    request does, as the request log names it (`insert`, `update`, `batch`, `createTable`, ...); `nth`: the nth
    matching request from now (1: the next one)."""

    model_config = ConfigDict(extra="forbid")

    table: str | None = None
    method: str | None = None
    operation: str | None = None
    nth: int = Field(1, ge=1)

    def hits(self, req: TableRequest) -> bool:
        if self.operation is not None and self.operation.casefold() != req.operation.casefold():
            return False
        if self.method is not None:
            wanted = self.method.upper()
            if wanted == "WRITE" and req.method not in WRITES:
                return False
            if wanted != "WRITE" and wanted != req.method:
                return False
        if self.table is not None:
            tables = [req.table, *(op.table for op in req.inner)]
            return any(t is not None and fnmatch.fnmatch(t.casefold(), self.table.casefold()) for t in tables)
        return True


class StorageFault(BaseModel):
    """One fault for the next `times` matching requests, from the `nth` on.

    `seconds`: how long `delay` waits (a wait over the 30-second server timeout ends as `applyThen500` at the
    timeout, as Azure answers a write that outlived it). `keep`: how many items a `shortPage` keeps (default:
    half the page). Page effects match queries only."""

    model_config = ConfigDict(extra="forbid")

    match: Match = Field(default_factory=Match)
    effect: Effect
    seconds: float = Field(0.0, ge=0, le=120)
    times: int = Field(1, ge=1)
    keep: int | None = Field(None, ge=0)
    chaos: bool = False  # made by the random mode (shown in the request log)
    _seen: int = PrivateAttr(0)
    _used: int = PrivateAttr(0)

    @property
    def used_up(self) -> bool:
        return self._used >= self.times

    def take(self, req: TableRequest) -> bool:
        """Count `req` if it matches; True when this request gets the effect."""
        if (self.effect in PAGE_EFFECTS and not req.is_query) or not self.match.hits(req):
            return False
        self._seen += 1
        if self._seen < self.match.nth or self.used_up:
            return False
        self._used += 1
        return True

    def public(self) -> dict[str, Any]:
        return {**self.model_dump(exclude_none=True, exclude={"chaos"}), "seen": self._seen,
                "remaining": self.times - self._used}


class Chaos:
    """Each request gets a random effect with probability `rate`, from a seeded generator (the seed is printed,
    so a soak run can be repeated; interleaving still varies with timing)."""

    WRITE_EFFECTS: tuple[Effect, ...] = ("applyThen500", "applyThenDrop", "busy503", "delay")
    QUERY_EFFECTS: tuple[Effect, ...] = ("emptyPage", "shortPage", "busy503", "delay")
    READ_EFFECTS: tuple[Effect, ...] = ("busy503", "delay")

    def __init__(self, rate: float, seed: int | None = None) -> None:
        if not 0 <= rate <= 1:
            raise ValueError("the storage chaos rate is a probability, from 0 to 1")
        self.rate = rate
        self.seed = seed if seed is not None else random.SystemRandom().randrange(1, 2**31)
        self._rng = random.Random(self.seed)
        self.injected = 0

    @classmethod
    def parse(cls, text: str) -> Chaos:
        """`RATE[:SEED]`, e.g. `0.03` or `0.03:42`."""
        rate, _, seed = text.partition(":")
        try:
            return cls(float(rate), int(seed) if seed else None)
        except ValueError as exc:
            raise ValueError(f"--storage-chaos takes RATE[:SEED] (e.g. 0.03:42), got {text!r}: {exc}") from None

    def pick(self, req: TableRequest) -> StorageFault | None:
        if self.rate <= 0 or self._rng.random() >= self.rate:
            return None
        choices = self.QUERY_EFFECTS if req.is_query else self.WRITE_EFFECTS if req.is_write else self.READ_EFFECTS
        effect = self._rng.choice(choices)
        self.injected += 1
        return StorageFault(effect=effect, seconds=round(self._rng.uniform(0.05, 1.0), 3), chaos=True)

    def public(self) -> dict[str, Any]:
        return {"rate": self.rate, "seed": self.seed, "injected": self.injected}
